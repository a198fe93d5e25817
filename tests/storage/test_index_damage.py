"""A key directory with impossible contents (random bytes where its slots should be) is damage, not a table: it
is never probed without end, and the shard's store rebuilds it from the data files.

Two ways it arrives: in the snapshot a store loads at open (its CRC holds, so the snapshot was written from a
table already damaged), and in the live table (someone wrote into the mapped file). The tests would hang on a
probe loop without a bound, so each has a timeout.
"""

import os
import random

import pytest

from ferric_ipc.errors import StorageError
from ferric_ipc.index_layout import HASH_WORD, HEADER_BYTES, HEADER_WORDS, SLOT_WORDS
from ferricd.storage.errors import CorruptDataError
from ferricd.storage.snapshot import SNAPSHOT_NAME, read_snapshot, write_snapshot

KEYS = {f"k{i}".encode(): f"v{i}".encode() for i in range(200)}


def _filled(open_store):
    store = open_store()
    for key, value in KEYS.items():
        store.put(key, value)
    return store


def _randomize_slots(buf):
    """Random bytes over every slot, the header left as it was: no slot is EMPTY any more."""
    rng = random.Random(7)
    buf[HEADER_BYTES:] = rng.randbytes(len(buf) - HEADER_BYTES)


@pytest.mark.timeout(20)
def test_a_snapshot_with_random_slots_is_ignored_and_the_table_rebuilt(open_store, shard_dir):
    _filled(open_store).close()
    snapshot = read_snapshot(shard_dir)
    _randomize_slots(snapshot.index_buffer)
    # Written with a CRC that holds: the table was damaged before it was saved.
    write_snapshot(shard_dir, snapshot.next_seq, snapshot.file_sizes, snapshot.live_bytes, snapshot.index_buffer)

    store = open_store()
    assert not store.recovery.from_snapshot
    assert not os.path.exists(os.path.join(shard_dir, SNAPSHOT_NAME))
    assert {key: store.get(key) for key in KEYS} == KEYS
    assert store.get(b"never written") is None
    store.put(b"after", b"ok")
    assert store.get(b"after") == b"ok"


@pytest.mark.timeout(20)
def test_a_live_table_with_no_free_slot_fails_the_store_and_a_reopen_rebuilds_it(open_store, shard_dir):
    store = _filled(open_store)
    words = memoryview(store.index_buffer).cast("Q")
    for slot in range(store.table_capacity):  # every free slot taken by a hash no key has
        at = HEADER_WORDS + slot * SLOT_WORDS + HASH_WORD
        if words[at] == 0:
            words[at] = 0xDEAD_BEEF_0000 + slot
    words.release()

    with pytest.raises(CorruptDataError, match="damaged"):
        store.get(b"never written")  # a probe that meets no free slot
    with pytest.raises(StorageError, match="damaged"):
        store.sync_if_due()  # the shard's tick: it exits, and its successor rebuilds the table
    with pytest.raises(StorageError):
        store.put(b"refused", b"x")
    store.close()
    assert not os.path.exists(os.path.join(shard_dir, SNAPSHOT_NAME))  # a damaged table is never saved

    again = open_store()
    assert {key: again.get(key) for key in KEYS} == KEYS
    assert again.get(b"never written") is None


@pytest.mark.timeout(20)
def test_a_live_slot_naming_a_data_file_that_does_not_exist_fails_the_store_and_a_reopen_rebuilds_it(
        open_store, shard_dir):
    store = _filled(open_store)
    words = memoryview(store.index_buffer).cast("Q")
    live = [slot for slot in range(store.table_capacity) if words[HEADER_WORDS + slot * SLOT_WORDS + HASH_WORD] > 1]
    first_word = HEADER_WORDS + live[0] * SLOT_WORDS  # seq u32 | file_id u32
    words[first_word] = (999 << 32) | (words[first_word] & 0xFFFFFFFF)
    words.release()

    with pytest.raises(CorruptDataError, match="data file 999"):
        for key in KEYS:
            store.get(key)
    with pytest.raises(StorageError, match="damaged"):
        store.sync_if_due()
    store.close()
    assert not os.path.exists(os.path.join(shard_dir, SNAPSHOT_NAME))

    again = open_store()
    assert {key: again.get(key) for key in KEYS} == KEYS
