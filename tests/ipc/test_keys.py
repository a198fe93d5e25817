"""Key and value coercion, limits and the stable hash shared by client and daemon."""

import subprocess
import sys

import pytest

from ferric_ipc import LimitError, MAX_KEY_BYTES, as_key, as_value, key_hash64


def test_str_keys_are_utf8_and_bytes_like_keys_become_bytes():
    assert as_key("sess:é") == "sess:é".encode()
    assert as_key(bytearray(b"ab")) == b"ab"
    assert as_key(memoryview(b"ab")) == b"ab"


@pytest.mark.parametrize("bad", [1, 1.5, None, ["k"], object()])
def test_wrong_key_type_is_a_type_error_naming_the_argument(bad):
    with pytest.raises(TypeError, match="^session_id must be str or bytes"):
        as_key(bad, "session_id")


def test_key_limit_is_64_kib_encoded():
    assert len(as_key(b"k" * MAX_KEY_BYTES)) == MAX_KEY_BYTES
    with pytest.raises(LimitError, match="limited to 65536 bytes") as info:
        as_key("é" * (MAX_KEY_BYTES // 2 + 1))  # 2 bytes each once encoded
    assert isinstance(info.value, ValueError)


def test_value_limit_and_types():
    assert as_value("x", 1) == b"x"
    with pytest.raises(LimitError, match="raise max_value_bytes"):
        as_value(b"xx", 1)
    with pytest.raises(TypeError, match="^value must be bytes or str, not int"):
        as_value(3, 10)


def test_hash_is_stable_across_processes_and_never_reserved():
    # Python's hash() is salted per process; key_hash64 must not be.
    code = "from ferric_ipc import key_hash64; print(key_hash64(b'sess:42'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == key_hash64(b"sess:42")
    # Hint files, snapshots and mapped indexes store this value: it must never change.
    assert key_hash64(b"sess:42") == 0x96F636BDE2D1D795
    assert all(key_hash64(bytes([i])) >= 2 for i in range(256))
