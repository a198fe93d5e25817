"""ShardCommands: what each protocol op does to a shard's store (argument checks, TTLs, conditional writes)."""

import os
import time

import psutil

from ferric_ipc.errors import CommandError, FerricError, ProtocolError
from ferric_ipc.index_layout import DELETED, HASH_WORD, HEADER_WORDS, SLOT_EXPIRE_AT, SLOT_WORDS
from ferric_ipc.keys import as_key, as_value
from ferric_ipc.protocol import (
    MAX_TTL_MS,
    PROTOCOL_VERSION,
    STATUS_ERROR,
    STATUS_OK,
    TRANSACTION_OPS,
    error_code,
    parse_batch_item,
)
from ferric_ipc.routing import shard_for
from ferricd.map_value import check_field_value, join_fields, split_fields
from ferricd.storage import Delete, Put
from ferricd.transaction import StagedStore

_MAX_SCAN_COUNT = 10_000
# Slots one scan or delete_prefix call looks at: each live one costs a read of its key, so this keeps
# a call to a few milliseconds however large the shard is, and other requests are served in between.
SCAN_SLOTS_PER_CALL = 1024
# info leaves out keys that expired but were not yet removed (by the expiry sweep or a read). To find
# them it reads the slots of the key directory (no data), the whole table when it has at most this many
# slots; a larger table has this many read in INFO_SAMPLE_RUNS runs spread over it, and what they hold
# is scaled up to the whole table: an estimate, and info says so (keys_estimated). That bounds an info
# call to about 1 ms, up to 20 ms while most of the slots read hold expired keys the sweep has yet to reach.
INFO_EXPIRY_SLOTS = 1 << 15
INFO_SAMPLE_RUNS = 16
INFO_CLASSIFIED = 2048  # expired entries whose keyspace info reads (see ShardCommands._stats_without_expired)
_EXPIRE_WORD = SLOT_EXPIRE_AT // 8


