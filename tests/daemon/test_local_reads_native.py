"""The C local-read path against the pure-Python one and the store itself, in one process.

A BitcaskStore publishes its key directory through IndexFiles, exactly as a shard
does; two LocalShardReaders read it, one through ``ferric_ipc._localread`` and one
in pure Python. Every answer must be the same, and the store's own answer: hits with
their expiry, misses, expired keys, deleted keys, keys in rotated files, tables that
grew, damaged records (which both must refuse rather than answer).
"""

import mmap
import os
import shutil
import sysconfig
import tempfile
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ferric_ipc import local_reads, native
from ferric_ipc.protocol import MAX_EXPIRE_AT_MS
from ferric_ipc.file_layout import access_path, data_file_name
from ferric_ipc.keys import key_hash64, key_hash64_python
from ferric_ipc.local_reads import FALLBACK, MISSING, LocalShardReader
from ferric_ipc.routing import shard_for
from ferricd.storage.index_file import IndexFiles
from ferricd.storage import BitcaskStore, Put, StoreSettings
from ferricd.storage.keyspaces import Keyspace, KeyspaceTable
from tests.fake_clock import FakeClock

needs_extension = pytest.mark.skipif(
    native.extension is None,
    reason="ferric_ipc._localread is not built (no C compiler at install time, or FERRIC_PURE_PYTHON is set)",
)


def python_reader(run_dir, shard_dir):
    reader = LocalShardReader(run_dir, shard_dir, 0)
    reader._native_lookup = None  # this instance takes the pure-Python path only
    return reader


@needs_extension
@given(st.binary(max_size=600))
def test_c_key_hash_matches_blake2b(key):
    assert native.extension.key_hash64(key) == key_hash64_python(key)
    assert native.extension.key_hash64(bytearray(key)) == key_hash64_python(key)


@needs_extension
@given(st.binary(max_size=5000))
def test_c_crc32_matches_zlib(data):
    assert native.extension.crc32(data) == zlib.crc32(data)


@needs_extension
def test_c_key_hash_at_block_boundaries_and_the_pinned_value():
    for size in (0, 1, 127, 128, 129, 255, 256, 257, 65536):
        key = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        assert native.extension.key_hash64(key) == key_hash64_python(key), size
    assert key_hash64(b"sess:42") == 0x96F636BDE2D1D795


@needs_extension
def test_c_lookup_rejects_wrong_argument_types(tmp_path):
    lookup = native.extension.lookup
    with pytest.raises(TypeError):
        lookup(b"", "not bytes", 2, 0, {})
    with pytest.raises(TypeError):
        lookup(b"", b"k", 2, 0, [])
    with pytest.raises(TypeError):
        lookup(b"", b"k", 2)
    with pytest.raises(OverflowError):
        lookup(b"", b"k", -1, 0, {})
    assert lookup(b"", b"k", 2, 0, {}) is local_reads._SLOW  # too short to be a table


def test_a_layout_mismatch_disables_the_extension(monkeypatch):
    if native.extension is not None:
        monkeypatch.setattr(native.extension, "LAYOUT", {**native.extension.LAYOUT, "SLOT_BYTES": 64})
        assert native.load() is None
    monkeypatch.setenv(native.DISABLE_VARIABLE, "1")
    assert native.load() is None


KEYS = [f"k{i}".encode() for i in range(40)] + [b"", b"{tag}x", b"x" * 300]
VALUES = st.one_of(st.binary(max_size=40), st.binary(min_size=3000, max_size=5000))


