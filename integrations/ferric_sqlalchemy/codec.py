"""Values to bytes and back, exactly: msgpack with explicit extension types, never pickle.

msgpack carries None, bool, int (64-bit), float, str, bytes, list and dict as
they are. Everything else a database row can hold has its own extension type
(codes below), so a value comes back equal and of the same type: a datetime
with the same tzinfo, a Decimal with the same digits, a tuple as a tuple.
Enum members are named by class and member, and decoded only for classes
registered by the cache (the Enum types of cacheable tables), so no bytes in
the cache can make this process import or build an arbitrary class. A value
of any other type raises NotEncodable, and the result holding it is simply
not cached.
"""

import datetime
import decimal
import enum
import uuid
import zoneinfo

import msgpack

from ferric_sqlalchemy.errors import NotEncodable

EXT_DATETIME = 1
EXT_DATE = 2
EXT_TIME = 3
EXT_TIMEDELTA = 4
EXT_DECIMAL = 5
EXT_UUID = 6
EXT_BIGINT = 7
EXT_TUPLE = 8
EXT_ENUM = 9

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


def _tz_state(tz):
    """A tzinfo as plain data: None, "utc", a zone key, or a fixed offset with its name."""
    if tz is None:
        return None
    if tz is datetime.timezone.utc:
        return "utc"
    if type(tz) is zoneinfo.ZoneInfo and tz.key is not None:
        return ["zone", tz.key]
    if type(tz) is datetime.timezone:
        offset = tz.utcoffset(None)
        return ["offset", offset.days, offset.seconds, offset.microseconds, tz.tzname(None)]
    raise NotEncodable(f"tzinfo {tz!r} ({type(tz).__name__}) has no exact form; use datetime.timezone or zoneinfo")


def _tz_from_state(state):
    if state is None:
        return None
    if state == "utc":
        return datetime.timezone.utc
    if state[0] == "zone":
        return zoneinfo.ZoneInfo(state[1])
    _, days, seconds, microseconds, name = state
    offset = datetime.timedelta(days=days, seconds=seconds, microseconds=microseconds)
    # timezone() names an unnamed offset "UTC+02:00"; pass the name only when it differs, so equality holds.
    unnamed = datetime.timezone(offset)
    return unnamed if name == unnamed.tzname(None) else datetime.timezone(offset, name)


class ValueCodec:
    """``dumps``/``loads`` for row values; ``enum_classes`` maps "module.QualName" to the Enum classes it may decode."""

    def __init__(self, enum_classes=None):
        self.enum_classes = enum_classes if enum_classes is not None else {}
        # Decoded enum members by payload (a row holds the same few again and again); checked against
        # enum_classes on every use, so a class replaced in the catalog is never served from here.
        self._members: dict[bytes, tuple[str, enum.Enum]] = {}

    def dumps(self, value) -> bytes:
        """``value`` as bytes; NotEncodable if anything in it has no exact form."""
        try:
            return msgpack.packb(value, default=self._encode_ext, use_bin_type=True, strict_types=True)
        except NotEncodable:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise NotEncodable(str(exc)) from None

    def loads(self, data: bytes):
        """The value ``dumps`` encoded (ValueError if the bytes are not such a value)."""
        try:
            return msgpack.unpackb(data, ext_hook=self._decode_ext, raw=False, strict_map_key=False)
        except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
            raise ValueError(f"not a cached value: {exc}") from None

    # strict_types sends everything but the exact builtins here, subclasses too (a str Enum, a Markup).
    def _encode_ext(self, value):
        kind = type(value)
        if kind is datetime.datetime:
            state = [value.year, value.month, value.day, value.hour, value.minute, value.second,
                     value.microsecond, value.fold, _tz_state(value.tzinfo)]
            return msgpack.ExtType(EXT_DATETIME, msgpack.packb(state))
        if kind is datetime.date:
            return msgpack.ExtType(EXT_DATE, msgpack.packb([value.year, value.month, value.day]))
        if kind is datetime.time:
            state = [value.hour, value.minute, value.second, value.microsecond, value.fold, _tz_state(value.tzinfo)]
            return msgpack.ExtType(EXT_TIME, msgpack.packb(state))
        if kind is datetime.timedelta:
            return msgpack.ExtType(EXT_TIMEDELTA, msgpack.packb([value.days, value.seconds, value.microseconds]))
        if kind is decimal.Decimal:
            return msgpack.ExtType(EXT_DECIMAL, str(value).encode("ascii"))
        if kind is uuid.UUID:
            return msgpack.ExtType(EXT_UUID, value.bytes)
        if kind is int:
            # msgpack's own int covers int64..uint64; anything wider travels as decimal text.
            if value < _INT64_MIN or value > _UINT64_MAX:
                return msgpack.ExtType(EXT_BIGINT, str(value).encode("ascii"))
            return value
        if kind is tuple:
            return msgpack.ExtType(EXT_TUPLE, self.dumps(list(value)))
        if isinstance(value, enum.Enum):
            name = f"{kind.__module__}.{kind.__qualname__}"
            if self.enum_classes.get(name) is not kind:
                raise NotEncodable(f"enum {name} is not the enum_class of a cacheable column")
            return msgpack.ExtType(EXT_ENUM, msgpack.packb([name, value.name]))
        raise NotEncodable(f"{kind.__module__}.{kind.__qualname__} values have no exact msgpack form here")

    def _decode_ext(self, code, data):
        if code == EXT_DATETIME:
            *parts, fold, tz = msgpack.unpackb(data)
            return datetime.datetime(*parts, tzinfo=_tz_from_state(tz), fold=fold)
        if code == EXT_DATE:
            return datetime.date(*msgpack.unpackb(data))
        if code == EXT_TIME:
            *parts, fold, tz = msgpack.unpackb(data)
            return datetime.time(*parts, tzinfo=_tz_from_state(tz), fold=fold)
        if code == EXT_TIMEDELTA:
            days, seconds, microseconds = msgpack.unpackb(data)
            return datetime.timedelta(days=days, seconds=seconds, microseconds=microseconds)
        if code == EXT_DECIMAL:
            return decimal.Decimal(data.decode("ascii"))
        if code == EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == EXT_BIGINT:
            return int(data.decode("ascii"))
        if code == EXT_TUPLE:
            return tuple(self.loads(data))
        if code == EXT_ENUM:
            known = self._members.get(data)
            if known is not None and type(known[1]) is self.enum_classes.get(known[0]):
                return known[1]
            name, member_name = msgpack.unpackb(data)
            member = self.enum_classes[name][member_name]
            if len(self._members) < 10_000:
                self._members[data] = (name, member)
            return member
        raise ValueError(f"unknown extension type {code}")