class ShardCommands:
    """Executes one op against ``store``. ``run(op, args)`` returns the result or raises.

    Errors a client should see are raised as the exceptions the protocol maps
    to codes (``error_code`` gives the code). TTLs arrive relative (``ttl_ms``)
    and are stored absolute (``expire_at_ms``) on the shard's clock. A write
    that creates or replaces a value without a TTL gets its keyspace's
    ``default_ttl_ms``, if it has one; ops that keep a key's TTL keep it.
    """

    def __init__(self, store, shard_id, shard_count, epoch, clock, housekeeping=None):
        self.store = store
        self._keyspaces = store.keyspaces  # self.store is a StagedStore during a transaction
        self.housekeeping = housekeeping  # the shard's merges (ferricd.housekeeping), for merge and merge_status
        self.shard_id = shard_id
        self.shard_count = shard_count
        self.epoch = epoch
        self._clock = clock
        self._process = psutil.Process()
        self._started_s = time.monotonic()  # uptime is an interval: a wall-clock step must not change it
        self.requests = 0
        self.errors = 0

    def run(self, op, args):
        return getattr(self, f"op_{op}")(*args)

    # -- plain ops -----------------------------------------------------------

    def op_ping(self):
        return "pong"

    def op_hello(self):
        return {
            "protocol": PROTOCOL_VERSION,
            "shards": self.shard_count,
            "shard": self.shard_id,
            "epoch": self.epoch,
            "max_value_bytes": self.store.settings.max_value_bytes,
            "pid": os.getpid(),
        }

    def op_get(self, key):
        return self.store.get(self._key(key))

    def op_mget(self, keys):
        return [self.store.get(key) for key in self._keys(keys)]

    def op_set(self, key, value, ttl_ms, nx, xx):
        key = self._key(key)
        if not isinstance(nx, bool) or not isinstance(xx, bool):
            raise CommandError("nx and xx must be booleans")
        if nx and xx:
            raise CommandError("nx and xx exclude each other: nx sets only a missing key, xx only an existing one")
        if nx or xx:
            exists = self.store.get_with_expiry(key) is not None
            if (nx and exists) or (xx and not exists):
                return False
        self.store.put(key, value, self._write_expire_at(key, ttl_ms))
        return True

    def set_many(self, args_list):
        """Unconditional sets (``set`` args with nx and xx false) applied as one batch write.

        Returns ``[status, result]`` per set: each is validated alone, so one bad
        set is refused without refusing the others.
        """
        answers, puts, positions = [], [], []
        for args in args_list:
            key, value, ttl_ms = args[0], args[1], args[2]
            try:
                key = self._key(key)
                put = Put(key, as_value(value, self.store.settings.max_value_bytes), self._write_expire_at(key, ttl_ms))
            except (FerricError, TypeError, ValueError) as exc:
                answers.append([STATUS_ERROR, [error_code(exc), str(exc)]])
                continue
            positions.append(len(answers))
            answers.append([STATUS_OK, True])
            puts.append(put)
        if puts:
            try:
                self.store.write_batch(puts)
            except FerricError as exc:  # ops in already-closed files were kept; the rest were not
                failed = [STATUS_ERROR, [error_code(exc), str(exc)]]
                for position in positions[getattr(exc, "applied", 0):]:
                    answers[position] = failed
        return answers

    def op_mset(self, pairs, ttl_ms):
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise CommandError("mset takes a list of [key, value] pairs")
        keys = [self._key(k) for k, _v in pairs]
        self.store.write_batch([Put(k, v, self._write_expire_at(k, ttl_ms)) for k, (_k, v) in zip(keys, pairs)])
        return True

    def op_delete(self, keys):
        return sum(self.store.write_batch([Delete(key) for key in self._keys(keys)]))

    def op_exists(self, keys):
        return sum(self.store.get_with_expiry(key) is not None for key in self._keys(keys))

    def op_expire(self, key, ttl_ms):
        if ttl_ms is None:
            raise CommandError("expire needs ttl_ms; use persist to remove an expiry")
        return self.store.set_expiry(self._key(key), self._expire_at(ttl_ms))  # a TTL-only record: O(key) bytes

    def op_getex(self, key, ttl_ms, persist):
        """The value of ``key`` (None if missing), giving it a new TTL (or none, with ``persist``)."""
        if not isinstance(persist, bool):
            raise CommandError("persist must be a boolean")
        if persist and ttl_ms is not None:
            raise CommandError("getex takes ttl_ms or persist, not both")
        key = self._key(key)
        found = self.store.get_with_expiry(key)
        if found is None:
            return None
        expire_at_ms = 0 if persist else (found[1] if ttl_ms is None else self._expire_at(ttl_ms))
        if expire_at_ms != found[1]:
            self.store.set_expiry(key, expire_at_ms)
        return found[0]

    def op_persist(self, key):
        key = self._key(key)
        found = self.store.get_with_expiry(key)
        if found is None or found[1] == 0:
            return False
        return self.store.set_expiry(key, 0)

    def op_pttl(self, key):
        """Milliseconds left; -1 if the key never expires, -2 if it is missing (Redis PTTL)."""
        found = self.store.get_with_expiry(self._key(key))
        if found is None:
            return -2
        return -1 if found[1] == 0 else max(0, found[1] - self._clock())

    def op_incr(self, key, delta, ttl_ms):
        """Add ``delta``; a counter created here expires after ``ttl_ms``, an existing one keeps its expiry."""
        if type(delta) is not int or not -(2**63) <= delta < 2**63:
            raise CommandError("delta must be a 64-bit integer")
        key = self._key(key)
        created_expire_at_ms = self._write_expire_at(key, ttl_ms)
        found = self.store.get_with_expiry(key)
        value, expire_at_ms = found if found is not None else (b"0", created_expire_at_ms)
        try:
            number = int(value.decode("ascii"), 10)
        except (UnicodeDecodeError, ValueError):
            raise CommandError("the value is not a decimal integer", "NOT_INTEGER") from None
        number += delta
        if not -(2**63) <= number < 2**63:
            raise CommandError("incr would overflow a 64-bit integer", "NOT_INTEGER")
        self.store.put(key, str(number).encode(), expire_at_ms)  # an existing counter keeps its expiry
        return number

    def op_getdel(self, key):
        key = self._key(key)
        value = self.store.get(key)
        if value is not None:
            self.store.delete(key)
        return value

    def op_delete_if(self, key, expected):
        """Delete ``key`` only if it holds ``expected``; whether it did."""
        key = self._key(key)
        if not isinstance(expected, bytes):
            raise CommandError("expected must be bytes")
        if self.store.get(key) != expected:
            return False
        self.store.delete(key)
        return True

    def op_patch(self, key, set_fields, delete_fields, ttl_ms, create):
        """Merge field changes into the msgpack map stored at ``key`` (see ferricd.map_value).

        ``ttl_ms`` None keeps the key's expiry. Without ``create`` a missing key
        stays missing and the answer is False.
        """
        key = self._key(key)
        if not (isinstance(set_fields, dict) and all(isinstance(v, bytes) for v in set_fields.values())
                and all(isinstance(f, str) for f in set_fields)):
            raise CommandError("patch's set must be a map of str field -> msgpack-encoded bytes")
        if not (isinstance(delete_fields, list) and all(isinstance(f, str) for f in delete_fields)):
            raise CommandError("patch's delete must be a list of str fields")
        if not isinstance(create, bool):
            raise CommandError("create must be a boolean")
        for field, encoded in set_fields.items():
            check_field_value(field, encoded)
        found = self.store.get_with_expiry(key)
        if found is None:
            if not create:
                return False
            fields, expire_at_ms = {}, self._write_expire_at(key, None)
        else:
            fields, expire_at_ms = split_fields(found[0]), found[1]
        for field in delete_fields:
            fields.pop(field, None)
        fields.update(set_fields)
        if ttl_ms is not None:
            expire_at_ms = self._expire_at(ttl_ms)
        self.store.put(key, join_fields(fields), expire_at_ms)
        return True

    def op_lease(self, key, token, ttl_ms):
        """``[acquired, holder's token, ms it still holds]``: take ``key`` if free; the holder renews its own."""
        key = self._key(key)
        if not isinstance(token, bytes) or not token:
            raise CommandError("token must be non-empty bytes")
        if ttl_ms is None:
            raise CommandError("a lease needs ttl_ms, so a holder that dies loses it")
        expire_at_ms = self._expire_at(ttl_ms)
        found = self.store.get_with_expiry(key)
        if found is None or found[0] == token:
            self.store.put(key, token, expire_at_ms)
            return [True, token, ttl_ms]
        return [False, found[0], -1 if not found[1] else max(0, found[1] - self._clock())]

    def op_multi(self, items):
        """Run a transaction: every op sees the ones before it, and all of them are written or none."""
        if not isinstance(items, list):
            raise CommandError("multi takes a list of [op, args] pairs")
        parsed = []
        for position, item in enumerate(items):
            try:
                op, args = parse_batch_item(item)
            except ProtocolError as exc:
                raise CommandError(f"transaction op {position}: {exc}", exc.code) from None
            if op not in TRANSACTION_OPS:
                raise CommandError(f"transaction op {position}: {op} cannot run in a transaction", "BAD_ARGS")
            parsed.append((op, args))
        staged = StagedStore(self.store, self._clock, self.shard_id, self.shard_count)
        store, self.store = self.store, staged
        try:
            results = []
            for position, (op, args) in enumerate(parsed):
                try:
                    results.append(self.run(op, args))
                except (FerricError, TypeError, ValueError) as exc:
                    raise CommandError(
                        f"transaction aborted at op {position} ({op}): {exc}; nothing was written", error_code(exc)
                    ) from None
        finally:
            self.store = store
        staged.commit()
        return results

    def op_set_if(self, key, value, guard_key, expected, ttl_ms):
        """Set ``key`` only if ``guard_key`` holds ``expected`` (None: only if it is missing)."""
        key, guard_key = self._key(key), self._key(guard_key, "guard_key")
        if self.shard_count > 1 and shard_for(guard_key, self.shard_count) != self.shard_id:
            raise CommandError(
                "guard_key lives on another shard; give key and guard_key the same {hash tag}", "WRONG_SHARD"
            )
        if expected is not None and not isinstance(expected, bytes):
            raise CommandError("expected must be bytes or None")
        if self.store.get(guard_key) != expected:
            return False
        self.store.put(key, value, self._write_expire_at(key, ttl_ms))
        return True

    def op_scan(self, prefix, cursor, count):
        if type(count) is not int or not 0 < count <= _MAX_SCAN_COUNT:
            raise CommandError(f"count must be between 1 and {_MAX_SCAN_COUNT}")
        return list(self.store.scan(self._key(prefix, "prefix"), cursor, count, SCAN_SLOTS_PER_CALL))

    def op_delete_prefix(self, prefix, cursor, table_capacity):
        """One bounded step of a prefix delete: ``[next_cursor, deleted, table_capacity]``.

        The client repeats it from cursor 0 until the cursor is 0 again,
        passing back the capacity it was given: if the table was rebuilt in
        between (which moves keys between slots), the step starts over at slot
        0 so that no key present from the start is missed.
        """
        prefix = self._key(prefix, "prefix")
        if type(cursor) is not int or cursor < 0:
            raise CommandError("cursor must be 0 or a cursor returned by delete_prefix")
        if table_capacity is not None and type(table_capacity) is not int:
            raise CommandError("table_capacity must be an int or None")
        if table_capacity is not None and table_capacity != self.store.table_capacity:
            cursor = 0
        next_cursor, doomed = self.store.scan(prefix, cursor, _MAX_SCAN_COUNT, SCAN_SLOTS_PER_CALL)
        deleted = sum(self.store.write_batch([Delete(key) for key in doomed])) if doomed else 0
        return [next_cursor, deleted, self.store.table_capacity]

    def op_merge(self):
        """Start a merge of this shard now (or join the one running); ``op_merge_status``'s answer."""
        return self._housekeeping().request_merge()

    def op_merge_status(self):
        """The running merge's progress, or idle; and a summary of the last merge that ended."""
        return self._housekeeping().status()

    def _housekeeping(self):
        if self.housekeeping is None:
            raise CommandError("this shard runs no background work, so it cannot merge", "BAD_ARGS")
        return self.housekeeping

    def op_info(self):
        """The shard's statistics. Counts of keys and bytes leave out expired keys not yet removed (see
        ``expired_unswept``), which the store's own ``stats()`` still holds."""
        with self._process.oneshot():
            process = {
                "pid": self._process.pid,
                "rss_bytes": self._process.memory_info().rss,
                "cpu_seconds": sum(self._process.cpu_times()[:2]),
                "open_files": self._process.num_fds(),
                "uptime_s": round(time.monotonic() - self._started_s, 1),
            }
        return {
            "shard": self.shard_id,
            "epoch": self.epoch,
            "requests": self.requests,
            "errors": self.errors,
            **self._stats_without_expired(),
            **process,
        }

    def _stats_without_expired(self):
        """``store.stats()`` with the keys whose TTL has passed but that are still in the key directory left out
        of keys, live_bytes and the keyspaces' keys and bytes (their records count as dead bytes, which
        a merge reclaims); adds ``expired_unswept`` (how many), and ``keys_estimated`` and
        ``keyspaces_estimated``, true when those counts come from a sample."""
        stats = self.store.stats()
        capacity = stats["index_capacity"]
        looked, expired = expired_entries(self.store.index_buffer, capacity, self._clock(), INFO_EXPIRY_SLOTS)
        scale = capacity / looked if looked else 1.0
        rows = list(stats["keyspaces"].values())
        if len(rows) > 1 and expired:
            # Which keyspace an entry is in takes a read of its key: at most INFO_CLASSIFIED of them, evenly
            # spread over the expired entries found, stand for them all.
            chosen = expired[::-(-len(expired) // INFO_CLASSIFIED)]
            keys, held = [0] * len(rows), [0] * len(rows)
            for file_id, offset, record_len in chosen:
                number = self.store.accounts.of_record(file_id, offset)
                keys[number] += 1
                held[number] += record_len
            share = len(expired) / len(chosen) * scale
            sampled = len(chosen) < len(expired)
        else:
            keys, held, share, sampled = [len(expired)], [sum(entry[2] for entry in expired)], scale, False
        for row, gone_keys, gone_bytes in zip(rows, keys, held):
            row["keys"] = max(0, row["keys"] - round(gone_keys * share))
            row["bytes"] = max(0, row["bytes"] - round(gone_bytes * share))
        gone = min(stats["keys"], round(len(expired) * scale))
        stats["keys"] -= gone
        stats["expired_unswept"] = gone
        stats["keys_estimated"] = looked < capacity
        stats["keyspaces_estimated"] = looked < capacity or sampled
        stats["live_bytes"] = max(0, stats["live_bytes"] - round(sum(entry[2] for entry in expired) * scale))
        stats["dead_bytes"] = stats["data_bytes"] - stats["live_bytes"]
        return stats

    # -- argument checks -------------------------------------------------------

    def _key(self, key, argument="key"):
        if not isinstance(key, bytes):
            raise CommandError(f"{argument} must be bytes (msgpack bin), not {type(key).__name__}")
        return as_key(key, argument)

    def _keys(self, keys):
        if not isinstance(keys, list):
            raise CommandError("keys must be a list")
        return [self._key(key) for key in keys]

    def _write_expire_at(self, key, ttl_ms):
        """``expire_at_ms`` for a new value of ``key``: ``ttl_ms`` from now, or its keyspace's default TTL."""
        if ttl_ms is None:
            ttl_ms = self._keyspaces.default_ttl_ms(key) or None
        return self._expire_at(ttl_ms)

    def _expire_at(self, ttl_ms):
        if ttl_ms is None:
            return 0
        if type(ttl_ms) is not int or not 0 < ttl_ms <= MAX_TTL_MS:
            raise CommandError("ttl_ms must be a positive integer number of milliseconds up to 2**62, or None")
        return self._clock() + ttl_ms


def expired_entries(buffer, capacity, now_ms, max_slots):
    """Entries of a key directory table (``buffer``, ``capacity`` slots) whose expiry is at or before ``now_ms``.

    Returns ``(slots read, [(file_id, offset, record_len) of each expired entry among them])``. Reads
    every slot if there are at most ``max_slots``, else ``max_slots`` of them in INFO_SAMPLE_RUNS runs
    spread over the table (keys sit at slots chosen by their hash, so a run is a fair sample). Reads
    slot words only, one field of every slot at C speed; free and deleted slots have expiry 0.
    """
    if capacity <= max_slots:
        runs = [(0, capacity)]
    else:
        length, step = max_slots // INFO_SAMPLE_RUNS, capacity // INFO_SAMPLE_RUNS
        runs = [(run * step, run * step + length) for run in range(INFO_SAMPLE_RUNS)]
    looked, found = 0, []
    with memoryview(buffer) as raw, raw.cast("Q") as words:
        for start, end in runs:
            looked += end - start
            base, stop = HEADER_WORDS + start * SLOT_WORDS, HEADER_WORDS + end * SLOT_WORDS
            with words[base + _EXPIRE_WORD:stop:SLOT_WORDS] as column:
                expiries = column.tolist()
            if len(expiries) == expiries.count(0) or min(filter(None, expiries)) > now_ms:
                continue
            with words[base + HASH_WORD:stop:SLOT_WORDS] as column:
                hashes = column.tolist()
            with words[base:stop:SLOT_WORDS] as column:
                firsts = column.tolist()  # seq | file_id << 32
            with words[base + 2:stop:SLOT_WORDS] as column:
                places = column.tolist()  # offset | record_len << 32
            found.extend((firsts[i] >> 32, places[i] & 0xFFFFFFFF, places[i] >> 32)
                         for i, expire_at_ms in enumerate(expiries)
                         if expire_at_ms and expire_at_ms <= now_ms and hashes[i] > DELETED)
    return looked, found
