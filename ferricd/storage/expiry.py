"""Active expiry: drop key directory entries whose time has passed, a slice of slots at a time, without reading them.

Lazy expiry alone leaves a key nobody reads in the key directory, and its
record live, forever. The sweep walks the table's slots from a cursor that
wraps around; each slot holds its entry's ``expire_at_ms``, so finding expired
entries costs no data file read. A dropped entry's record becomes dead bytes
for the next merge. Nothing is written: an expired record already reads as a
delete at recovery (docs/storage.md, "Reads and expiry").

Like Redis's active expire cycle, a slice where many entries with a TTL turned
out to be expired is followed at once by another, within a time budget, so a
burst of expiries is cleared quickly while a table of long-lived keys costs one
small slice per tick.
"""

import time

#: Keep sweeping within the budget while at least this share of the entries seen that have a TTL had expired
#: (Redis's ACTIVE_EXPIRE_CYCLE_ACCEPTABLE_STALE is 10 %).
REPEAT_EXPIRED_RATIO = 0.10


class ExpirySweep:
    """A cursor over one shard's key directory slots."""

    def __init__(self):
        self.cursor = 0
        self.passes = 0  # complete walks of the table

    def run(self, keydir, now_ms, max_slots, budget_s):
        """Drop expired entries from ``max_slots`` slots on (more while many expire, up to ``budget_s``); returns how many."""
        deadline = time.perf_counter() + budget_s
        dropped = 0
        while True:
            index = keydir.index
            start = self.cursor if self.cursor < index.capacity else 0
            end = min(index.capacity, start + max_slots)
            with_expiry, expired = index.expired_slots(start, end, now_ms)
            for slot in expired:
                keydir.drop(slot)
            dropped += len(expired)
            if end >= index.capacity:
                self.cursor = 0
                self.passes += 1
            else:
                self.cursor = end
            if len(expired) < with_expiry * REPEAT_EXPIRED_RATIO or not expired or time.perf_counter() >= deadline:
                return dropped
