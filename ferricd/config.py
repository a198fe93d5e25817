"""Daemon configuration: embedded defaults, then the TOML file, then command-line flags.

Every option and its default is in DEFAULTS (the [storage] ones come from
StoreSettings, their one table); docs/configuration.md describes each.
Sizes may be integers (bytes) or strings such as ``"64MiB"``.
Keyspaces (``[keyspaces.NAME]``) merge by name: a file's table changes the
options it names of the embedded keyspace of that name, or adds a keyspace.
"""

import re
import tomllib
from dataclasses import dataclass, fields

from ferric_ipc.errors import FerricError
from ferric_ipc.file_layout import DEFAULT_RUN_DIR
from ferric_ipc.protocol import MAX_STREAM_FRAME_BYTES
from ferricd.storage.keyspaces import DEFAULT_KEYSPACE, Keyspace, KeyspaceTable
from ferricd.storage.settings import FSYNC_POLICIES, StoreSettings

DEFAULTS = {
    "daemon": {
        "data_dir": "./ferric-data",  # one shard-K directory per shard
        "run_dir": DEFAULT_RUN_DIR,  # sockets and run-time state; clients need read access
        "shards": 0,  # 0 = the count recorded in data_dir, or one per CPU core for a new one
        "stop_timeout_ms": 10_000,  # SIGTERM to exit: shards past this are killed
        "heartbeat_timeout_ms": 5_000,  # a shard whose loop has not beaten this long is hung: SIGTERM, SIGKILL at 2x
        "health_interval_ms": 1_000,  # how often the supervisor reads the heartbeats (and feeds the watchdog)
        "restart_backoff_initial_ms": 100,  # first delay before restarting a crashed shard
        "restart_backoff_max_ms": 30_000,  # the delay doubles per consecutive failure up to this
        "healthy_after_ms": 30_000,  # a shard up this long has its failure count reset
        "max_connections": 4096,  # per shard, stream and ZeroMQ peers together; a descriptor each (LimitNOFILE)
        "client_buffer_bytes": "256MiB",  # per shard: requests not yet run and replies not yet sent, all peers
        "log_level": "info",
    },
    # Every StoreSettings option but the two set elsewhere; their defaults and units are in that table.
    "storage": {},  # filled in below from ferricd/storage/settings.py
    # A policy per key prefix (docs/configuration.md, "Keyspaces"). The default keyspace holds the keys no
    # prefix matches, and its values here are what any keyspace gets for an option it leaves out.
    "keyspaces": {
        DEFAULT_KEYSPACE: {
            "prefix": "",  # the start of every key in the keyspace; prefixes may not overlap
            "fsync": "interval",  # always | interval (every storage.fsync_interval_ms) | never; Redis's everysec
            "eviction": "none",  # none (refuse writes past max_bytes) | lru
            "max_bytes": 0,  # bound of the keyspace in the whole daemon (each shard keeps its share); 0 = none
            "default_ttl_ms": 0,  # the TTL of writes that give none; 0 = none
        },
        "sessions": {"prefix": "sess:", "fsync": "always"},  # ferric_flask: never lost, never evicted
        # ferric_sqlalchemy: rebuilt from the database on a miss, so bounded and never synced
        "cache": {"prefix": "sa:", "fsync": "never", "eviction": "lru", "max_bytes": "256MiB"},
    },
}
KEYSPACE_OPTIONS = DEFAULTS["keyspaces"][DEFAULT_KEYSPACE]

_SIZE_UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B|B)?\s*$")
_SIZE_OPTIONS = {"max_file_bytes", "max_value_bytes", "merge_trigger_dead_bytes", "client_buffer_bytes"}
# StoreSettings fields no [storage] option sets: fsync is the default keyspace's, file_mode the daemon's.
_STORE_SETTINGS_SET_ELSEWHERE = {"fsync", "file_mode"}


def _size_text(size_bytes):
    """A byte count as a config file would write it: ``"64MiB"``, or plain bytes when no unit divides it."""
    for unit in ("GiB", "MiB", "KiB"):
        if size_bytes and size_bytes % _SIZE_UNITS[unit] == 0:
            return f"{size_bytes // _SIZE_UNITS[unit]}{unit}"
    return size_bytes


