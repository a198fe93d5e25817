"""The key layout (no two things share a key, whatever names and values hold) and the exact value codec."""

import datetime
import decimal
import enum
import uuid
import zoneinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferric_ipc.routing import hash_tag
from ferric_sqlalchemy.codec import ValueCodec
from ferric_sqlalchemy.errors import NotEncodable
from ferric_sqlalchemy.key_layout import KeyLayout
from ferric_sqlalchemy.tuple_keys import CodecValue, pack, unpack

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**200), max_value=2**200)
           | st.floats(allow_nan=False) | st.text() | st.binary() | st.uuids()
           | st.binary().map(CodecValue))
tuples = st.recursive(st.tuples(scalars), lambda inner: st.lists(inner | scalars, max_size=4).map(tuple),
                      max_leaves=8)


@settings(max_examples=60)
@given(tuples)
def test_tuple_encoding_round_trips(items):
    decoded = unpack(pack(items))
    assert decoded == items
    assert [type(x) for x in decoded] == [type(x) for x in items]


@settings(max_examples=60)
@given(tuples, tuples)
def test_different_tuples_never_share_an_encoding_or_a_prefix(a, b):
    if a != b or [type(x) for x in a] != [type(x) for x in b]:
        assert pack(a) != pack(b)
    if len(a) != len(b) and a[:len(b)] != b and b[:len(a)] != a:
        shorter, longer = sorted((pack(a), pack(b)), key=len)
        assert not longer.startswith(shorter)


def test_integers_and_floats_sort_like_numbers():
    numbers = [-(2**70), -(2**40), -300, -1, 0, 1, 255, 256, 2**40, 2**70]
    assert sorted(numbers, key=lambda n: pack((n,))) == numbers
    floats = [-1e300, -2.5, -0.0, 0.0, 1e-300, 3.0, 1e300]
    assert [unpack(key)[0] for key in sorted(pack((f,)) for f in floats)] == sorted(floats)


LAYOUT = KeyLayout("sa:", ValueCodec())
TENANT = b"t" * 16


def test_internal_keys_never_collide_with_tables_named_like_them():
    keys = {
        LAYOUT.table_generation(TENANT, "gen"), LAYOUT.table_generation(TENANT, "users"),
        LAYOUT.bulk_generation(TENANT, "users"), LAYOUT.table_generation(TENANT, "table"),
        LAYOUT.row_generation(TENANT, "users", (42,)), LAYOUT.row_generation(TENANT, "users", ("42",)),
        LAYOUT.row_generation(TENANT, "users:42", ()), LAYOUT.row_generation(TENANT, "users", (4, 2)),
        LAYOUT.row_generation(TENANT, "users", ("a:b",)), LAYOUT.row_generation(TENANT, "users", ("a", "b")),
        LAYOUT.row_generation(TENANT, "gen", (1,)), LAYOUT.region_generation("users"),
        LAYOUT.table_generation(b"u" * 16, "users"),
    }
    assert len(keys) == 13


def test_generations_of_a_tenant_share_a_shard_and_entries_spread():
    generations = [LAYOUT.table_generation(TENANT, "users"), LAYOUT.bulk_generation(TENANT, "a{b}c"),
                   LAYOUT.row_generation(TENANT, "x}{", ("{evil}",))]
    assert len({hash_tag(key) for key in generations}) == 1
    head = LAYOUT.entry_head(TENANT, "users", "get", b"s")
    entries = [LAYOUT.entry(head, pack(((i,),)), b"7").key for i in range(50)]  # the tag covers the selector
    assert len({hash_tag(key) for key in entries}) == 50
    assert LAYOUT.entry(head, pack(((1,),)), b"7").key != LAYOUT.entry(head, pack(((1,),)), b"8").key  # epoch
    entry = LAYOUT.entry(head, pack(((1,),)), b"7")
    assert hash_tag(entry.lease_key) == hash_tag(entry.key) == entry.tag
    assert entry.lease_key != entry.key
    assert unpack(entry.key[entry.key.index(b"}") + 1:]) == ("e", TENANT, "users", "get", b"s", (1,), b"7")
    assert unpack(entry.lease_key[entry.lease_key.index(b"}") + 1:]) == ("l", TENANT, "users", "get", b"s", (1,), b"7")


