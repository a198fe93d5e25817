"""The byte layouts: the offsets derived from the struct formats match the documented tables and the C extension."""

import re
import struct
from pathlib import Path

import pytest

from ferric_ipc import file_layout, index_layout, native

C_SOURCE = Path(native.__file__).with_name("_localread.c")
# The C spells one name differently; everything else is spelled the same on both sides.
C_NAMES = {"EMPTY": "HASH_EMPTY"}


def c_defines():
    """``{name: int}`` for every integer ``#define`` in _localread.c."""
    found = {}
    for name, value in re.findall(r"^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", C_SOURCE.read_text(), re.M):
        found[name] = int(value, 0)
    return found


@pytest.mark.parametrize("name", sorted(native.EXPECTED_LAYOUT))
def test_the_c_source_states_every_layout_fact_as_python_does(name):
    defines = c_defines()
    c_name = C_NAMES.get(name, name)
    assert c_name in defines, f"_localread.c has no #define {c_name}"
    assert defines[c_name] == native.EXPECTED_LAYOUT[name], name


def test_the_c_code_uses_no_slot_or_record_offset_the_check_leaves_out():
    # Any *_AT offset the C code defines must be one native.py compares.
    offsets = {name for name in c_defines() if name.endswith("_AT")}
    assert offsets <= set(native.EXPECTED_LAYOUT), sorted(offsets - set(native.EXPECTED_LAYOUT))


def test_the_built_extension_exports_the_same_layout():
    if native.extension is None:
        pytest.skip("the C extension is not built (or FERRIC_PURE_PYTHON is set)")
    assert native.extension.LAYOUT == native.EXPECTED_LAYOUT


def documented_offsets(text, first_field):
    """``{field: offset}`` from an "offset size field" table whose first row names ``first_field``."""
    start = text.index(first_field)
    rows = {}
    for line in text[text.rfind("\n", 0, start) + 1:].splitlines():
        match = re.match(r"^\W*(\d+)\s+(\d+)\s+(\w+)", line)
        if not match:
            break
        rows[match.group(3)] = int(match.group(1))
    return rows


def test_slot_offsets_match_the_documented_table():
    rows = documented_offsets(index_layout.__doc__.split("Slot, ")[1], "seq")
    assert rows == {
        "seq": index_layout.SLOT_SEQ_AT,
        "file_id": index_layout.SLOT_FILE_ID_AT,
        "key_hash": index_layout.SLOT_HASH_AT,
        "offset": index_layout.SLOT_OFFSET_AT,
        "record_len": index_layout.SLOT_RECORD_LEN_AT,
        "expire_at_ms": index_layout.SLOT_EXPIRE_AT,
    }
    assert index_layout.HASH_WORD * 8 == index_layout.SLOT_HASH_AT


def test_record_offsets_match_the_documented_table():
    rows = documented_offsets(Path(file_layout.__file__).read_text(), "crc32  ")
    assert rows == {
        "crc32": 0,
        "seq": file_layout.RECORD_SEQ_AT,
        "expire_at_ms": file_layout.RECORD_EXPIRE_AT,
        "flags": file_layout.RECORD_FLAGS_AT,
        "key_len": file_layout.RECORD_KEY_LEN_AT,
        "value_len": file_layout.RECORD_VALUE_LEN_AT,
    }
    assert file_layout.RECORD_CRC.size + file_layout.RECORD_CHECKED.size == file_layout.RECORD_HEADER_BYTES == 29


def test_a_record_header_reads_back_at_the_named_offsets():
    header = file_layout.RECORD_HEADER.pack(0xAABBCCDD, 7, 9, file_layout.FLAG_BATCH_MORE, 3, 5)
    assert struct.unpack_from("<Q", header, file_layout.RECORD_SEQ_AT)[0] == 7
    assert struct.unpack_from("<Q", header, file_layout.RECORD_EXPIRE_AT)[0] == 9
    assert header[file_layout.RECORD_FLAGS_AT] == file_layout.FLAG_BATCH_MORE
    assert struct.unpack_from("<I", header, file_layout.RECORD_KEY_LEN_AT)[0] == 3
    assert struct.unpack_from("<I", header, file_layout.RECORD_VALUE_LEN_AT)[0] == 5
    assert file_layout.RECORD_CRC.unpack_from(header)[0] == 0xAABBCCDD
