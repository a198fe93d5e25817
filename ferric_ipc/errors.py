"""Exceptions a FerricStore client raises (the daemon raises the same ones and a few of its own)."""


class FerricError(Exception):
    """Base class of every error this project raises on purpose."""

    #: The protocol error code, on errors that came from (or go into) an error reply.
    code: str
    #: The id of the request an error reply answered (None: a frame too broken to have one).
    request_id: int | None


class LimitError(FerricError, ValueError):
    """A key or value is larger than the configured limit; nothing was written."""


class StorageError(FerricError):
    """The storage engine could not complete an operation; the message says why."""


class StorageFullError(StorageError):
    """The disk (or a size limit on the file) refused a write; nothing from that write was kept."""


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

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
