"""Model test: random put / delete / expire / batch (plain or atomic) / rotate / close-and-reopen against a dict."""

import os
import shutil
import tempfile

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ferricd.storage import BitcaskStore, Delete, Put, StoreSettings
from ferricd.storage.snapshot import SNAPSHOT_NAME
from tests.fake_clock import FakeClock

KEY_CHOICES = [b"a", b"b", "c", b"{tag}d", b"e" * 300, "\u00e9"]
KEYS = st.sampled_from(KEY_CHOICES)
VALUES = st.binary(max_size=400)
TTLS = st.one_of(st.just(0), st.integers(1, 2000))


def encoded(key):
    return key.encode() if isinstance(key, str) else key


class StoreModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="ferric-model-")
        self.clock = FakeClock()
        self.settings = StoreSettings(max_file_bytes=1024, fsync="never")
        self.store = BitcaskStore(self.directory, self.settings, clock=self.clock)
        self.model = {}  # key bytes -> (value, expire_at_ms)

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.directory)

    def _live(self, key):
        value, expire_at_ms = self.model.get(key, (None, 0))
        if value is None or (expire_at_ms and expire_at_ms <= self.clock()):
            return None
        return value

    def _expiry(self, ttl_ms):
        return self.clock() + ttl_ms if ttl_ms else 0

    @rule(key=KEYS, value=VALUES, ttl_ms=TTLS)
    def put(self, key, value, ttl_ms):
        self.store.put(key, value, self._expiry(ttl_ms))
        self.model[encoded(key)] = (value, self._expiry(ttl_ms))

    @rule(key=KEYS)
    def delete(self, key):
        existed = self._live(encoded(key)) is not None
        assert self.store.delete(key) is existed
        self.model.pop(encoded(key), None)

    @rule(ops=st.lists(st.one_of(st.tuples(KEYS, VALUES, TTLS), KEYS), max_size=8), atomic=st.booleans())
    def batch(self, ops, atomic):
        batch, expected = [], []
        for op in ops:
            if isinstance(op, tuple):
                key, value, ttl_ms = op
                batch.append(Put(key, value, self._expiry(ttl_ms)))
                self.model[encoded(key)] = (value, self._expiry(ttl_ms))
                expected.append(None)
            else:
                batch.append(Delete(op))
                expected.append(self._live(encoded(op)) is not None)
                self.model.pop(encoded(op), None)
        assert self.store.write_batch(batch, atomic=atomic) == expected

    @rule(ms=st.integers(1, 1500))
    def advance_clock(self, ms):
        self.clock.advance(ms)

    @rule(value=st.binary(min_size=900, max_size=1100))
    def fill_a_file(self, value):
        """A value close to max_file_bytes forces rotations on the following writes."""
        self.put(b"filler", value, 0)

    @rule(lose=st.sampled_from(["nothing", "snapshot", "snapshot-and-hints"]))
    def close_and_reopen(self, lose):
        self.store.close()
        for name in os.listdir(self.directory):
            if (lose != "nothing" and name == SNAPSHOT_NAME) or (lose == "snapshot-and-hints" and name.endswith(".hint")):
                os.unlink(os.path.join(self.directory, name))
        self.store = BitcaskStore(self.directory, self.settings, clock=self.clock)
        assert self.store.recovery.corrupt_records == 0 and self.store.recovery.truncated_bytes == 0

    @invariant()
    def reads_match_the_model(self):
        for key in {encoded(k) for k in KEY_CHOICES} | {b"filler"} | set(self.model):
            assert self.store.get(key) == self._live(key), key
        assert sorted(self.store.keys()) == sorted(k for k in self.model if self._live(k) is not None)

    @invariant()
    def live_bytes_match_the_index(self):
        # Live bytes drive merge decisions later: they must equal what the index points at.
        entries = list(self.store._keydir.index.entries())
        assert self.store.stats()["live_bytes"] == sum(entry[4] for entry in entries)


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
