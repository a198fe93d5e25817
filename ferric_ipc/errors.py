"""Exceptions raised by FerricStore clients and by the storage they talk to."""


class FerricError(Exception):
    """Base class of every error this project raises on purpose."""


class LimitError(FerricError, ValueError):
    """A key or value is larger than the configured limit; nothing was written."""


class StorageError(FerricError):
    """The storage engine could not complete an operation; the message says why."""


class StorageFullError(StorageError):
    """The disk (or a size limit on the file) refused a write; nothing from that write was kept."""


class DirectoryLockedError(StorageError):
    """Another process holds the lock on a shard's data directory."""


class CorruptDataError(StorageError):
    """On-disk data failed its checksum or structure check."""
