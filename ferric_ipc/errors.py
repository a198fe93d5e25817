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


class FerricConnectionError(FerricError, ConnectionError):
    """No daemon is reachable at the run directory."""


class FerricTimeoutError(FerricError, TimeoutError):
    """A shard did not answer within the client's timeout."""


class LockNotAcquired(FerricTimeoutError):
    """``Client.lock`` waited its ``wait_ms`` and another holder still had the lease."""


class ProtocolError(FerricError):
    """A frame could not be understood (wrong version, malformed reply or request)."""


class CommandError(FerricError):
    """The daemon refused a well-formed request; ``code`` says why (BAD_ARGS, NOT_INTEGER, WRONG_SHARD)."""

    code = "BAD_ARGS"

    def __init__(self, message, code=None):
        super().__init__(message)
        if code is not None:
            self.code = code