@settings(max_examples=30, stateful_step_count=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
class NativeAgreesWithPython(RuleBasedStateMachine):
    """Random writes, deletes, expiries, rotations and growth; after every step all three agree."""

    @initialize()
    def open(self):
        # Re-map a data file as soon as a record lies past its mapping, so that after the first
        # lookup of a key the C path can answer it on its own (checked in the invariant).
        self.remap_step = local_reads._REMAP_STEP_BYTES
        local_reads._REMAP_STEP_BYTES = 0
        self.tmp = tempfile.mkdtemp(prefix="flrn-")
        self.run_dir = os.path.join(self.tmp, "run")
        os.mkdir(self.run_dir)
        self.shard_dir = os.path.join(self.tmp, "shard-0")
        self.clock = FakeClock()
        tables = IndexFiles(self.run_dir, 0)
        # Small files, so keys end up spread over rotated files too.
        self.store = BitcaskStore(
            self.shard_dir, StoreSettings(max_file_bytes=8192, fsync="never"), clock=self.clock, tables=tables
        )
        tables.publish(self.store.index_buffer)  # as ShardServer.open does after recovery
        self.model = {}  # key -> (value, expire_at_ms)
        self.c_reader = LocalShardReader(self.run_dir, self.shard_dir, 0)
        self.py_reader = python_reader(self.run_dir, self.shard_dir)

    @rule(key=st.sampled_from(KEYS), value=VALUES, ttl_ms=st.sampled_from([0, 0, 60, 6000]))
    def put(self, key, value, ttl_ms):
        expire_at_ms = self.clock() + ttl_ms if ttl_ms else 0
        self.store.put(key, value, expire_at_ms)
        self.model[key] = (value, expire_at_ms)

    @rule(key=st.sampled_from(KEYS), value=VALUES,
          expire_at_ms=st.sampled_from([MAX_EXPIRE_AT_MS, MAX_EXPIRE_AT_MS - 1, 2**62, 2**31, 2**32]))
    def put_far_expiry(self, key, value, expire_at_ms):
        """The far end of the expiry range: no path may take it for a time in the past."""
        self.store.put(key, value, expire_at_ms)
        self.model[key] = (value, expire_at_ms)

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key):
        self.store.delete(key)
        self.model.pop(key, None)

    @rule(many=st.integers(50, 400))
    def grow(self, many):
        self.store.write_batch([Put(f"bulk{i}".encode(), b"v" * (i % 7)) for i in range(many)])
        self.model.update((f"bulk{i}".encode(), (b"v" * (i % 7), 0)) for i in range(many))

    @rule(ms=st.sampled_from([10, 60, 6000]))
    def advance_clock(self, ms):
        self.clock.advance(ms)

    @invariant()
    def readers_agree_with_the_store(self):
        if not hasattr(self, "store"):
            return
        now_ms = self.clock()
        for key in KEYS + [b"bulk3", b"never-written"]:
            expected = self.model.get(key)
            if expected is not None and expected[1] and expected[1] <= now_ms:
                expected = None
            # Readers first: the store's own get drops an expired key from the table.
            for reader in (self.c_reader, self.py_reader):
                found = reader.lookup(key, key_hash64(key), now_ms)
                got = None if found is MISSING else found
                assert found is not FALLBACK, (key, reader._native_lookup)
                assert got == expected, (key, got, expected, reader._native_lookup)
            # The C function alone, now that the reader has mapped what it needs: it must answer
            # (not hand over to Python), and answer the same.
            found = native.extension.lookup(self.c_reader._table[0], key, key_hash64(key), now_ms, self.c_reader._views)
            assert found is not local_reads._SLOW and found is not FALLBACK, key
            assert (None if found is MISSING else found) == expected, (key, found, expected)
            assert self.store.get_with_expiry(key) == expected

    def teardown(self):
        local_reads._REMAP_STEP_BYTES = getattr(self, "remap_step", local_reads._REMAP_STEP_BYTES)
        if hasattr(self, "store"):
            self.c_reader.close()
            self.py_reader.close()
            self.store.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


TestNativeAgreesWithPython = needs_extension(NativeAgreesWithPython.TestCase)


def published_store(tmp_path, evicting=False):
    """``(run_dir, shard_dir, store)``: a BitcaskStore whose key directory is published as a shard's is;
    ``evicting``: with an lru keyspace for ``sa:`` keys, so it keeps access times clients mark."""
    run_dir, shard = str(tmp_path / "run"), str(tmp_path / "shard-0")
    os.mkdir(run_dir)
    tables = IndexFiles(run_dir, 0)
    if evicting:
        keyspaces = KeyspaceTable([Keyspace("default", b"", "never", "none", 0, 0),
                                   Keyspace("cache", b"sa:", "never", "lru", 1 << 30, 0)])
        store = BitcaskStore(shard, StoreSettings(fsync="never"), tables=tables, keyspaces=keyspaces,
                             access_path=access_path(run_dir, 0))
    else:
        store = BitcaskStore(shard, StoreSettings(fsync="never"), tables=tables)
    tables.publish(store.index_buffer)
    return run_dir, shard, store


