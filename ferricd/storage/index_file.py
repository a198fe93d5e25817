"""IndexFiles: a shard's ShardIndex tables as mapped files in the run directory, published by rename.

Clients map ``run_dir/shard-K.idx`` read-only. The shard builds every table
under a temporary name and renames it into place only when it is complete, so
a reader never sees a half-built table. A table that is replaced (grown) or
abandoned (shard stopping, or a restarted shard finding its predecessor's) is
marked RETIRED in its header; readers still mapping it notice and re-open.
An unlinked file stays readable for whoever has it mapped, so nobody faults.

A table that finds no room in the run directory (a full tmpfs) stays in the
shard's memory, unpublished: clients then ask the shard for every read, the
log and ``error`` say why, and the next table made (a growth, or a move the
shard's housekeeping asks for: BitcaskStore.retry_mapped_files) tries the
file again.
"""

import errno
import itertools
import logging
import mmap
import os

from ferric_ipc.file_layout import index_path
from ferric_ipc.index_layout import STATE_AT, STATE_RETIRED
from ferricd.storage.mapped_files import create_mapped

log = logging.getLogger(__name__)


def _mark_retired(buf):
    buf[STATE_AT:STATE_AT + 4] = STATE_RETIRED.to_bytes(4, "little")


class IndexFiles:
    """Allocates, publishes and retires the mapped tables of one shard.

    ``allocate`` and ``replace`` are the hooks a ShardIndex calls; the shard
    calls ``publish`` once recovery has built the first table.
    """

    def __init__(self, run_dir, shard_id, file_mode=0o640):
        self.path = index_path(run_dir, shard_id)
        self.file_mode = file_mode
        self._temp_paths = {}  # id(mmap) -> its file while unpublished
        self._counter = itertools.count()
        self.published = None
        self._publishing = False  # publish() was called: every table from now on is published
        self.error = None  # why the current table is in memory, not in the run directory; None if it is not

    def retire_previous(self):
        """Retire a table left by an earlier run of this shard, before this one changes any data,
        and remove tables a killed run was still building (they live in tmpfs: memory)."""
        directory, name = os.path.split(self.path)
        for leftover in os.listdir(directory):
            if leftover.startswith(name + ".") and leftover.endswith(".new"):
                os.unlink(os.path.join(directory, leftover))
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)  # a planted symlink: ELOOP
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
        else:
            try:
                with mmap.mmap(fd, 0) as old:
                    _mark_retired(old)
            except ValueError:  # an empty file
                pass
            finally:
                os.close(fd)
        os.unlink(self.path)

    def allocate(self, nbytes):
        """A zero-filled writable mapping of ``nbytes`` under a temporary name, or a bytearray if the
        run directory has no room for it (or refuses it otherwise): see ``error``."""
        path = f"{self.path}.{os.getpid()}.{next(self._counter)}.new"
        try:
            buf = create_mapped(path, nbytes, self.file_mode)
        except OSError as exc:
            directory = os.path.dirname(self.path)
            if self.error is None:
                log.error("could not put the key directory %s in %s (%d bytes: %s): it stays in the shard's "
                          "memory, and clients ask the shard for every read until it fits there; "
                          "free space in %s or make it larger", os.path.basename(self.path), directory, nbytes,
                          exc.strerror, directory)
            self.error = f"no {nbytes}-byte table in {directory} ({exc.strerror}): reads go through the shard"
            return bytearray(nbytes)
        if self.error is not None:
            log.warning("the key directory of %s fits in %s again: clients read it directly",
                        os.path.basename(self.path), os.path.dirname(self.path))
            self.error = None
        self._temp_paths[id(buf)] = path
        return buf

    def publish(self, buf):
        """Make ``buf`` the table clients find at ``shard-K.idx``, and every table that replaces it after it.

        A table in memory (``allocate`` found no room) is not published: the path is
        removed, so clients ask the shard instead of reading a table that no longer changes.
        """
        self._publishing = True
        path = self._temp_paths.pop(id(buf), None)
        if path is None:
            self.published = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        else:
            os.replace(path, self.path)
            self.published = buf

    def replace(self, old, new):
        """A ShardIndex grew from ``old`` into ``new``: retire ``old``, publish ``new`` once tables are published."""
        if self.published is old:
            # Retire first: if the shard dies between the two steps, no reader is left on a
            # table that looks LIVE but will never change again (readers fall back meanwhile).
            _mark_retired(old)
        elif id(old) in self._temp_paths:
            os.unlink(self._temp_paths.pop(id(old)))
        if self._publishing:
            self.publish(new)
        if isinstance(old, mmap.mmap):
            old.close()

    def close(self):
        """Retire the published table (the shard is stopping) and remove its file."""
        if self.published is not None:
            _mark_retired(self.published)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.published.close()
            self.published = None
        for path in self._temp_paths.values():
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._temp_paths.clear()


class MemoryTables:
    """The in-process default: tables in bytearrays, nothing published."""

    error = None  # nothing is wrong with a table meant to be in memory

    @staticmethod
    def allocate(nbytes):
        return bytearray(nbytes)

    @staticmethod
    def replace(old, new):
        pass
