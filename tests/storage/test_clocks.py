"""Which clock times what: the fsync interval runs on the monotonic clock, expiry on the wall clock, so a wall
clock stepped back (NTP, an operator, a VM restored from a snapshot) neither postpones a sync nor keeps a key."""

from ferricd.storage import BitcaskStore, StoreSettings
from tests.fake_clock import FakeClock

HOUR_MS = 3_600_000



def test_the_wall_clock_stepping_back_does_not_postpone_an_interval_sync(shard_dir, clock, fdatasync_calls):
    monotonic = FakeClock(now_ms=0)
    store = BitcaskStore(shard_dir, StoreSettings(fsync="interval", fsync_interval_ms=1000), clock=clock,
                         monotonic_clock=monotonic)
    try:
        store.put("a", b"1")
        clock.advance(-HOUR_MS)
        monotonic.advance(1000)
        store.sync_if_due()
        assert len(fdatasync_calls) == 1
        store.put("b", b"2")
        clock.advance(HOUR_MS)  # a step forward is not time passing either
        store.sync_if_due()
        assert len(fdatasync_calls) == 1
    finally:
        store.close()


def test_expiry_follows_the_wall_clock(shard_dir, clock):
    monotonic = FakeClock(now_ms=0)
    store = BitcaskStore(shard_dir, StoreSettings(), clock=clock, monotonic_clock=monotonic)
    try:
        store.put("k", b"v", expire_at_ms=clock() + 1000)
        monotonic.advance(2000)
        assert store.get("k") == b"v"
        clock.advance(1000)
        assert store.get("k") is None
    finally:
        store.close()
