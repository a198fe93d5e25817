"""Storage errors only the daemon sees: a client meets them as StorageError (code STORAGE), if at all."""

from ferric_ipc.errors import StorageError


class DirectoryLockedError(StorageError):
    """Another process holds the lock on a shard's data directory."""


class CorruptDataError(StorageError):
    """On-disk data failed its checksum or structure check."""


class RotationPostponed(StorageError):
    """The full active file could not be closed (out of descriptors): it stays active, nothing was lost."""