def test_the_layout_byte_by_byte():
    """The example docs/sqlalchemy.md shows."""
    key = LAYOUT.row_generation(b"\x01" * 16, "users", (42,))
    prefix, rest = key.split(b"{", 1)
    tag, tuple_bytes = rest.split(b"}", 1)
    assert prefix == b"sa:" and len(tag) == 16
    assert tuple_bytes == (b"\x02gen\x00" + b"\x01" + b"\x01" * 16 + b"\x00" + b"\x02row\x00" + b"\x02users\x00"
                           + b"\x05\x15\x2a\x00")
    assert unpack(tuple_bytes) == ("gen", b"\x01" * 16, "row", "users", (42,))


@pytest.mark.parametrize("prefix", ["a{", "}", b""])
def test_prefixes_that_would_break_routing_are_refused(prefix):
    with pytest.raises((ValueError, TypeError)):
        KeyLayout(prefix, ValueCodec())


class Color(enum.Enum):
    red = "r"
    blue = "b"


class Size(int, enum.Enum):
    small = 1


CODEC = ValueCodec({f"{Color.__module__}.{Color.__qualname__}": Color,
                    f"{Size.__module__}.{Size.__qualname__}": Size})

EXACT = [
    None, True, False, 0, -1, 2**63, -(2**63), 2**64 - 1, 2**64, -(2**100), 1.5, -0.0, float("inf"), "", "é\x00",
    b"", b"\x00\xff", [1, [2, [3]]], {"a": {"b": [None]}}, {1: "int key"}, (1, "tuple", (2,)),
    datetime.datetime(2024, 1, 2, 3, 4, 5, 6), datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc),
    datetime.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
    datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone(datetime.timedelta(hours=-3, minutes=-30))),
    datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone(datetime.timedelta(hours=1), "CET")),
    datetime.date(1, 1, 1), datetime.time(23, 59, 59, 999999), datetime.time(1, tzinfo=datetime.timezone.utc),
    datetime.timedelta(days=-2, microseconds=3), decimal.Decimal("1.10"), decimal.Decimal("-0E-8"),
    decimal.Decimal("NaN"), uuid.UUID(int=0), uuid.uuid4(), Color.red, Size.small,
]


@pytest.mark.parametrize("value", EXACT, ids=repr)
def test_values_round_trip_exactly(value):
    back = CODEC.loads(CODEC.dumps(value))
    assert type(back) is type(value)
    if isinstance(value, decimal.Decimal):
        assert str(back) == str(value)
    else:
        assert back == value
    if isinstance(value, (datetime.datetime, datetime.time)):
        assert back.tzinfo == value.tzinfo and back.fold == value.fold
        assert (back.tzname() if isinstance(back, datetime.datetime) else None) == \
               (value.tzname() if isinstance(value, datetime.datetime) else None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20)


@settings(max_examples=60)
@given(json_values)
def test_json_values_round_trip(value):
    assert CODEC.loads(CODEC.dumps(value)) == value


class Unregistered(enum.Enum):
    x = 1


class Markup(str):
    pass


class FixedTz(datetime.tzinfo):
    def utcoffset(self, dt):
        return datetime.timedelta(0)


@pytest.mark.parametrize("value", [
    object(), Unregistered.x, Markup("<b>"), {1, 2}, datetime.datetime(2024, 1, 1, tzinfo=FixedTz()),
], ids=["object", "unregistered-enum", "str-subclass", "set", "custom-tzinfo"])
def test_values_without_an_exact_form_are_refused(value):
    with pytest.raises(NotEncodable):
        CODEC.dumps(value)


def test_bytes_that_are_not_a_value_are_an_error_not_a_crash():
    with pytest.raises(ValueError):
        CODEC.loads(b"\xc1")
    with pytest.raises(ValueError):
        CODEC.loads(CODEC.dumps(Color.red).replace(b"Color", b"Colour"))