@needs_extension
def test_damaged_record_is_refused_by_both_paths(tmp_path):
    run_dir, shard, store = published_store(tmp_path)
    long_value = b"L" * 3000  # long enough for the zlib CRC path
    try:
        store.put(b"good", b"value-1")
        store.put(b"bad", b"value-2")
        store.put(b"good-long", long_value)
        store.put(b"bad-long", long_value[:-7] + b"value-3")
        path = os.path.join(shard, data_file_name(1))
        with open(path, "r+b") as f:
            data = f.read()
            for damaged in (b"value-2", b"value-3"):
                f.seek(data.index(damaged))
                f.write(damaged.upper())  # the record's CRC no longer matches
        expected = {b"good": (b"value-1", 0), b"good-long": (long_value, 0), b"bad": FALLBACK, b"bad-long": FALLBACK}
        c_reader, py_reader = LocalShardReader(run_dir, shard, 0), python_reader(run_dir, shard)
        for reader in (c_reader, py_reader):
            for key, answer in expected.items():
                assert reader.lookup(key, key_hash64(key), 1) == answer, key
        for key, answer in expected.items():  # the C function alone, with everything mapped
            assert native.extension.lookup(c_reader._table[0], key, key_hash64(key), 1, c_reader._views) == answer, key
        c_reader.close()
        py_reader.close()
    finally:
        store.close()


def test_the_extension_is_built_where_it_can_be():
    """``pip install`` builds the extension optionally; a silent build failure would go unnoticed."""
    headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    if not (shutil.which("cc") or shutil.which("gcc")) or not os.path.exists(headers):
        pytest.skip("no C compiler or no Python headers here: the pure-Python path serves")
    if os.environ.get(native.DISABLE_VARIABLE, "") not in ("", "0"):
        pytest.skip(f"{native.DISABLE_VARIABLE} is set")
    assert native.extension is not None, (
        "ferric_ipc._localread did not build although a compiler and headers exist: "
        "run `pip install -e . -v` and read the build_ext output"
    )


@needs_extension
def test_reads_of_a_file_being_written_stay_on_the_c_path(tmp_path):
    """A hot key rewritten between reads lands past the reader's map each time: after the first
    growth the file is mapped well past its end, so the C path answers every later read itself."""
    run_dir, shard, store = published_store(tmp_path)
    reader = LocalShardReader(run_dir, shard, 0)
    try:
        keys = [f"hot{i}".encode() for i in range(100)]
        store.write_batch([Put(key, b"first") for key in keys])  # the table is sized for them: no re-open
        # Maps the file, on the Python path, which also checks that the table is the one at its path (and
        # does so again every 100 ms: each check is one more read on that path).
        started_ns = time.monotonic_ns()
        assert reader.lookup(keys[0], key_hash64(keys[0]), 1) == (b"first", 0)
        assert reader.slow_lookups == 1
        rounds = 2000
        for i in range(rounds):
            key = keys[i % len(keys)]
            value = b"%020d" % i
            store.put(key, value)
            assert reader.lookup(key, key_hash64(key), 1) == (value, 0)
        # Besides the path checks, only the first read past that map left the C path: it re-mapped the
        # file with room to grow.
        path_checks = (time.monotonic_ns() - started_ns) // local_reads._RECHECK_PATH_NS
        assert reader.slow_lookups <= 2 + path_checks, f"{reader.slow_lookups} of {rounds} reads left the C path"
        window = reader._files[1].mapping[1]
        assert window > os.path.getsize(os.path.join(shard, data_file_name(1)))
    finally:
        reader.close()
        store.close()


