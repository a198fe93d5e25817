"""Bitcask storage for one shard: record and hint formats, data files, key directory, recovery, engine."""

from ferricd.storage.engine import BitcaskStore, Delete, Expire, Put
from ferricd.storage.recovery import RecoveryReport
from ferricd.storage.settings import FSYNC_POLICIES, StoreSettings

__all__ = ["BitcaskStore", "Delete", "Expire", "FSYNC_POLICIES", "Put", "RecoveryReport", "StoreSettings"]