DEFAULTS["storage"] = {
    field.name: _size_text(field.default) if field.name in _SIZE_OPTIONS else field.default
    for field in fields(StoreSettings)
    if field.name not in _STORE_SETTINGS_SET_ELSEWHERE
}
_LOG_LEVELS = {"debug", "info", "warning", "error"}
MAX_CONNECTIONS_LIMIT = 1 << 20  # the kernel's default ceiling on open files per process (fs.nr_open)
REQUEST_OVERHEAD_BYTES = 1 << 20  # room in a request frame for its key and framing beyond the largest value


class ConfigError(FerricError, ValueError):
    """The configuration file or a flag is invalid; the message names the option."""


@dataclass(frozen=True)
class DaemonConfig:
    data_dir: str
    run_dir: str
    shards: int
    stop_timeout_ms: int
    heartbeat_timeout_ms: int
    health_interval_ms: int
    restart_backoff_initial_ms: int
    restart_backoff_max_ms: int
    healthy_after_ms: int
    max_connections: int
    client_buffer_bytes: int
    log_level: str
    storage: StoreSettings  # its fsync is the default keyspace's
    keyspaces: tuple  # Keyspace, the default one first

    @property
    def max_request_bytes(self):
        """The longest request frame a shard takes: half of client_buffer_bytes, so one peer's request leaves
        room for the others' (clients read it from ferricd.json and refuse longer ones before sending)."""
        return min(MAX_STREAM_FRAME_BYTES, self.client_buffer_bytes // 2)

    def to_dict(self):
        """Plain data (for handing the resolved settings to a shard process)."""
        daemon = {name: getattr(self, name) for name in DEFAULTS["daemon"]}
        storage = {name: getattr(self.storage, name) for name in DEFAULTS["storage"]}
        keyspaces = {
            keyspace.name: {name: getattr(keyspace, name) for name in KEYSPACE_OPTIONS}
            | {"prefix": keyspace.prefix.decode("utf-8")}
            for keyspace in self.keyspaces
        }
        return {"daemon": daemon, "storage": storage, "keyspaces": keyspaces}

    def keyspace_table(self, shard_count):
        """The keyspaces as one of ``shard_count`` shards holds them (each keeps its share of max_bytes)."""
        return KeyspaceTable(self.keyspaces, shard_count)


def load_config(path=None, overrides=None) -> DaemonConfig:
    """Defaults, then the file at ``path`` (if given), then ``overrides`` (``{"daemon": {...}}``)."""
    merged = _copy(DEFAULTS)
    if path is not None:
        _merge(merged, _read_toml(path), source=path)
    _merge(merged, overrides or {}, source="command line")
    return _build(merged)


def from_dict(data) -> DaemonConfig:
    """The inverse of ``DaemonConfig.to_dict``."""
    merged = _copy(DEFAULTS)
    _merge(merged, data, source="settings")
    return _build(merged)


def _read_toml(path):
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _copy(defaults):
    return {section: {name: dict(value) if isinstance(value, dict) else value for name, value in values.items()}
            for section, values in defaults.items()}


def _merge(merged, data, source):
    for section, values in data.items():
        if section not in DEFAULTS:
            raise ConfigError(f"{source}: unknown section [{section}]; known: {', '.join(DEFAULTS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        if section == "keyspaces":
            _merge_keyspaces(merged["keyspaces"], values, source)
            continue
        for name, value in values.items():
            if section == "storage" and name == "fsync":
                _merge_storage_fsync(merged, data, value, source)
                continue
            if name not in DEFAULTS[section]:
                raise ConfigError(
                    f"{source}: unknown option {section}.{name}; "
                    f"known options of [{section}]: {', '.join(DEFAULTS[section])}"
                )
            if value is not None:
                merged[section][name] = value


def _merge_keyspaces(merged, keyspaces, source):
    for name, options in keyspaces.items():
        if not isinstance(options, dict):
            raise ConfigError(f"{source}: keyspaces.{name} must be a table: write [keyspaces.{name}] and its options")
        target = merged.setdefault(name, {})
        for option, value in options.items():
            if option not in KEYSPACE_OPTIONS:
                raise ConfigError(f"{source}: unknown option keyspaces.{name}.{option}; "
                                  f"known options of a keyspace: {', '.join(KEYSPACE_OPTIONS)}")
            target[option] = value


def _merge_storage_fsync(merged, data, value, source):
    """``[storage] fsync``, from before keyspaces: the default keyspace's fsync, as it was every key's."""
    if "fsync" in data.get("keyspaces", {}).get(DEFAULT_KEYSPACE, {}):
        raise ConfigError(f"{source}: storage.fsync and keyspaces.default.fsync are the same option: "
                          "keep keyspaces.default.fsync only")
    if value not in FSYNC_POLICIES:
        raise ConfigError(f"storage.fsync must be one of {sorted(FSYNC_POLICIES)}, not {value!r} "
                          "(it sets keyspaces.default.fsync)")
    merged["keyspaces"][DEFAULT_KEYSPACE]["fsync"] = value


def _build(merged):
    daemon, storage = merged["daemon"], merged["storage"]
    for name, default in DEFAULTS["daemon"].items():
        if name in _SIZE_OPTIONS:
            daemon[name] = _size(f"daemon.{name}", daemon[name])
        elif type(daemon[name]) is not type(default):
            raise ConfigError(f"daemon.{name} must be {type(default).__name__}, not {daemon[name]!r}")
    if daemon["shards"] < 0 or daemon["shards"] > 1024:
        raise ConfigError("daemon.shards must be between 1 and 1024, or 0 for one per CPU core")
    if not 1 <= daemon["max_connections"] <= MAX_CONNECTIONS_LIMIT:
        raise ConfigError(f"daemon.max_connections must be between 1 and {MAX_CONNECTIONS_LIMIT}")
    if daemon["log_level"] not in _LOG_LEVELS:
        raise ConfigError(f"daemon.log_level must be one of {sorted(_LOG_LEVELS)}")
    for name in DEFAULTS["daemon"]:
        if name.endswith("_ms") and daemon[name] <= 0:
            raise ConfigError(f"daemon.{name} must be a positive number of milliseconds")
    keyspaces = _build_keyspaces(merged["keyspaces"])
    storage_values = {
        name: _size(f"storage.{name}", value) if name in _SIZE_OPTIONS else value for name, value in storage.items()
    }
    try:
        store_settings = StoreSettings(**storage_values, fsync=keyspaces[0].fsync)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"storage.{exc}") from None
    least_buffer_bytes = 2 * (store_settings.max_value_bytes + REQUEST_OVERHEAD_BYTES)
    if daemon["client_buffer_bytes"] < least_buffer_bytes:
        raise ConfigError(f"daemon.client_buffer_bytes must be at least {_size_text(least_buffer_bytes)}: half of it "
                          "is the longest request a shard takes, which must fit a value of storage.max_value_bytes")
    return DaemonConfig(**daemon, storage=store_settings, keyspaces=keyspaces)


def _build_keyspaces(merged):
    keyspaces = []
    for name, options in merged.items():
        values = {**KEYSPACE_OPTIONS, **options}
        values["max_bytes"] = _size(f"keyspaces.{name}.max_bytes", values["max_bytes"])
        for option, default in KEYSPACE_OPTIONS.items():
            if type(values[option]) is not type(default) and option != "max_bytes":
                raise ConfigError(f"keyspaces.{name}.{option} must be {type(default).__name__}, "
                                  f"not {values[option]!r}")
        values["prefix"] = values["prefix"].encode("utf-8")
        try:
            keyspaces.append(Keyspace(name, **values))
        except ValueError as exc:
            raise ConfigError(f"keyspaces.{name}.{exc}") from None
    try:
        return KeyspaceTable(keyspaces).keyspaces
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _size(name, value):
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise ConfigError(f"{name} must be bytes or a size like \"64MiB\", not {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2) or ""]
