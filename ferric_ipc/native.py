"""The optional C extension ``ferric_ipc._localread``, or None when it is absent, disabled or out of step.

It is built by ``pip install`` where a C compiler is available. Setting
``FERRIC_PURE_PYTHON=1`` in the environment turns it off (for comparison, or
to rule it out when chasing a problem); the pure-Python paths answer the same.
"""

import importlib
import importlib.util
import os
from collections.abc import Callable
from typing import Any, Protocol, cast

from ferric_ipc.file_layout import (
    ACCESS_CLOCK_AT,
    ACCESS_HEADER_BYTES,
    ACCESS_STATE_AT,
    FLAG_TOMBSTONE,
    RECORD_CRC,
    RECORD_FLAGS_AT,
    RECORD_HEADER_BYTES,
    RECORD_KEY_LEN_AT,
    RECORD_VALUE_LEN_AT,
)
from ferric_ipc.index_layout import (
    CAPACITY_AT,
    EMPTY,
    HEADER_BYTES,
    RESERVED_HASHES,
    SLOT_BYTES,
    SLOT_EXPIRE_AT,
    SLOT_FILE_ID_AT,
    SLOT_HASH_AT,
    SLOT_OFFSET_AT,
    SLOT_RECORD_LEN_AT,
    SLOT_SEQ_AT,
    STATE_AT,
    STATE_LIVE,
)

DISABLE_VARIABLE = "FERRIC_PURE_PYTHON"

#: Every layout fact the C code hard-codes; it is used only if it agrees with every one.
EXPECTED_LAYOUT = {
    "HEADER_BYTES": HEADER_BYTES,
    "STATE_AT": STATE_AT,
    "CAPACITY_AT": CAPACITY_AT,
    "STATE_LIVE": STATE_LIVE,
    "SLOT_BYTES": SLOT_BYTES,
    "SLOT_SEQ_AT": SLOT_SEQ_AT,
    "SLOT_FILE_ID_AT": SLOT_FILE_ID_AT,
    "SLOT_HASH_AT": SLOT_HASH_AT,
    "SLOT_OFFSET_AT": SLOT_OFFSET_AT,
    "SLOT_RECORD_LEN_AT": SLOT_RECORD_LEN_AT,
    "SLOT_EXPIRE_AT": SLOT_EXPIRE_AT,
    "EMPTY": EMPTY,
    "RESERVED_HASHES": RESERVED_HASHES,
    "RECORD_HEADER_BYTES": RECORD_HEADER_BYTES,
    "RECORD_CRC_BYTES": RECORD_CRC.size,
    "RECORD_FLAGS_AT": RECORD_FLAGS_AT,
    "RECORD_KEY_LEN_AT": RECORD_KEY_LEN_AT,
    "RECORD_VALUE_LEN_AT": RECORD_VALUE_LEN_AT,
    "FLAG_TOMBSTONE": FLAG_TOMBSTONE,
    "ACCESS_HEADER_BYTES": ACCESS_HEADER_BYTES,
    "ACCESS_STATE_AT": ACCESS_STATE_AT,
    "ACCESS_CLOCK_AT": ACCESS_CLOCK_AT,
}


class Extension(Protocol):
    """What ``_localread`` offers (its docstrings say more)."""

    LAYOUT: dict[str, int]

    def lookup(self, index_map: object, key: bytes, key_hash: int, now_ms: int, views: dict[int, memoryview]) -> Any:
        """``(value, expire_at_ms)``, or one of the answers given to ``configure``."""

    def lookup_many(self, keys: list[bytes], shard_count: int, now_ms: int,
                    state_of: Callable[[int], tuple[Any, dict[int, memoryview], Any, int] | None],
                    values: bool = False) -> list[Any]:
        """``lookup`` of every key in its shard's table, each hit marked used in the shard's access times;
        with ``values``, hits as their values and missing keys as None."""

    def key_hash64(self, key: bytes) -> int:
        """As ``keys.key_hash64_python``."""

    def crc32(self, data: bytes) -> int:
        """As ``zlib.crc32``."""

    def configure(self, missing: object, fallback: object, slow: object) -> None:
        """The objects ``lookup`` returns besides a hit."""

    def map_window(self, fd: int, length: int) -> Any:
        """A read-only buffer of ``length`` bytes of the file at ``fd``, which may extend past its end."""


def disabled() -> bool:
    """Whether FERRIC_PURE_PYTHON turns the extension off in this process."""
    return os.environ.get(DISABLE_VARIABLE, "") not in ("", "0")


def load() -> Extension | None:
    """The extension module, or None."""
    if disabled():
        return None
    try:
        module = cast(Extension, importlib.import_module("ferric_ipc._localread"))
    except ImportError:
        return None
    if module.LAYOUT != EXPECTED_LAYOUT:
        return None  # built from another version of the layouts: never read with it
    return module


extension = load()


def absent_reason() -> str | None:
    """Why ``extension`` is None, saying what to do about it; None when it is loaded."""
    if extension is not None:
        return None
    if disabled():
        return f"turned off by {DISABLE_VARIABLE}"
    if importlib.util.find_spec("ferric_ipc._localread") is None:
        return "the C extension was not built: install gcc and python3-dev, then reinstall ferricstore"
    return "the C extension was built from another version of ferricstore: reinstall it"
