"""Client side of FerricStore: wire contracts, key rules, errors; the parts both client and daemon share.

``Client`` and the classes around it are loaded on first use (PEP 562), so
importing a contract module (``ferric_ipc.protocol``, the layouts, ``keys``,
``routing``, ``errors``) never loads pyzmq or the client.
"""

from typing import TYPE_CHECKING

from ferric_ipc.errors import (
    CommandError,
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

if TYPE_CHECKING:
    from ferric_ipc.client import Client, Lease, Lock, Pipeline, Submitted, Transaction

_CLIENT_NAMES = frozenset({"Client", "Lease", "Lock", "Pipeline", "Submitted", "Transaction"})

__all__ = [
    "Client",
    "CommandError",
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
    "Submitted",
    "Transaction",
    "as_key",
    "as_value",
    "key_hash64",
]


def __getattr__(name: str) -> object:
    if name in _CLIENT_NAMES:
        from ferric_ipc import client

        value = getattr(client, name)
        globals()[name] = value  # found directly from now on
        return value
    raise AttributeError(f"module 'ferric_ipc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
