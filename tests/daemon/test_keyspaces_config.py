"""Keyspace configuration: built-in keyspaces, merging by name, and one-line errors for every mistake."""

import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

from ferricd.config import DEFAULTS, KEYSPACE_OPTIONS, ConfigError, from_dict, load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "systemd" / "ferricd.toml"
CONFIGURATION_DOC = ROOT / "docs" / "configuration.md"


def write(tmp_path, text):
    path = tmp_path / "ferricd.toml"
    path.write_text(text)
    return str(path)


def by_name(config):
    return {keyspace.name: keyspace for keyspace in config.keyspaces}


def test_sessions_are_durable_the_sqlalchemy_cache_is_bounded_and_the_rest_synced_every_second():
    keyspaces = by_name(load_config())
    assert (keyspaces["sessions"].prefix, keyspaces["sessions"].fsync, keyspaces["sessions"].eviction) == (
        b"sess:", "always", "none")
    assert (keyspaces["cache"].prefix, keyspaces["cache"].fsync, keyspaces["cache"].eviction) == (
        b"sa:", "never", "lru")
    assert keyspaces["cache"].max_bytes == 256 * 1024 * 1024
    assert (keyspaces["default"].prefix, keyspaces["default"].fsync) == (b"", "interval")
    assert load_config().storage.fsync_interval_ms == 1000


def test_a_file_changes_keyspaces_by_name_and_adds_new_ones(tmp_path):
    config = load_config(write(tmp_path, """
[keyspaces.cache]
max_bytes = "1GiB"

[keyspaces.tokens]
prefix = "tok:"
default_ttl_ms = 900000
"""))
    keyspaces = by_name(config)
    assert keyspaces["cache"].max_bytes == 1 << 30 and keyspaces["cache"].eviction == "lru"  # the rest is kept
    tokens = keyspaces["tokens"]
    assert (tokens.prefix, tokens.default_ttl_ms) == (b"tok:", 900_000)
    assert (tokens.fsync, tokens.eviction, tokens.max_bytes) == (
        KEYSPACE_OPTIONS["fsync"], KEYSPACE_OPTIONS["eviction"], KEYSPACE_OPTIONS["max_bytes"])
    assert from_dict(config.to_dict()) == config
    assert config.keyspace_table(4).shard_max_bytes[config.keyspace_table(4).names.index("cache")] == 1 << 28


def test_storage_fsync_of_earlier_versions_sets_the_default_keyspaces(tmp_path):
    config = load_config(write(tmp_path, '[storage]\nfsync = "never"\n'))
    assert by_name(config)["default"].fsync == "never" and config.storage.fsync == "never"
    assert by_name(config)["sessions"].fsync == "always"


@pytest.mark.parametrize("text, message", [
    ('[keyspaces.admin]\nprefix = "sess:admin:"\n',
     r"^keyspaces.admin.prefix 'sess:admin:' overlaps keyspaces.sessions.prefix 'sess:': "),
    ('[keyspaces.all]\nprefix = "s"\n', r"keyspaces.all.prefix 's' overlaps keyspaces.cache.prefix 'sa:'"),
    ('[keyspaces.cache]\nevict = "lru"\n',
     r"unknown option keyspaces.cache.evict; known options of a keyspace: prefix, fsync, eviction, max_bytes"),
    ('[keyspaces]\nprefix = "x:"\n', r"keyspaces.prefix must be a table: write \[keyspaces.prefix\]"),
    ('[keyspaces.default]\nprefix = "x:"\n', r"^keyspaces.default.prefix cannot be set"),
    ('[keyspaces.tokens]\ndefault_ttl_ms = 5\n', r"^keyspaces.tokens.prefix is missing or empty"),
    ('[keyspaces.tokens]\nprefix = ""\n', r"^keyspaces.tokens.prefix is missing or empty"),
    ('[keyspaces.sessions]\nfsync = "sometimes"\n', r"^keyspaces.sessions.fsync must be one of \['always'"),
    ('[keyspaces.sessions]\neviction = "lfu"\n', r"^keyspaces.sessions.eviction must be one of \['lru', 'none'\]"),
    ('[keyspaces.sessions]\neviction = "lru"\n', r'^keyspaces.sessions.max_bytes is missing: eviction = "lru"'),
    ('[keyspaces.cache]\nmax_bytes = "1 gig"\n', r"^keyspaces.cache.max_bytes must be bytes or a size like"),
    ('[keyspaces.cache]\nmax_bytes = -1\n', r"^keyspaces.cache.max_bytes must be 0 \(none\) or a positive"),
    ('[keyspaces.cache]\ndefault_ttl_ms = "1h"\n', r"^keyspaces.cache.default_ttl_ms must be int, not '1h'"),
    ('[keyspaces.cache]\nprefix = 7\n', r"^keyspaces.cache.prefix must be str, not 7"),
    ('[storage]\nfsync = "never"\n[keyspaces.default]\nfsync = "always"\n',
     r"storage.fsync and keyspaces.default.fsync are the same option: keep keyspaces.default.fsync only"),
    ('[storage]\nfsync = "sometimes"\n', r"^storage.fsync must be one of"),
])
def test_a_keyspace_mistake_is_one_line_naming_the_option(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as refused:
        load_config(write(tmp_path, text))
    assert "\n" not in str(refused.value)


def test_ferricd_refuses_overlapping_prefixes_before_starting(tmp_path):
    config = write(tmp_path, '[keyspaces.one]\nprefix = "a:"\n[keyspaces.two]\nprefix = "a:b"\n')
    done = subprocess.run([sys.executable, "-m", "ferricd", "--config", config, "--data-dir", str(tmp_path / "d"),
                           "--run-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "keyspaces.one.prefix 'a:' overlaps keyspaces.two.prefix 'a:b'" in done.stderr


# -- the shipped configuration and the docs -------------------------------------------------------


def toml_literal(value):
    return f'"{value}"' if isinstance(value, str) else str(value)


@pytest.mark.parametrize("name", list(DEFAULTS["keyspaces"]))
def test_the_example_config_writes_out_every_builtin_keyspace_option(name):
    written = tomllib.loads(EXAMPLE_CONFIG.read_text())["keyspaces"][name]
    expected = {**KEYSPACE_OPTIONS, **DEFAULTS["keyspaces"][name]}
    if name == "default":
        del expected["prefix"]  # it has none
    assert written == expected
    assert load_config(str(EXAMPLE_CONFIG)).keyspaces == load_config().keyspaces


@pytest.mark.parametrize("option", list(KEYSPACE_OPTIONS))
def test_the_configuration_doc_describes_every_keyspace_option(option):
    section = CONFIGURATION_DOC.read_text().split("## Keyspaces", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith(f"| `{option}` |")]
    assert rows, f"keyspace option {option} is not in the Keyspaces table of docs/configuration.md"
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[1] == f"`{toml_literal(KEYSPACE_OPTIONS[option])}`"
    for name, options in DEFAULTS["keyspaces"].items():
        assert re.search(rf"^\| `{name}` \|", section, re.M), f"built-in keyspace {name} is not listed"
    assert "appendfsync everysec" in section
