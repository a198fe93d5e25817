"""Exclusive lock on a shard directory, so exactly one process ever writes its files."""

import fcntl
import os

from ferricd.storage.errors import DirectoryLockedError

LOCK_NAME = "LOCK"


class DirectoryLock:
    """An ``flock`` held on ``directory/lock_name`` for the lifetime of this object.

    The kernel drops the lock when the holder dies, so a crash never leaves a
    stale lock (unlike pid files checked with ``kill -0``, which pid reuse fools).
    The file holds the owner's pid so a refused opener can name it.
    """

    def __init__(self, directory, lock_name=LOCK_NAME, role="data directory"):
        self.path = os.path.join(directory, lock_name)
        # O_NOFOLLOW: a symlink planted in place of the lock never makes us write through it.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DirectoryLockedError(
                f"{directory} is in use by pid {holder}; stop that process first, "
                f"or give this one another {role}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
