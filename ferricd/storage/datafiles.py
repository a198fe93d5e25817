"""A shard's data files: naming, the active file that takes appends, and mapped reads of closed files.

Files are ``NNNNNNNNN.data`` with zero-padded ids, always compared as integers.
Exactly one file takes appends; once closed it is never written again, so it
can be mapped read-only (by the shard now, by clients later) and is never
truncated while it may be mapped.
"""

import errno
import mmap
import os
import re

from ferric_ipc.errors import StorageError, StorageFullError
from ferric_ipc.file_layout import data_file_name
from ferricd.storage.errors import CorruptDataError

DATA_SUFFIX = ".data"
HINT_SUFFIX = ".hint"
_DATA_NAME = re.compile(r"^(\d{9,})\.data$")
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def data_path(directory, file_id):
    return os.path.join(directory, data_file_name(file_id))


def hint_path(directory, file_id):
    return os.path.join(directory, f"{file_id:09d}{HINT_SUFFIX}")


def list_data_file_ids(directory):
    """Ids of the data files in ``directory``, ascending as integers (``10`` after ``9``)."""
    ids = []
    for name in os.listdir(directory):
        match = _DATA_NAME.match(name)
        if match:
            ids.append(int(match.group(1)))
    return sorted(ids)


class ActiveFile:
    """The one data file of a shard that takes appends.

    Appends go straight to the file descriptor (no Python buffering), so a
    completed ``append`` is visible to ``pread`` and to other processes at once,
    and ``sync`` alone decides durability, of the bytes and of the file's name
    (``directory_fd``, the open directory, is synced with the first ``sync``).
    """

    def __init__(self, directory, file_id, directory_fd, file_mode=0o640):
        self.file_id = file_id
        self.path = data_path(directory, file_id)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode)
        self._directory_fd = directory_fd  # None once the file's name is durable
        self.size = 0

    def append(self, data) -> int:
        """Write ``data`` at the end of the file; returns the offset it starts at.

        On failure the file is cut back to its previous size, so a failed
        append leaves nothing behind, and StorageFullError (disk full, quota,
        file size limit) or StorageError is raised.
        """
        start = self.size
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += os.pwrite(self._fd, view[written:], start + written)
        except OSError as exc:
            self._cut_back(start)
            if exc.errno in _FULL_ERRNOS:
                raise StorageFullError(
                    f"no space to write {len(view)} bytes to {self.path} ({exc.strerror}); "
                    "nothing from this write was stored: free disk space, then retry"
                ) from exc
            raise StorageError(f"write to {self.path} failed: {exc}; nothing was stored") from exc
        self.size = start + written
        return start

    def _cut_back(self, size):
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:  # the tail is then a torn record that recovery drops
            raise StorageError(f"could not undo a failed write to {self.path}: {exc}") from exc

    def read(self, offset, length) -> bytes:
        return os.pread(self._fd, length, offset)

    def sync(self):
        """fdatasync: everything appended so far survives a crash once this returns. Raises OSError."""
        if self._directory_fd is not None:
            os.fsync(self._directory_fd)  # a file created since the last fsync of its directory
            self._directory_fd = None
        os.fdatasync(self._fd)

    def fileno(self):
        return self._fd

    def close(self):
        os.close(self._fd)


class DataFiles:
    """The set of a shard's data files: closed files mapped read-only, plus the active file."""

    def __init__(self, directory, file_mode=0o640):
        self.directory = directory
        self.file_mode = file_mode
        # Held open, so that starting a data file takes one descriptor, and syncing its name none.
        self._directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._maps = {}  # file_id -> mmap, or None for an empty file
        self.sizes = {}  # file_id -> bytes, closed files
        self.active = None
        self.damage = None  # set when asked for a file it does not have: the key directory pointing there is damaged

    def open_closed(self, file_id):
        """Map an existing closed file for reading."""
        path = data_path(self.directory, file_id)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self._maps[file_id] = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) if size else None
        self.sizes[file_id] = size

    def view(self, file_id):
        """The mapped bytes of a closed file (empty for an empty file)."""
        try:
            mapped = self._maps[file_id]
        except KeyError:
            self._no_such_file(file_id)
        return memoryview(mapped) if mapped is not None else memoryview(b"")

    def read(self, file_id, offset, length):
        """``length`` bytes at ``offset``: a zero-copy view for closed files, bytes for the active file.

        Raises CorruptDataError for a file this shard does not have (see ``damage``).
        """
        active = self.active
        if active is not None and file_id == active.file_id:
            return active.read(offset, length)
        try:
            return memoryview(self._maps[file_id])[offset:offset + length]
        except KeyError:
            self._no_such_file(file_id)

    def _no_such_file(self, file_id):
        # Every file id the shard's key directory holds names one of these files: it was asked for another.
        self.damage = f"it points at data file {file_id}, which this shard does not have"
        raise CorruptDataError(f"the key directory is damaged: {self.damage}") from None

    def start_active(self, file_id):
        """Create a new, empty active file (never an existing one: closed files stay closed).

        Raises StorageError (StorageFullError when the disk is full) and leaves no active file
        if it cannot be created; a later call may succeed (out of descriptors is a passing shortage).
        """
        try:
            self.active = ActiveFile(self.directory, file_id, self._directory_fd, self.file_mode)
        except OSError as exc:
            error = StorageFullError if exc.errno in _FULL_ERRNOS else StorageError
            raise error(
                f"could not create the data file {data_path(self.directory, file_id)} ({exc.strerror}); "
                "nothing from this write was stored, and the next write tries again"
            ) from exc

    def close_active(self):
        """Map the active file read-only as a closed file and close its descriptor; returns its id.

        The caller syncs it first. Raises OSError (out of descriptors or address space) and then
        keeps the file as the active file, readable as before: it is never dropped half closed.
        """
        active = self.active
        self._maps[active.file_id] = mmap.mmap(active.fileno(), active.size, prot=mmap.PROT_READ)
        self.sizes[active.file_id] = active.size
        active.close()
        self.active = None
        return active.file_id

    def truncate(self, file_id, size):
        """Cut a closed file back to ``size`` bytes: only for the torn tail of the file a crashed
        shard was writing, at startup, and never beyond the last record any index pointed at."""
        mapped = self._maps.pop(file_id)
        if mapped is not None:
            mapped.close()
        fd = os.open(data_path(self.directory, file_id), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.open_closed(file_id)

    def remove(self, file_id):
        """Forget and delete a closed data file and its hint (an empty file left by a crash)."""
        mapped = self._maps.pop(file_id, None)
        if mapped is not None:
            mapped.close()
        self.sizes.pop(file_id, None)
        for path in (data_path(self.directory, file_id), hint_path(self.directory, file_id)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def forget(self, file_id):
        """Stop using a closed file (a merge is about to delete it): unmap it, keep it on disk."""
        mapped = self._maps.pop(file_id)
        self.sizes.pop(file_id)
        if mapped is not None:
            try:
                mapped.close()
            except BufferError:  # a view is still held somewhere; the map closes when it goes
                pass

    def closed_ids(self):
        return sorted(self._maps)

    def close(self):
        """Close everything. Views handed out must no longer be used."""
        if self.active is not None:
            self.active.close()
            self.active = None
        if self._directory_fd is not None:
            os.close(self._directory_fd)
            self._directory_fd = None
        for mapped in self._maps.values():
            if mapped is not None:
                try:
                    mapped.close()
                except BufferError:  # a caller still holds a view; the map closes when it goes
                    pass
        self._maps.clear()
