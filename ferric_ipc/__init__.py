"""Client side of FerricStore: wire contracts, key rules, errors; the parts both client and daemon share."""

from ferric_ipc.client import Client, Lease, Lock, Pipeline, Transaction
from ferric_ipc.errors import (
    CommandError,
    CorruptDataError,
    DirectoryLockedError,
    FerricConnectionError,
    FerricError,
    FerricTimeoutError,
    LimitError,
    LockNotAcquired,
    ProtocolError,
    StorageError,
    StorageFullError,
)
from ferric_ipc.keys import MAX_KEY_BYTES, as_key, as_value, key_hash64

__all__ = [
    "Client",
    "CommandError",
    "CorruptDataError",
    "DirectoryLockedError",
    "FerricConnectionError",
    "FerricError",
    "FerricTimeoutError",
    "Lease",
    "LimitError",
    "Lock",
    "LockNotAcquired",
    "MAX_KEY_BYTES",
    "Pipeline",
    "ProtocolError",
    "StorageError",
    "StorageFullError",
    "Transaction",
    "as_key",
    "as_value",
    "key_hash64",
]
