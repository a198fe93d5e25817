"""Field-level edits of a msgpack map value (the ``patch`` op) that never decode the field values."""

import struct

import msgpack

from ferric_ipc.errors import CommandError

_MAP16 = struct.Struct(">BH")
_MAP32 = struct.Struct(">BI")


def split_fields(value: bytes) -> dict[str, bytes]:
    """``{field: encoded value}`` of a value that is exactly one msgpack map with str keys.

    Raises CommandError WRONG_TYPE for anything else. Each field's bytes are
    kept as stored, so extension types the shard knows nothing of survive.
    """
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max(len(value), 1))
    unpacker.feed(value)
    fields = {}
    try:
        for _ in range(unpacker.read_map_header()):
            field = unpacker.unpack()
            if not isinstance(field, str):
                raise ValueError(f"a field name is {type(field).__name__}, not str")
            start = unpacker.tell()
            unpacker.skip()
            fields[field] = value[start:unpacker.tell()]
        if unpacker.tell() != len(value):
            raise ValueError("bytes follow the map")
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.OutOfData) as exc:
        raise CommandError(
            f"patch needs the stored value to be one msgpack map with str keys ({exc}); "
            "write it with patch or set a msgpack map first, or delete the key",
            "WRONG_TYPE",
        ) from None
    return fields


def check_field_value(field: str, encoded: bytes) -> None:
    """Refuse ``encoded`` unless it is exactly one msgpack object (what ``join_fields`` splices in)."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(encoded), 1))
    unpacker.feed(encoded)
    try:
        unpacker.skip()
        whole = unpacker.tell() == len(encoded)
    except (ValueError, msgpack.UnpackException, msgpack.OutOfData):
        whole = False
    if not whole:
        raise CommandError(f"the value for field {field!r} is not exactly one msgpack object")


def join_fields(fields: dict[str, bytes]) -> bytes:
    """The msgpack map of ``fields`` whose values are already encoded."""
    count = len(fields)
    if count < 16:
        header = bytes((0x80 | count,))
    elif count < 2**16:
        header = _MAP16.pack(0xDE, count)
    else:
        header = _MAP32.pack(0xDF, count)
    return b"".join([header, *(msgpack.packb(field) + encoded for field, encoded in fields.items())])
