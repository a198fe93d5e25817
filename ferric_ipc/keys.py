"""Key and value coercion, size limits and the stable 64-bit key hash shared by client and daemon."""

from collections.abc import Callable
from hashlib import blake2b

from ferric_ipc import native
from ferric_ipc.errors import LimitError
from ferric_ipc.index_layout import RESERVED_HASHES  # 0 and 1 mark empty and deleted slots

#: A key is at most 64 KiB once encoded (DESIGN: Keys and routing).
MAX_KEY_BYTES = 64 * 1024


_BYTES_LIKE = (bytes, bytearray, memoryview)
#: What ``as_key`` and ``as_value`` accept: text (encoded as UTF-8) or bytes.
Bytes = str | bytes | bytearray | memoryview


def as_key(key: Bytes, argument: str = "key") -> bytes:
    """Return ``key`` as bytes (str is UTF-8 encoded).

    Raises TypeError naming ``argument`` for any other type, and
    ``LimitError`` (a ValueError) when the encoded key exceeds MAX_KEY_BYTES.
    """
    data = _as_bytes(key, argument, "str or bytes")
    if len(data) > MAX_KEY_BYTES:
        raise LimitError(
            f"{argument} is {len(data)} bytes; keys are limited to {MAX_KEY_BYTES} bytes "
            "(hash long identifiers into a shorter key)"
        )
    return data


def as_value(value: Bytes, max_value_bytes: int, argument: str = "value") -> bytes:
    """Return ``value`` as bytes (str is UTF-8 encoded).

    Raises TypeError naming ``argument`` for any other type, and
    ``LimitError`` (a ValueError) when it exceeds ``max_value_bytes``.
    """
    data = _as_bytes(value, argument, "bytes or str")
    if len(data) > max_value_bytes:
        raise LimitError(
            f"{argument} is {len(data)} bytes; this store accepts at most {max_value_bytes} "
            "(raise max_value_bytes in the configuration, or store the value in pieces)"
        )
    return data


def _as_bytes(obj: object, argument: str, expected: str) -> bytes:
    if type(obj) is bytes:
        return obj
    if isinstance(obj, str):
        return obj.encode("utf-8")
    if isinstance(obj, _BYTES_LIKE):
        return bytes(obj)
    raise TypeError(f"{argument} must be {expected}, not {type(obj).__name__}")


_from_bytes = int.from_bytes  # bound once: the lookup costs a fifth of the hash on the read path


def key_hash64_python(key: bytes) -> int:
    """Stable 64-bit hash of an encoded key, identical in every process (unlike ``hash()``).

    The first 8 bytes of BLAKE2b-64 as a little-endian integer. Never returns 0
    or 1: those values mark empty and deleted index slots.
    """
    value = _from_bytes(blake2b(key, digest_size=8).digest(), "little")
    return value if value >= RESERVED_HASHES else value + RESERVED_HASHES


#: ``key_hash64_python``, computed in C when the extension is built (5x faster, same values).
key_hash64: Callable[[bytes], int] = (
    native.extension.key_hash64 if native.extension is not None else key_hash64_python
)
