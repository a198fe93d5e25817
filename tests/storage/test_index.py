"""ShardIndex: the fixed-slot table checked against a dict model, including probe chains and wrap-around."""

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ferric_ipc.index_layout import HEADER_BYTES, MAX_LOAD, MIN_CAPACITY, SLOT, SLOT_BYTES
from ferricd.storage.errors import CorruptDataError
from ferricd.storage.index import ShardIndex

# Small hashes make long probe chains and chains that wrap past the last slot;
# the large ones check that the full 64-bit range is stored.
HASHES = st.one_of(st.integers(2, 2 + 3 * MIN_CAPACITY), st.integers(2**64 - 300, 2**64 - 1))


class IndexModel(RuleBasedStateMachine):
    """Keys are (hash, ident): several keys may share a hash, as real keys can.
    ``offset`` holds ident, standing in for the key bytes a caller reads from the record."""

    def __init__(self):
        super().__init__()
        self.index = ShardIndex.create()
        self.model = {}  # (hash, ident) -> (file_id, record_len, expire_at_ms)
        self.next_ident = 0

    def _slot_of(self, key):
        key_hash, ident = key
        found = [c for c in self.index.candidates(key_hash) if c[2] == ident]
        assert len(found) <= 1
        return found[0] if found else None

    @rule(key_hash=HASHES, file_id=st.integers(1, 2**32 - 1), record_len=st.integers(0, 2**32 - 1),
          expire=st.integers(0, 2**64 - 1))
    def insert_new_key(self, key_hash, file_id, record_len, expire):
        key = (key_hash, self.next_ident)
        self.next_ident += 1
        self.index.insert(key_hash, file_id, key[1], record_len, expire)
        self.model[key] = (file_id, record_len, expire)

    @rule(data=st.data(), file_id=st.integers(1, 1000), record_len=st.integers(0, 1000))
    def overwrite(self, data, file_id, record_len):
        if not self.model:
            return
        key = data.draw(st.sampled_from(sorted(self.model)))
        self.index.replace(self._slot_of(key)[0], file_id, key[1], record_len, 0)
        self.model[key] = (file_id, record_len, 0)

    @rule(data=st.data())
    def delete(self, data):
        if not self.model:
            return
        key = data.draw(st.sampled_from(sorted(self.model)))
        slot = self._slot_of(key)[0]
        assert self.index.remove(slot)[0] == key[0]
        del self.model[key]

    @rule(key_hash=HASHES)
    def bulk_insert(self, key_hash):
        key = (key_hash, self.next_ident)
        present = any(h == key_hash for h, _ in self.model)
        inserted = self.index.insert_absent(key_hash, 7, key[1], 1, 0)
        self.index.write_counts()
        assert inserted == (not present)
        if inserted:
            self.next_ident += 1
            self.model[key] = (7, 1, 0)

    @rule(extra=st.integers(0, 500))
    def reserve(self, extra):
        self.index.reserve(extra)
        assert self.index.count + self.index.deleted + extra <= self.index.capacity * MAX_LOAD

    @rule()
    def rebuild(self):
        self.index.rebuild(max(MIN_CAPACITY, self.index.count * 2))
        assert self.index.deleted == 0

    @invariant()
    def matches_model(self):
        for key, (file_id, record_len, expire) in self.model.items():
            slot, found_file, offset, found_len, found_expire = self._slot_of(key)
            assert (found_file, offset, found_len, found_expire) == (file_id, key[1], record_len, expire)
        assert self.index.count == len(self.model)
        assert sorted((e[1], e[3]) for e in self.index.entries()) == sorted(self.model)

    @invariant()
    def header_and_slots_are_consistent(self):
        again = ShardIndex(self.index.buffer)  # what another process mapping it would read
        assert (again.capacity, again.count, again.deleted) == (
            self.index.capacity, self.index.count, self.index.deleted)
        assert self.index.count + self.index.deleted <= self.index.capacity * MAX_LOAD
        buf = self.index.buffer
        for slot in range(self.index.capacity):
            assert SLOT.unpack_from(buf, HEADER_BYTES + slot * SLOT_BYTES)[0] % 2 == 0  # no slot left mid-write


TestIndexModel = IndexModel.TestCase
TestIndexModel.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)


def test_bytes_per_key_stays_at_or_under_64_after_growth():
    index = ShardIndex.create()
    worst = 0.0
    for i in range(20_000):
        index.insert(2 + i * 7919, 1, i, 100, 0)
        if i > 1000:
            worst = max(worst, index.bytes_per_key())
    assert worst <= 58.5  # 32-byte slots, load kept between 0.55 and 0.75


def test_a_buffer_that_is_not_an_index_is_refused():
    with pytest.raises(CorruptDataError, match="not a key directory"):
        ShardIndex(bytearray(4096))
    good = ShardIndex.create(capacity=100)
    with pytest.raises(CorruptDataError, match="truncated"):
        ShardIndex(good.buffer[:200])