def test_a_hit_marks_the_access_file_that_replaced_the_one_it_mapped(tmp_path):
    """When the key directory grows, the shard moves its access times to a larger file and retires the old
    one: the next local hit must mark the new file at once, not the retired one until the next path check
    (a lag of up to 100 ms in which hot keys read only locally age like cold ones)."""
    from ferric_ipc.file_layout import ACCESS_CLOCK_AT, ACCESS_HEADER, ACCESS_HEADER_BYTES

    run_dir, shard, store = published_store(tmp_path, evicting=True)
    reader = LocalShardReader(run_dir, shard, 0)
    key = b"sa:hot"
    try:
        store.put(key, b"v")
        for _ in range(2):  # the first maps the table, the second (its path check) the access file
            assert reader.lookup(key, key_hash64(key), 1) == (b"v", 0)
        assert reader._access is not None
        reader._path_checked_ns = time.monotonic_ns() + 10**12  # no periodic path check during the test
        mapped_inode = os.stat(access_path(run_dir, 0)).st_ino
        store.write_batch([Put(f"sa:fill:{i}".encode(), b"v") for i in range(20_000)])  # grows both files
        assert os.stat(access_path(run_dir, 0)).st_ino != mapped_inode, "the access file was not replaced"
        with open(access_path(run_dir, 0), "r+b") as f:
            times = mmap.mmap(f.fileno(), 0)
        buckets = ACCESS_HEADER.unpack_from(times)[3]
        bucket = ACCESS_HEADER_BYTES + (key_hash64(key) & (buckets - 1))
        times[ACCESS_CLOCK_AT], times[bucket] = 7, 3  # a clock that moved on since the key's last use
        assert reader.lookup(key, key_hash64(key), 1) == (b"v", 0)
        assert times[bucket] == 7, "the hit marked the retired access file"
        times.close()
    finally:
        reader.close()
        store.close()


@needs_extension
@settings(max_examples=300, deadline=None)
@given(keys=st.lists(st.binary(max_size=40).map(lambda raw: raw.replace(b"\x00", b"")).filter(bool)
                     | st.from_regex(rb"\A[a-z{}:]{1,12}\Z"), min_size=1, max_size=20),
       shards=st.integers(1, 16))
def test_lookup_many_routes_every_key_as_python_does(keys, shards):
    asked = []
    answers = native.extension.lookup_many(keys, shards, 0, lambda shard: asked.append(shard))
    assert answers == [local_reads.Answer.SLOW] * len(keys)  # no table given: the reader's own path decides
    assert asked == list(dict.fromkeys(shard_for(key, shards) for key in keys))  # once per shard, in key order
    for key in keys:  # and each key on its own, to its own shard
        asked.clear()
        native.extension.lookup_many([key], shards, 0, lambda shard: asked.append(shard))
        assert asked == [shard_for(key, shards)]


@needs_extension
def test_lookup_many_answers_as_lookup_does_key_by_key(tmp_path):
    run_dir, shard, store = published_store(tmp_path)
    now_ms = int(time.time() * 1000)
    try:
        store.put(b"live", b"1")
        store.put(b"{t}tagged", b"2", now_ms + 60_000)
        store.put(b"expired", b"3", now_ms - 1)
        reader = LocalShardReader(run_dir, shard, 0)
        keys = [b"live", b"{t}tagged", b"expired", b"absent"]
        one_by_one = [reader.lookup(key, key_hash64(key), now_ms) for key in keys]
        reader._path_checked_ns = time.monotonic_ns() + 10**12  # no periodic path check: the C path answers
        state = reader.native_state(time.monotonic_ns())
        answers = native.extension.lookup_many(list(keys), 1, now_ms, lambda shard: state)
        assert answers == one_by_one == [(b"1", 0), (b"2", now_ms + 60_000), MISSING, MISSING]
        values = native.extension.lookup_many(list(keys), 1, now_ms, lambda shard: state, True)
        assert values == [b"1", b"2", None, None]  # as Client.mget wants them
        reader.close()
    finally:
        store.close()


