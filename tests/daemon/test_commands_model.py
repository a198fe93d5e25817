"""Model test of the shard's ops (ShardCommands on a real store, fake clock) against a dict: every op, transactions."""

import shutil
import tempfile

import msgpack
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ferric_ipc.errors import CommandError
from ferricd.commands import ShardCommands
from ferricd.storage import BitcaskStore, StoreSettings
from tests.fake_clock import FakeClock

KEYS = st.sampled_from([b"a", b"b", b"{t}c", b"m"])
VALUES = st.sampled_from([b"", b"1", b"-7", b"x", msgpack.packb({"f": 1})])
TTLS = st.one_of(st.none(), st.integers(1, 2000))
FIELDS = st.sampled_from(["f", "g", "h"])
FIELD_VALUES = st.sampled_from([0, "s", [1, 2], {"n": None}, b"\x00"])


class Refused(Exception):
    """The model's answer when the shard must refuse the op (the error code)."""


class Model:
    """What each op must do, on a plain dict ``key -> (value, expire_at_ms)``."""

    def __init__(self, data, now):
        self.data, self.now = data, now

    def live(self, key):
        found = self.data.get(key)
        if found is None or (found[1] and found[1] <= self.now):
            return None
        return found

    def expire_at(self, ttl_ms):
        return 0 if ttl_ms is None else self.now + ttl_ms

    def set(self, key, value, ttl_ms, nx, xx):
        exists = self.live(key) is not None
        if (nx and exists) or (xx and not exists):
            return False
        self.data[key] = (value, self.expire_at(ttl_ms))
        return True

    def get(self, key):
        found = self.live(key)
        return None if found is None else found[0]

    def delete(self, keys):
        count = 0
        for key in keys:
            count += self.live(key) is not None
            self.data.pop(key, None)
        return count

    def incr(self, key, delta, ttl_ms):
        found = self.live(key) or (b"0", self.expire_at(ttl_ms))
        try:
            number = int(found[0].decode("ascii"), 10) + delta
        except (UnicodeDecodeError, ValueError):
            raise Refused("NOT_INTEGER") from None
        self.data[key] = (str(number).encode(), found[1])
        return number

    def expire(self, key, ttl_ms):
        found = self.live(key)
        if found is None:
            return False
        self.data[key] = (found[0], self.expire_at(ttl_ms))
        return True

    def getex(self, key, ttl_ms, persist):
        found = self.live(key)
        if found is None:
            return None
        self.data[key] = (found[0], 0 if persist else (found[1] if ttl_ms is None else self.expire_at(ttl_ms)))
        return found[0]

    def delete_if(self, key, expected):
        if self.get(key) != expected:
            return False
        self.data.pop(key)
        return True

    def patch(self, key, set_fields, delete_fields, ttl_ms, create):
        found = self.live(key)
        if found is None and not create:
            return False
        try:
            fields = {} if found is None else msgpack.unpackb(found[0], strict_map_key=False)
        except Exception:
            raise Refused("WRONG_TYPE") from None
        if not isinstance(fields, dict) or not all(isinstance(f, str) for f in fields):
            raise Refused("WRONG_TYPE")
        for field in delete_fields:
            fields.pop(field, None)
        fields.update({field: msgpack.unpackb(encoded) for field, encoded in set_fields.items()})
        expire_at_ms = (0 if found is None else found[1]) if ttl_ms is None else self.expire_at(ttl_ms)
        self.data[key] = (msgpack.packb(fields), expire_at_ms)
        return True

    def lease(self, key, token, ttl_ms):
        found = self.live(key)
        if found is None or found[0] == token:
            self.data[key] = (token, self.expire_at(ttl_ms))
            return [True, token, ttl_ms]
        return [False, found[0], -1 if not found[1] else found[1] - self.now]

    def pttl(self, key):
        found = self.live(key)
        return -2 if found is None else (-1 if not found[1] else found[1] - self.now)


def op_strategy():
    return st.one_of(
        st.tuples(st.just("set"), st.tuples(KEYS, VALUES, TTLS, st.booleans(), st.booleans()).filter(
            lambda a: not (a[3] and a[4]))),
        st.tuples(st.just("get"), st.tuples(KEYS)),
        st.tuples(st.just("delete"), st.tuples(st.lists(KEYS, max_size=2))),
        st.tuples(st.just("incr"), st.tuples(KEYS, st.integers(-5, 5), TTLS)),
        st.tuples(st.just("expire"), st.tuples(KEYS, st.integers(1, 2000))),
        st.tuples(st.just("getex"), st.tuples(KEYS, TTLS, st.just(False))),
        st.tuples(st.just("getex"), st.tuples(KEYS, st.none(), st.just(True))),
        st.tuples(st.just("delete_if"), st.tuples(KEYS, VALUES)),
        st.tuples(st.just("patch"), st.tuples(
            KEYS, st.dictionaries(FIELDS, FIELD_VALUES.map(msgpack.packb), max_size=2),
            st.lists(FIELDS, max_size=2), TTLS, st.booleans())),
        st.tuples(st.just("lease"), st.tuples(KEYS, st.sampled_from([b"tok1", b"tok2"]), st.integers(1, 2000))),
        st.tuples(st.just("pttl"), st.tuples(KEYS)),
    )


class ShardCommandsModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="ferric-commands-")
        self.clock = FakeClock()
        self.store = BitcaskStore(self.directory, StoreSettings(fsync="never"), clock=self.clock)
        self.commands = ShardCommands(self.store, 0, 1, 1, self.clock)
        self.data = {}

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.directory)

    def _expected(self, model, op, args):
        args = [list(a) if isinstance(a, tuple) else a for a in args]
        try:
            return "ok", getattr(model, op)(*args)
        except Refused as refused:
            return "error", refused.args[0]

    def _actual(self, op, args):
        try:
            return "ok", self.commands.run(op, [list(a) if isinstance(a, tuple) else a for a in args])
        except CommandError as exc:
            return "error", exc.code

    @rule(request=op_strategy())
    def one_op(self, request):
        op, args = request
        expected = self._expected(Model(self.data, self.clock()), op, args)
        assert self._actual(op, args) == expected, (op, args)

    @rule(requests=st.lists(op_strategy(), min_size=1, max_size=5))
    def transaction(self, requests):
        staged = dict(self.data)
        model = Model(staged, self.clock())
        expected_results, failed = [], None
        for op, args in requests:
            status, result = self._expected(model, op, args)
            if status == "error":
                failed = result
                break
            expected_results.append(result)
        items = [[op, [list(a) if isinstance(a, tuple) else a for a in args]] for op, args in requests]
        actual = self._actual("multi", [items])
        if failed is None:
            assert actual == ("ok", expected_results), requests
            self.data = staged
        else:
            assert actual == ("error", failed), requests  # and nothing was written: the invariant checks

    @rule(ms=st.integers(1, 1500))
    def advance_clock(self, ms):
        self.clock.advance(ms)

    @rule()
    def reopen(self):
        self.store.close()
        self.store = BitcaskStore(self.directory, StoreSettings(fsync="never"), clock=self.clock)
        self.commands = ShardCommands(self.store, 0, 1, 1, self.clock)

    @invariant()
    def reads_match_the_model(self):
        model = Model(self.data, self.clock())
        for key in (b"a", b"b", b"{t}c", b"m"):
            assert self.store.get_with_expiry(key) == model.live(key), key


TestShardCommandsModel = ShardCommandsModel.TestCase
TestShardCommandsModel.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
