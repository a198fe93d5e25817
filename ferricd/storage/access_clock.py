"""AccessClock: when each bucket of key hashes was last used, in ticks of a coarse clock; readers write it too.

Every read and write of a key stores the clock's current value (one byte,
wrapping at 256) in the byte of its bucket, ``key_hash64(key) & (buckets - 1)``.
The shard advances the clock as its evicting keyspaces turn over (see
``eviction``), so a key's age in ticks says how much of its keyspace was
replaced since it was last used. Buckets are indexed by hash, not slot, so
they stay valid when the key directory's table is rebuilt and need no
coordination with it. Two keys sharing a bucket share an age (the younger
wins): there are at least BUCKETS_PER_SLOT buckets per slot of the table, so
at most about one key in six shares. When the table grows past that, the
bytes move to a larger buffer, each old byte copied to every bucket it covers.

In a daemon the bytes are the file ``run_dir/shard-K.access`` (layout:
``ferric_ipc.file_layout.ACCESS_HEADER``), which clients map writable: a local
read marks its key without a round trip (ferric_ipc.local_reads). The file is
made under a temporary name and renamed into place complete; the one it
replaces is marked RETIRED, which tells clients to map the new one. A client
can only skew the eviction choice, never lose or corrupt data. If the run
directory has no room for the file, the bytes stay in the shard's memory
(clients' reads then leave no mark) until a growth or ``retry_file`` finds room again; ``error`` says why.
"""

import logging
import mmap
import os

from ferric_ipc.file_layout import (
    ACCESS_CLOCK_AT,
    ACCESS_HEADER,
    ACCESS_HEADER_BYTES,
    ACCESS_MAGIC,
    ACCESS_STATE_AT,
    ACCESS_VERSION,
)
from ferric_ipc.index_layout import STATE_LIVE, STATE_RETIRED
from ferricd.storage.mapped_files import create_mapped

log = logging.getLogger(__name__)

MIN_BUCKETS = 4096
BUCKETS_PER_SLOT = 4  # a table is 55-75 % full, so 5-7 buckets per key


def buckets_for(capacity):
    """The bucket count for a table of ``capacity`` slots: a power of two."""
    wanted = max(MIN_BUCKETS, BUCKETS_PER_SLOT * capacity)
    return 1 << (wanted - 1).bit_length()


