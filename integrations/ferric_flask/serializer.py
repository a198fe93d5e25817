"""SessionSerializer: session fields to msgpack and back, with explicit extension types and never pickle."""

import datetime
import decimal
import threading
import uuid
import zoneinfo

import msgpack
from markupsafe import Markup

from ferric_flask.errors import SessionSerializationError

# Extension type codes: part of the stored format, so a code is never reused for another type.
EXT_DATETIME = 1  # packb([isoformat, zoneinfo key or None])
EXT_DATE = 2  # isoformat, UTF-8
EXT_TIME = 3  # isoformat, UTF-8 (with its UTC offset when it has one)
EXT_TIMEDELTA = 4  # packb([days, seconds, microseconds])
EXT_UUID = 5  # the 16 bytes
EXT_DECIMAL = 6  # str(), UTF-8 (NaN and Infinity included)
EXT_MARKUP = 7  # the text, UTF-8
EXT_TUPLE = 8  # packb([items])
EXT_SET = 9  # a msgpack array of the items, ordered by their encodings: equal sets encode equally in every process
EXT_FROZENSET = 10  # as EXT_SET

#: What a session value may hold; anything else fails at save with SessionSerializationError.
SUPPORTED_TYPES = (
    "None, bool, int (64-bit), float, str, bytes, list, dict, tuple, set, frozenset, datetime.datetime, "
    "datetime.date, datetime.time, datetime.timedelta, uuid.UUID, decimal.Decimal, markupsafe.Markup"
)


