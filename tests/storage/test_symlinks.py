"""A symlink planted in a shard's data or run directory, where the shard is about to create or rewrite a file,
is never written through: its target (as root: any file on the machine) stays as it was.

Each test plants a link to a victim file at one name the storage engine opens for writing.
"""

import os

import pytest

from ferric_ipc.file_layout import ACCESS_HEADER, ACCESS_MAGIC, ACCESS_VERSION
from ferric_ipc.index_layout import STATE_LIVE
from ferricd.housekeeping import Housekeeping
from ferricd.storage import BitcaskStore, StoreSettings
from ferricd.storage.access_clock import AccessClock
from ferricd.storage.atomic_files import write_atomically
from ferricd.storage.datafiles import data_path
from ferricd.storage.index_file import IndexFiles

VICTIM_BYTES = b"precious: not ferricd's to write\n" * 4


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim"
    path.write_bytes(VICTIM_BYTES)
    return str(path)


def _untouched(victim):
    with open(victim, "rb") as f:
        return f.read() == VICTIM_BYTES


def test_a_link_at_a_temporary_name_of_an_atomic_write_is_not_followed(tmp_path, victim):
    path = str(tmp_path / "keydir.snapshot")
    os.symlink(victim, f"{path}.tmp")
    write_atomically(path, [b"new contents"])
    assert _untouched(victim)
    with open(path, "rb") as f:
        assert f.read() == b"new contents"
    assert not os.path.lexists(f"{path}.tmp")


def test_a_link_at_the_previous_index_file_is_removed_not_retired_through(tmp_path, victim):
    tables = IndexFiles(str(tmp_path), 0)
    os.symlink(victim, tables.path)
    tables.retire_previous()
    assert _untouched(victim)
    assert not os.path.lexists(tables.path)


def test_a_link_at_the_previous_access_file_is_not_retired_through(tmp_path):
    other_daemons = tmp_path / "other-shard-0.access"  # a live access file, which a retire would mark
    live = ACCESS_HEADER.pack(ACCESS_MAGIC, ACCESS_VERSION, STATE_LIVE, 4096, 0) + bytes(4096)
    other_daemons.write_bytes(live)
    path = str(tmp_path / "shard-0.access")
    os.symlink(other_daemons, path)
    clock = AccessClock(64, path)
    clock.close()
    assert other_daemons.read_bytes() == live


def test_a_link_at_the_temporary_name_of_a_new_table_is_not_followed(tmp_path, victim):
    tables = IndexFiles(str(tmp_path), 0)
    os.symlink(victim, f"{tables.path}.{os.getpid()}.0.new")  # the name the next table is built under
    tables.allocate(4096)
    assert _untouched(victim)
    tables.close()


def test_a_link_at_the_merge_lock_is_refused(tmp_path, victim, open_store):
    os.symlink(victim, tmp_path / "merge.lock")
    with pytest.raises(OSError):
        Housekeeping(open_store(), str(tmp_path))
    assert _untouched(victim)


def test_a_data_file_that_is_a_link_is_never_truncated_through(shard_dir, victim, clock):
    os.makedirs(shard_dir)
    os.symlink(victim, data_path(shard_dir, 1))  # no record in it: recovery would cut it all as a torn tail
    try:
        BitcaskStore(shard_dir, StoreSettings(), clock=clock).close()
    except OSError:
        pass  # refusing to open is fine; writing through the link is not
    assert _untouched(victim)
