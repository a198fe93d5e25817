"""Whole files written durably: after a crash there is the old file or the complete new one, never a part."""

import os


def fsync_directory(path):
    """Make a directory's entries (created, renamed, removed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path, chunks, file_mode=0o640):
    """Write ``chunks`` to ``path`` so that a crash leaves either no file or the whole new one.

    Temp name, fsync, rename, fsync of the directory. Raises OSError; the temp
    file is removed on failure. The temp file is made new: whatever was at its name
    (a crash's leftover, or a symlink someone planted) is removed, never written through.
    """
    tmp = f"{path}.tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_directory(os.path.dirname(path) or ".")
