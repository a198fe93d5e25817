"""IndexFiles: a shard's ShardIndex tables as mapped files in the run directory, published by rename.

Clients map ``run_dir/shard-K.idx`` read-only. The shard builds every table
under a temporary name and renames it into place only when it is complete, so
a reader never sees a half-built table. A table that is replaced (grown) or
abandoned (shard stopping, or a restarted shard finding its predecessor's) is
marked RETIRED in its header; readers still mapping it notice and re-open.
An unlinked file stays readable for whoever has it mapped, so nobody faults.
"""

import itertools
import mmap
import os

from ferric_ipc.file_layout import index_path
from ferric_ipc.index_layout import STATE_AT, STATE_RETIRED


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

    def retire_previous(self):
        """Retire a table left by an earlier run of this shard, before this one changes any data,
        and remove tables a killed run was still building (they live in tmpfs: memory)."""
        directory, name = os.path.split(self.path)
        for leftover in os.listdir(directory):
            if leftover.startswith(name + ".") and leftover.endswith(".new"):
                os.unlink(os.path.join(directory, leftover))
        try:
            with open(self.path, "r+b") as f:
                with mmap.mmap(f.fileno(), 0) as old:
                    _mark_retired(old)
            os.unlink(self.path)
        except (FileNotFoundError, ValueError):  # none, or an empty file
            pass

    def allocate(self, nbytes):
        """A zero-filled writable mapping of ``nbytes`` under a temporary name."""
        path = f"{self.path}.{os.getpid()}.{next(self._counter)}.new"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, self.file_mode)
        try:
            os.ftruncate(fd, nbytes)
            buf = mmap.mmap(fd, nbytes)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        self._temp_paths[id(buf)] = path
        return buf

    def publish(self, buf):
        """Make ``buf`` the table clients find at ``shard-K.idx``."""
        os.replace(self._temp_paths.pop(id(buf)), self.path)
        self.published = buf

    def replace(self, old, new):
        """A ShardIndex grew from ``old`` into ``new``: publish ``new`` if ``old`` was public, retire ``old``."""
        if self.published is old:
            # Retire first: if the shard dies between the two steps, no reader is left on a
            # table that looks LIVE but will never change again (readers fall back meanwhile).
            _mark_retired(old)
            self.publish(new)
        else:
            os.unlink(self._temp_paths.pop(id(old)))
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

    @staticmethod
    def allocate(nbytes):
        return bytearray(nbytes)

    @staticmethod
    def replace(old, new):
        pass
