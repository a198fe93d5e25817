"""Files of the run directory that clients map: created new, every page reserved before the file is mapped.

The run directory is usually a small tmpfs (``/run`` under systemd). A page of a
sparse file that the filesystem cannot back when it is first touched kills the
process touching it with SIGBUS, so the whole size is reserved (``posix_fallocate``)
first: a full filesystem is then an OSError here, which the caller survives,
instead of a signal later.
"""

import mmap
import os


def create_mapped(path, nbytes, file_mode, exact_mode=False):
    """A zero-filled writable mapping of a new file ``path`` of ``nbytes``, every page reserved.

    Raises OSError (ENOSPC: no room) and leaves no file behind. The file is created
    new (O_EXCL, O_NOFOLLOW), never through a name someone else put there. ``exact_mode``:
    ``file_mode`` as given, whatever the umask takes away.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode)
    try:
        if exact_mode:
            os.fchmod(fd, file_mode)
        os.posix_fallocate(fd, 0, nbytes)
        return mmap.mmap(fd, nbytes)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