class SessionSerializer:
    """Encodes a session as one msgpack map ``{field: value}`` and each value on its own.

    A stored session is a msgpack map with str keys whose values are this
    class's encodings, so the shard can set and delete single fields of it
    (``Client.patch``) without decoding them. ``dumps_value``/``loads_value``
    handle one field, ``dumps``/``loads`` a whole map, and ``split`` cuts a
    stored map into each field's encoded bytes, which is what a save compares
    against to find the fields a request changed, nested changes included.

    Types outside ``SUPPORTED_TYPES``, subclasses included (other than
    ``Markup``), raise SessionSerializationError rather than coming back as
    something else; the one exception is bytes-like values (bytearray,
    memoryview), which msgpack stores as bytes and which come back as bytes.
    """

    def __init__(self):
        self._local = threading.local()
        self._encoders = {
            datetime.datetime: self._encode_datetime,
            datetime.date: lambda d: msgpack.ExtType(EXT_DATE, d.isoformat().encode()),
            datetime.time: lambda t: msgpack.ExtType(EXT_TIME, t.isoformat().encode()),
            datetime.timedelta: lambda d: msgpack.ExtType(
                EXT_TIMEDELTA, msgpack.packb([d.days, d.seconds, d.microseconds])
            ),
            uuid.UUID: lambda u: msgpack.ExtType(EXT_UUID, u.bytes),
            decimal.Decimal: lambda d: msgpack.ExtType(EXT_DECIMAL, str(d).encode()),
            Markup: lambda m: msgpack.ExtType(EXT_MARKUP, str(m).encode()),
            tuple: lambda t: msgpack.ExtType(EXT_TUPLE, self._pack_nested(list(t))),
            set: lambda s: msgpack.ExtType(EXT_SET, self._pack_set(s)),
            frozenset: lambda s: msgpack.ExtType(EXT_FROZENSET, self._pack_set(s)),
        }
        self._decoders = {
            EXT_DATETIME: self._decode_datetime,
            EXT_DATE: lambda data: datetime.date.fromisoformat(data.decode()),
            EXT_TIME: lambda data: datetime.time.fromisoformat(data.decode()),
            EXT_TIMEDELTA: lambda data: datetime.timedelta(*msgpack.unpackb(data)),
            EXT_UUID: lambda data: uuid.UUID(bytes=data),
            EXT_DECIMAL: lambda data: decimal.Decimal(data.decode()),
            EXT_MARKUP: lambda data: Markup(data.decode()),
            EXT_TUPLE: lambda data: tuple(self.loads_value(data)),
            EXT_SET: lambda data: set(self.loads_value(data)),
            EXT_FROZENSET: lambda data: frozenset(self.loads_value(data)),
        }

    # -- one value --------------------------------------------------------------------------

    def dumps_value(self, value, field="?"):
        """The msgpack encoding of one session value; SessionSerializationError names ``field`` if it cannot."""
        try:
            return self._pack(value)
        except SessionSerializationError as exc:
            raise SessionSerializationError(
                f"session[{field!r}]: {exc}; a session stores {SUPPORTED_TYPES}. Store a supported equivalent "
                "(e.g. str(value)) instead",
                field=field, type_name=exc.type_name,
            ) from None
        except ValueError as exc:  # e.g. a str or bytes too large for msgpack
            raise SessionSerializationError(f"session[{field!r}] cannot be stored: {exc}", field=field) from None

    def loads_value(self, data):
        """The value ``dumps_value`` encoded as ``data``."""
        return msgpack.unpackb(data, ext_hook=self._ext_hook, raw=False, strict_map_key=False)

    # -- a whole session -----------------------------------------------------------------------

    def dumps(self, fields):
        """One msgpack map of ``fields`` (str keys), as the shard stores a session."""
        return self.join(self.dumps_fields(fields))

    def dumps_fields(self, fields):
        """``{field: encoded value}`` of ``fields``, whose keys must be str."""
        encoded = {}
        for field, value in fields.items():
            if type(field) is not str:
                raise SessionSerializationError(
                    f"session key {field!r} is a {type(field).__name__}; session keys must be str",
                    field=field, type_name=type(field).__name__,
                )
            encoded[field] = self.dumps_value(value, field)
        return encoded

    def encodes_to(self, fields, data):
        """True if ``dumps(fields)`` is ``data``, checked with one pack of the whole dict.

        The fast way to see that a request changed nothing. A False may also
        mean that ``data`` encodes the same fields in another order; callers
        then compare field by field (``split``).
        """
        try:
            return self._pack(fields) == data
        except (TypeError, ValueError):
            return False  # dumps_fields will name the field that cannot be stored

    def loads(self, data):
        """The ``{field: value}`` dict of a stored session map."""
        fields = self.loads_value(data)
        if type(fields) is not dict:
            raise ValueError(f"a stored session is a msgpack map, not {type(fields).__name__}")
        return fields

    def split(self, data):
        """``{field: encoded value}`` of a stored session map, cut out of ``data`` without decoding the values."""
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(data), 1))
        unpacker.feed(data)
        count = unpacker.read_map_header()
        fields = {}
        for _ in range(count):
            field = unpacker.unpack()
            start = unpacker.tell()
            unpacker.skip()
            fields[field] = data[start:unpacker.tell()]
        if unpacker.tell() != len(data):
            raise ValueError("trailing bytes after a stored session map")
        return fields

    @staticmethod
    def join(encoded):
        """The msgpack map of already encoded field values: what ``split`` takes apart."""
        parts = [_map_header(len(encoded))]
        for field, data in encoded.items():
            parts.append(msgpack.packb(field))
            parts.append(data)
        return b"".join(parts)

    # -- extension types ------------------------------------------------------------------------

    def _pack(self, value):
        # One Packer per thread (building one costs more than packing a small value). Extension payloads are
        # packed by _pack_nested, never by this Packer, because _default runs in the middle of its pack().
        packer = getattr(self._local, "packer", None)
        if packer is None:
            packer = self._local.packer = self._new_packer()
        try:
            return packer.pack(value)
        except BaseException:
            packer.reset()  # a failed pack leaves partial output in the buffer
            raise

    def _pack_nested(self, value):
        return self._new_packer().pack(value)

    def _pack_set(self, items):
        # Iteration order depends on the process's hash seed; the order of the encodings does not.
        packer = self._new_packer()
        encoded = sorted(packer.pack(item) for item in items)
        return _array_header(len(encoded)) + b"".join(encoded)

    def _new_packer(self):
        # strict_types: a tuple or a str/int/dict subclass reaches _default instead of passing as its base type.
        return msgpack.Packer(default=self._default, use_bin_type=True, strict_types=True)

    def _default(self, value):
        encoder = self._encoders.get(type(value))
        if type(value) is int:  # msgpack hands over the ints it cannot hold
            raise SessionSerializationError(f"cannot store {value}: ints must fit in 64 bits", type_name="int")
        if encoder is None:
            kind = type(value)
            raise SessionSerializationError(f"cannot store {kind.__module__}.{kind.__qualname__}",
                                            type_name=f"{kind.__module__}.{kind.__qualname__}")
        return encoder(value)

    def _ext_hook(self, code, data):
        decoder = self._decoders.get(code)
        if decoder is None:
            raise ValueError(f"unknown msgpack extension type {code} in a stored session")
        return decoder(data)

    @staticmethod
    def _encode_datetime(value):
        zone = value.tzinfo.key if isinstance(value.tzinfo, zoneinfo.ZoneInfo) else None
        return msgpack.ExtType(EXT_DATETIME, msgpack.packb([value.isoformat(), zone]))

    @staticmethod
    def _decode_datetime(data):
        text, zone = msgpack.unpackb(data)
        value = datetime.datetime.fromisoformat(text)
        if zone is not None:
            # The ISO text kept the UTC offset; the zone name gives back the same instant in the same zone.
            value = value.astimezone(zoneinfo.ZoneInfo(zone))
        return value


def _array_header(count):
    if count < 16:
        return bytes([0x90 | count])
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _map_header(count):
    if count < 16:
        return bytes([0x80 | count])
    if count < 0x10000:
        return b"\xde" + count.to_bytes(2, "big")
    return b"\xdf" + count.to_bytes(4, "big")
