"""Tuple encoding of key parts (FoundationDB's tuple layer, the subset keys need): injective and prefix-free.

Every element starts with a type code, and variable-length elements end with
0x00 (a 0x00 inside them is written 0x00 0xFF), so no two different tuples
encode to the same bytes and no encoded tuple is a prefix of another: a table
name, a primary key or a hash can contain any byte without colliding with a
neighbouring part. docs/sqlalchemy.md lists the codes byte by byte.
"""

import struct
import uuid

NULL = 0x00
BYTES = 0x01
STRING = 0x02
NESTED = 0x05
INT_ZERO = 0x14  # 0x0C..0x13 negative ints of 8..1 bytes, 0x15..0x1C positive ints of 1..8 bytes
NEG_INT_LONG = 0x0B  # negative ints past 8 bytes: one length byte (ones' complement), then the bytes
POS_INT_LONG = 0x1D  # positive ints past 8 bytes: one length byte, then the bytes
DOUBLE = 0x21
FALSE = 0x26
TRUE = 0x27
UUID = 0x30
#: Not in FoundationDB's table: a value with no tuple type, as the bytes of the value codec (ferric_sqlalchemy.codec).
CODEC_VALUE = 0x40

_ESCAPED_NULL = b"\x00\xff"
_DOUBLE = struct.Struct(">d")
_U64 = struct.Struct(">Q")


class CodecValue(bytes):
    """Bytes that stand for a value the tuple has no type for (a Decimal or a date key), encoded by the value codec."""


def pack(items: tuple) -> bytes:
    """The encoding of a tuple of None, bool, int, float, str, bytes, UUID, CodecValue and nested tuples."""
    out = bytearray()
    for item in items:
        _encode(out, item, nested=False)
    return bytes(out)


def _encode(out: bytearray, item, nested: bool) -> None:
    kind = type(item)
    if item is None:
        out += _ESCAPED_NULL if nested else b"\x00"
    elif kind is bool:
        out.append(TRUE if item else FALSE)
    elif kind is int:
        _encode_int(out, item)
    elif isinstance(item, str):  # str, or a subclass such as SQLAlchemy's quoted_name
        out.append(STRING)
        out += item.encode("utf-8").replace(b"\x00", _ESCAPED_NULL)
        out.append(NULL)
    elif kind is CodecValue:
        out.append(CODEC_VALUE)
        out += bytes(item).replace(b"\x00", _ESCAPED_NULL)
        out.append(NULL)
    elif kind is bytes:
        out.append(BYTES)
        out += item.replace(b"\x00", _ESCAPED_NULL)
        out.append(NULL)
    elif kind is float:
        bits = _U64.unpack(_DOUBLE.pack(item))[0]
        # Flip so that the bytes sort like the numbers: every bit of a negative, the sign bit of the rest.
        bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | (1 << 63)
        out.append(DOUBLE)
        out += _U64.pack(bits)
    elif kind is uuid.UUID:
        out.append(UUID)
        out += item.bytes
    elif kind is tuple:
        out.append(NESTED)
        for element in item:
            _encode(out, element, nested=True)
        out.append(NULL)
    else:
        raise TypeError(f"a key part must be None, bool, int, float, str, bytes, UUID or tuple, not {kind.__name__}")


def _encode_int(out: bytearray, value: int) -> None:
    if value == 0:
        out.append(INT_ZERO)
        return
    size = (abs(value).bit_length() + 7) // 8
    if value > 0:
        data = value.to_bytes(size, "big")
        if size <= 8:
            out.append(INT_ZERO + size)
        else:
            out.append(POS_INT_LONG)
            out.append(size)  # a key part over 255 bytes of integer is refused by to_bytes below
        out += data
    else:
        data = (value + (1 << (8 * size)) - 1).to_bytes(size, "big")  # ones' complement
        if size <= 8:
            out.append(INT_ZERO - size)
        else:
            out.append(NEG_INT_LONG)
            out.append(size ^ 0xFF)
        out += data


def unpack(data: bytes) -> tuple:
    """The tuple ``pack`` encoded into ``data`` (the inverse of ``pack``); ValueError on anything else."""
    items, position = _decode_sequence(data, 0, nested=False)
    if position != len(data):
        raise ValueError(f"trailing bytes at {position}")
    return tuple(items)


def _decode_sequence(data: bytes, position: int, nested: bool):
    items: list = []
    while position < len(data):
        code = data[position]
        if nested and code == NULL:
            if position + 1 < len(data) and data[position + 1] == 0xFF:
                items.append(None)
                position += 2
                continue
            return items, position + 1
        item, position = _decode_one(data, position)
        items.append(item)
    if nested:
        raise ValueError("unterminated nested tuple")
    return items, position


def _decode_one(data: bytes, position: int):
    code = data[position]
    position += 1
    if code == NULL:
        return None, position
    if code in (BYTES, STRING, CODEC_VALUE):
        raw, position = _decode_escaped(data, position)
        if code == STRING:
            return raw.decode("utf-8"), position
        return (CodecValue(raw) if code == CODEC_VALUE else raw), position
    if code == NESTED:
        items, position = _decode_sequence(data, position, nested=True)
        return tuple(items), position
    if INT_ZERO - 8 <= code <= INT_ZERO + 8:
        size = abs(code - INT_ZERO)
        raw = data[position:position + size]
        if len(raw) != size:
            raise ValueError("truncated integer")
        value = int.from_bytes(raw, "big")
        return (value if code >= INT_ZERO else value - (1 << (8 * size)) + 1), position + size
    if code in (POS_INT_LONG, NEG_INT_LONG):
        size = data[position] if code == POS_INT_LONG else data[position] ^ 0xFF
        raw = data[position + 1:position + 1 + size]
        value = int.from_bytes(raw, "big")
        value = value if code == POS_INT_LONG else value - (1 << (8 * size)) + 1
        return value, position + 1 + size
    if code == DOUBLE:
        bits = _U64.unpack(data[position:position + 8])[0]
        bits = bits ^ (1 << 63) if bits >> 63 else bits ^ 0xFFFFFFFFFFFFFFFF
        return _DOUBLE.unpack(_U64.pack(bits))[0], position + 8
    if code in (FALSE, TRUE):
        return code == TRUE, position
    if code == UUID:
        return uuid.UUID(bytes=bytes(data[position:position + 16])), position + 16
    raise ValueError(f"unknown type code 0x{code:02x} at {position - 1}")


def _decode_escaped(data: bytes, position: int):
    out = bytearray()
    while True:
        end = data.index(b"\x00", position)
        out += data[position:end]
        if end + 1 < len(data) and data[end + 1] == 0xFF:
            out.append(0)
            position = end + 2
        else:
            return bytes(out), end + 1
