"""SessionSerializer: exact round trips of every supported type, clear errors for the rest, never pickle."""

import datetime
import decimal
import math
import pickle
import uuid
import zoneinfo

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import Markup

from ferric_flask import SessionSerializationError, SessionSerializer

serializer = SessionSerializer()

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False), st.text(), st.binary(),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones(), st.just(datetime.timezone.utc)),
                 allow_imaginary=False),
    st.dates(), st.times(timezones=st.one_of(st.none(), st.just(datetime.timezone(datetime.timedelta(hours=-5))))),
    st.timedeltas(), st.uuids(), st.decimals(allow_nan=False), st.text().map(Markup),
)
hashables = st.one_of(st.integers(min_value=-(2**63), max_value=2**63), st.text(), st.uuids(), st.dates())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(), inner, max_size=4), st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    ),
    max_leaves=12,
)


def same(a, b):
    """Equal and of the same types all the way down (== alone lets 1 == 1.0 == True and tuple/list slip)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, datetime.datetime):
        return a == b and a.utcoffset() == b.utcoffset() and a.replace(tzinfo=None) == b.replace(tzinfo=None)
    return a == b


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), values, max_size=6))
def test_every_supported_value_round_trips_exactly(fields):
    data = serializer.dumps(fields)
    assert same(serializer.loads(data), fields)
    assert serializer.join(serializer.split(data)) == data
    assert serializer.encodes_to(fields, data)


@settings(max_examples=200, deadline=None)
@given(values)
def test_encoding_is_deterministic_so_an_unchanged_value_is_not_rewritten(value):
    once = serializer.dumps_value(value)
    assert serializer.dumps_value(serializer.loads_value(once)) == once


def test_zoned_datetimes_keep_their_zone_and_naive_ones_stay_naive():
    paris = datetime.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    back = serializer.loads_value(serializer.dumps_value(paris))
    assert back.tzinfo == zoneinfo.ZoneInfo("Europe/Paris") and back.utcoffset() == paris.utcoffset()
    naive = datetime.datetime(2024, 1, 1, 12, 0, 0, 5)
    assert serializer.loads_value(serializer.dumps_value(naive)).tzinfo is None


def test_special_decimals_round_trip():
    for text in ("NaN", "Infinity", "-Infinity", "-0", "1E+3", "0.10"):
        back = serializer.loads_value(serializer.dumps_value(decimal.Decimal(text)))
        assert str(back) == text


def test_sets_encode_the_same_whatever_their_iteration_order():
    assert serializer.dumps_value({"b", "a", "c"}) == serializer.dumps_value({"c", "a", "b"})
    assert serializer.dumps_value({3, 1, 2}) == serializer.dumps_value({1, 2, 3})


def test_nan_float_survives():
    assert math.isnan(serializer.loads_value(serializer.dumps_value(float("nan"))))


class Point:
    pass


@pytest.mark.parametrize("value, type_name", [
    (Point(), "Point"),
    ({"deep": [Point()]}, "Point"),
    ((1, Point()), "Point"),
    (2**70, "int"),
    (type("IntLike", (int,), {})(3), "IntLike"),
    (type("StrLike", (str,), {})("x"), "StrLike"),
])
def test_unsupported_values_name_the_field_and_the_type(value, type_name):
    with pytest.raises(SessionSerializationError) as caught:
        serializer.dumps({"ok": 1, "cart": value})
    assert "session['cart']" in str(caught.value) and type_name in str(caught.value)
    assert caught.value.field == "cart"


def test_a_failed_value_does_not_spoil_the_next_one():
    with pytest.raises(SessionSerializationError):
        serializer.dumps_value([1, 2, Point()])
    assert serializer.dumps_value([1, 2]) == msgpack.packb([1, 2])


def test_bytes_like_values_come_back_as_bytes():
    assert serializer.loads_value(serializer.dumps_value(bytearray(b"ab"))) == b"ab"
    assert type(serializer.loads_value(serializer.dumps_value(memoryview(b"ab")))) is bytes


def test_session_keys_must_be_str():
    with pytest.raises(SessionSerializationError, match="session keys must be str"):
        serializer.dumps({1: "a"})


def test_pickles_are_refused_not_unpickled():
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    for data in (pickle.dumps({"a": 1}), pickle.dumps(Boom())):
        with pytest.raises(ValueError):
            serializer.loads(data)


def test_unknown_extension_codes_and_non_maps_are_refused():
    with pytest.raises(ValueError, match="extension type 99"):
        serializer.loads(msgpack.packb({"a": msgpack.ExtType(99, b"")}))
    with pytest.raises(ValueError, match="msgpack map"):
        serializer.loads(msgpack.packb([1, 2]))


def test_field_order_of_the_store_does_not_make_a_change():
    data = serializer.join({"b": msgpack.packb(2), "a": msgpack.packb(1)})
    assert not serializer.encodes_to({"a": 1, "b": 2}, data)  # the fast check says "maybe changed" ...
    assert serializer.split(data) == serializer.dumps_fields({"a": 1, "b": 2})  # ... and the fields say no


def test_uuid_and_markup_and_bytes_keep_their_types():
    fields = {"id": uuid.UUID(int=7), "html": Markup("<i>x</i>"), "raw": b"\x00", "text": "<i>x</i>"}
    back = serializer.loads(serializer.dumps(fields))
    assert same(back, fields)