class AccessClock:
    """The access times of one shard: in memory (``path`` None), or in the file at ``path`` that clients map."""

    def __init__(self, capacity, path=None, file_mode=0o640):
        self.path = path
        # Clients write the file: the group needs write permission (run_dir itself decides who gets in).
        self.file_mode = file_mode | 0o020
        self._buf = self._times = None
        self.buckets = 0
        self._capacity = capacity  # the table size the buckets were last fitted to
        self.now = 0  # the clock, 0-255
        self.error = None  # why the bytes are in memory although ``path`` is set; None if they are not
        if path is not None:
            _retire_file(path)  # a killed run's file: its readers move on to this run's
            _remove_leftovers(path)
        self._replace(buckets_for(capacity))

    def touch(self, key_hash):
        """Mark the key with ``key_hash`` as used now (a read or a write)."""
        at = key_hash & self.mask
        if self._times[at] != self.now:  # no store when unchanged: the line stays shared between readers' caches
            self._times[at] = self.now

    def age(self, key_hash):
        """Ticks since the key with ``key_hash`` (or a key sharing its bucket) was last used, 0-255."""
        return (self.now - self._times[key_hash & self.mask]) & 0xFF

    def set_age(self, key_hash, age):
        """Make the key look ``age`` ticks old (the eviction hand keeps old keys from wrapping round to young)."""
        self._times[key_hash & self.mask] = (self.now - age) & 0xFF

    def tick(self):
        """Advance the clock by one."""
        self.now = (self.now + 1) & 0xFF
        self._buf[ACCESS_CLOCK_AT] = self.now

    def fit(self, capacity):
        """Grow to ``buckets_for(capacity)`` if the table grew past the current size."""
        if capacity != self._capacity:  # every write asks: the answer is cached
            self._capacity = capacity
            if buckets_for(capacity) > self.buckets:
                self._replace(buckets_for(capacity))

    def retry_file(self):
        """Move the bytes into the file at ``path`` if they are in memory for want of room there."""
        if self.error is not None:
            self._replace(self.buckets)

    def _replace(self, buckets):
        nbytes = ACCESS_HEADER_BYTES + buckets
        temp = None if self.path is None else f"{self.path}.{os.getpid()}.new"
        if temp is None:
            buf = bytearray(nbytes)
        else:
            try:
                # exact_mode: the umask must not take the group's write permission away
                buf = create_mapped(temp, nbytes, self.file_mode, exact_mode=True)
            except OSError as exc:
                self._no_room(nbytes, exc)
                buf, temp = bytearray(nbytes), None
        ACCESS_HEADER.pack_into(buf, 0, ACCESS_MAGIC, ACCESS_VERSION, STATE_LIVE, buckets, self.now)
        fresh = memoryview(buf)[ACCESS_HEADER_BYTES:]
        if self._times is not None:
            # Bucket i of the old size covers buckets i, i + old, i + 2 * old, ... of the new one.
            old = bytes(self._times)
            fresh[:] = old * (buckets // len(old))
        if temp is not None:
            os.replace(temp, self.path)
            if self.error is not None:
                log.warning("the access times of %s fit in the run directory again: clients mark their reads",
                            self.path)
                self.error = None
        self._close_current()
        if self.path is not None and temp is None:
            _remove(self.path)  # retired just now: clients stop marking a file nobody reads
        self._buf, self._times, self.buckets, self.mask = buf, fresh, buckets, buckets - 1

    def _no_room(self, nbytes, exc):
        directory = os.path.dirname(self.path) or "."
        if self.error is None:
            log.error("could not put the access times %s in %s (%d bytes: %s): they stay in the shard's memory, "
                      "and reads clients answer themselves do not count for eviction until they fit; "
                      "free space in %s or make it larger", self.path, directory, nbytes, exc.strerror, directory)
        self.error = f"no {nbytes}-byte access file in {directory} ({exc.strerror}): local reads leave no mark"

    def _close_current(self):
        """Retire the current buffer (readers of its file re-open the path) and let it go."""
        if self._buf is None:
            return
        self._buf[ACCESS_STATE_AT:ACCESS_STATE_AT + 4] = STATE_RETIRED.to_bytes(4, "little")
        self._times.release()
        if isinstance(self._buf, mmap.mmap):
            self._buf.close()
        self._buf = self._times = None

    def close(self):
        """Retire and remove the file: with no shard serving, no reader should mark it."""
        if self._buf is None:
            return
        self._close_current()
        if self.path is not None:
            _remove(self.path)


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_leftovers(path):
    """Remove files a killed run was still making (``_replace``'s temporary names): they live in tmpfs, in memory."""
    directory, name = os.path.split(path)
    for leftover in os.listdir(directory or "."):
        if leftover.startswith(name + ".") and leftover.endswith(".new"):
            try:
                os.unlink(os.path.join(directory, leftover))
            except FileNotFoundError:
                pass


def _retire_file(path):
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)  # a planted symlink is not ours to mark
    except OSError:  # none, unreadable, or a symlink: nothing to retire (the new file replaces the name)
        return
    try:
        with mmap.mmap(fd, 0) as old:
            if len(old) >= ACCESS_HEADER_BYTES and old[:len(ACCESS_MAGIC)] == ACCESS_MAGIC:
                old[ACCESS_STATE_AT:ACCESS_STATE_AT + 4] = STATE_RETIRED.to_bytes(4, "little")
    except (OSError, ValueError):  # empty: nothing to retire
        pass
    finally:
        os.close(fd)
