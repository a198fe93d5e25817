"""Configuration: defaults, then file, then flags; unknown keys and bad values name the option."""

import pytest

from ferricd.config import DEFAULTS, ConfigError, from_dict, load_config
from ferricd.supervisor import resolve_shard_count


def write(tmp_path, text):
    path = tmp_path / "ferricd.toml"
    path.write_text(text)
    return str(path)


def test_embedded_defaults():
    config = load_config()
    assert (config.data_dir, config.run_dir, config.shards) == ("./ferric-data", "./ferric-run", 0)
    assert config.storage.max_file_bytes == 64 * 1024 * 1024 and config.storage.fsync == "interval"


def test_file_then_flags(tmp_path):
    path = write(tmp_path, '[daemon]\nshards = 4\nrun_dir = "/x"\n[storage]\nmax_file_bytes = "1MiB"\nfsync = "never"\n')
    config = load_config(path, {"daemon": {"shards": 2, "run_dir": None}})
    assert config.shards == 2  # the flag wins
    assert config.run_dir == "/x"  # an unset flag leaves the file's value
    assert config.storage.max_file_bytes == 1024 * 1024 and config.storage.fsync == "never"


def test_round_trip_through_plain_data(tmp_path):
    config = load_config(write(tmp_path, '[storage]\nmax_value_bytes = "2KiB"\n'))
    assert from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "text, message",
    [
        ("[daemon]\nshard = 2\n", "unknown option daemon.shard; known options of \\[daemon\\]: data_dir"),
        ("[deamon]\n", "unknown section \\[deamon\\]"),
        ("[daemon]\nshards = \"two\"\n", "daemon.shards must be int"),
        ("[daemon]\nshards = -1\n", "daemon.shards must be between"),
        ("[daemon]\nstop_timeout_ms = 0\n", "daemon.stop_timeout_ms must be a positive"),
        ("[storage]\nfsync = \"sometimes\"\n", "storage.fsync must be one of"),
        ("[storage]\nmax_file_bytes = \"64 parsecs\"\n", "storage.max_file_bytes must be bytes or a size"),
        ("[daemon\n", "not valid TOML"),
    ],
)
def test_bad_configuration_names_the_option(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "nope.toml"))


def test_every_default_is_valid():
    assert set(DEFAULTS) == {"daemon", "storage", "keyspaces"}
    load_config()


def test_shard_count_is_recorded_and_enforced(tmp_path):
    data_dir = str(tmp_path)
    assert resolve_shard_count(data_dir, 3) == 3
    assert resolve_shard_count(data_dir, 0) == 3  # 0: whatever the directory records
    assert resolve_shard_count(data_dir, 3) == 3
    with pytest.raises(ConfigError, match="created with 3 shards.*--shards 3"):
        resolve_shard_count(data_dir, 2)
