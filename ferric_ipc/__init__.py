"""Client side of FerricStore: wire contracts, key rules, errors; the parts both client and daemon share."""

from ferric_ipc.errors import (
    CorruptDataError,
    DirectoryLockedError,
    FerricError,
    LimitError,
    StorageError,
    StorageFullError,
)
from ferric_ipc.keys import MAX_KEY_BYTES, as_key, as_value, key_hash64

__all__ = [
    "CorruptDataError",
    "DirectoryLockedError",
    "FerricError",
    "LimitError",
    "MAX_KEY_BYTES",
    "StorageError",
    "StorageFullError",
    "as_key",
    "as_value",
    "key_hash64",
]
