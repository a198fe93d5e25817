"""Hint files: exact layout, atomic write, and every way a hint is refused."""

import os
import struct

import pytest

from ferricd.storage.errors import CorruptDataError
from ferricd.storage.hints import ENTRY, TRAILER, HintBuilder, read_hint
from tests.storage.damage import flip_bits


@pytest.fixture
def hint(tmp_path):
    builder = HintBuilder()
    builder.add(11, 1, 0, 0, 40, 0)
    builder.add(22, 5, 99, 40, 31, 1)
    path = str(tmp_path / "000000001.hint")
    builder.write(path, data_file_bytes=71)
    return path


def test_round_trip_and_layout(hint):
    loaded = read_hint(hint, 71)
    assert list(loaded.entries()) == [(11, 1, 0, 0, 40, 0), (22, 5, 99, 40, 31, 1)]
    assert loaded.max_seq == 5 and loaded.count == 2
    data = open(hint, "rb").read()
    assert len(data) == 2 * ENTRY.size + TRAILER.size
    assert struct.unpack_from("<QQQIIB", data, 0) == (11, 1, 0, 0, 40, 0)
    assert not os.path.exists(hint + ".tmp")


def test_refused_when_the_data_file_size_differs(hint):
    with pytest.raises(CorruptDataError, match="data file has 72"):
        read_hint(hint, 72)


@pytest.mark.parametrize("offset", [0, 20, 33 + 12, 66 + 3, 66 + 35])
def test_refused_when_any_byte_is_damaged(hint, offset):
    flip_bits(hint, [offset])
    with pytest.raises(CorruptDataError):
        read_hint(hint, 71)


def test_refused_when_truncated(hint):
    os.truncate(hint, os.path.getsize(hint) - 1)
    with pytest.raises(CorruptDataError):
        read_hint(hint, 71)