@needs_extension
@pytest.mark.parametrize("values", [False, True])
def test_lookup_many_marks_each_hit_used_as_mark_used_does(tmp_path, values):
    """An mget's hits age like single reads: each one's bucket, in its own shard's access times, gets that
    file's clock; a miss's does not, nor does an access file the shard retired."""
    from ferric_ipc.file_layout import ACCESS_CLOCK_AT, ACCESS_HEADER, ACCESS_HEADER_BYTES, ACCESS_STATE_AT

    run_dir, shard, store = published_store(tmp_path, evicting=True)
    reader = LocalShardReader(run_dir, shard, 0)
    hits = [f"sa:{i}".encode() for i in range(8)]
    absent = b"sa:absent"
    assert {shard_for(key, 2) for key in hits} == {0, 1}
    # One store serves both "shards": shard 1 is given the same table and an access file of its own, with
    # another mask, so a hit marked with the wrong shard's file or mask shows.
    other = mmap.mmap(-1, ACCESS_HEADER_BYTES + 256)
    other[ACCESS_CLOCK_AT] = 21
    try:
        for key in hits:
            store.put(key, b"v")
        for _ in range(2):  # the first maps the table, the second (its path check) the access file
            reader.lookup(hits[0], key_hash64(hits[0]), 1)
        reader._path_checked_ns = time.monotonic_ns() + 10**12  # no periodic path check during the test
        with open(access_path(run_dir, 0), "r+b") as f:
            times = mmap.mmap(f.fileno(), 0)
        mask = ACCESS_HEADER.unpack_from(times)[3] - 1
        files = {0: (times, mask), 1: (other, 255)}

        def bucket(key):
            mapped, key_mask = files[shard_for(key, 2)]
            return mapped, ACCESS_HEADER_BYTES + (key_hash64(key) & key_mask)

        def read_all():
            table, views, _access, _mask = reader.native_state(time.monotonic_ns())
            states = {shard: (table, views, mapped, key_mask) for shard, (mapped, key_mask) in files.items()}
            return native.extension.lookup_many(hits + [absent], 2, 1, states.get, values)

        times[ACCESS_CLOCK_AT] = 9
        for key in hits + [absent]:
            mapped, at = bucket(key)
            mapped[at] = 4
        hit = b"v" if values else (b"v", 0)
        assert read_all() == [hit] * len(hits) + [None if values else MISSING]
        assert [bucket(key)[0][bucket(key)[1]] for key in hits] == [9 if shard_for(key, 2) == 0 else 21 for key in hits]
        absent_file, absent_at = bucket(absent)
        assert all(bucket(key) != (absent_file, absent_at) for key in hits), "pick an absent key in a bucket of its own"
        assert absent_file[absent_at] == 4, "a miss marked its key used"
        times[ACCESS_CLOCK_AT], other[ACCESS_CLOCK_AT] = 11, 23
        times[ACCESS_STATE_AT] = other[ACCESS_STATE_AT] = 1  # retired after native_state looked: not marked
        assert read_all()[:len(hits)] == [hit] * len(hits)
        assert [bucket(key)[0][bucket(key)[1]] for key in hits] == [9 if shard_for(key, 2) == 0 else 21 for key in hits]
        assert reader.native_state(time.monotonic_ns())[2] is None  # and native_state hands it out no more
        times.close()
    finally:
        other.close()
        reader.close()
        store.close()


@needs_extension
def test_lookup_many_refuses_a_bad_state_and_holds_its_own_copy_of_the_keys():
    with pytest.raises(TypeError, match="state_of"):
        native.extension.lookup_many([b"k"], 1, 0, lambda shard: (b"", []))
    with pytest.raises(TypeError, match="state_of"):
        native.extension.lookup_many([b"k"], 1, 0, lambda shard: (b"", {}))  # the access times left out
    with pytest.raises(TypeError, match="bytes"):
        native.extension.lookup_many([b"k", "text"], 1, 0, lambda shard: None)
    keys = [b"a", b"b", b"c"]
    answers = native.extension.lookup_many(keys, 2, 0, lambda shard: keys.clear())  # changed mid-call
    assert answers == [local_reads.Answer.SLOW] * 3
    keys = [b"a", b"b"]
    assert native.extension.lookup_many(keys, 2, 0, lambda shard: None, True) == [local_reads.Answer.SLOW] * 2
