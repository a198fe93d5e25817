"""Storage settings: every option, its unit and its default in one table."""

from dataclasses import dataclass, fields

MiB = 1024 * 1024

#: What each fsync policy means; the engine dispatches on these names.
FSYNC_POLICIES = {
    "always": "fdatasync before a write (or a batch of writes) returns",
    "interval": "fdatasync at most every fsync_interval_ms, on a write or on sync_if_due()",
    "never": "leave flushing to the OS; fsync only on rotation and close",
}

# Offsets in the key directory are u32, so a data file must stay below 4 GiB.
MAX_FILE_BYTES_LIMIT = 2**32 - 1


@dataclass(frozen=True)
class StoreSettings:
    """Settings of one shard's Bitcask store. Sizes in bytes, times in milliseconds (``_ms``) or microseconds (``_us``)."""

    max_file_bytes: int = 64 * MiB  # rotate the active file once it would pass this size
    max_value_bytes: int = 16 * MiB  # larger values are refused with LimitError
    fsync: str = "always"  # a key of FSYNC_POLICIES
    fsync_interval_ms: int = 1000  # for fsync = "interval"
    file_mode: int = 0o640  # data, hint and snapshot files
    snapshot_on_close: bool = True  # write the key directory on close, for fast restarts
    # Merge (docs/storage.md, "Merge" gives the reasons for these defaults). It starts on its own once
    # both thresholds are passed: disk use then stays under about 2x the live bytes, plus the floor.
    merge_auto: bool = True  # False: merges run only when asked for (ferricctl compact)
    merge_trigger_dead_percent: int = 50  # dead bytes as a share of all the shard's data bytes
    merge_trigger_dead_bytes: int = 16 * MiB  # ... and at least this many dead bytes
    merge_slice_us: int = 300  # merge work between two rounds of requests: what a request may wait for it
    expiry_sweep_slots: int = 4096  # key directory slots the active expiry sweep checks per tick

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, field.type):
                raise TypeError(f"{field.name} must be {field.type.__name__}, not {type(value).__name__}")
        if self.fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {sorted(FSYNC_POLICIES)}, not {self.fsync!r}")
        if not 1024 <= self.max_file_bytes <= MAX_FILE_BYTES_LIMIT:
            raise ValueError(f"max_file_bytes must be between 1024 and {MAX_FILE_BYTES_LIMIT}")
        if not 0 <= self.max_value_bytes <= MAX_FILE_BYTES_LIMIT - 2 * 64 * 1024:
            raise ValueError("max_value_bytes must be between 0 and 4 GiB minus 128 KiB")
        if self.fsync_interval_ms <= 0:
            raise ValueError("fsync_interval_ms must be positive")
        if not 1 <= self.merge_trigger_dead_percent <= 100:
            raise ValueError("merge_trigger_dead_percent must be between 1 and 100")
        if self.merge_trigger_dead_bytes < 0:
            raise ValueError("merge_trigger_dead_bytes must be 0 or more")
        if not 1 <= self.merge_slice_us <= 1_000_000:
            raise ValueError("merge_slice_us must be between 1 and 1000000 microseconds")
        if self.expiry_sweep_slots <= 0:
            raise ValueError("expiry_sweep_slots must be positive")
