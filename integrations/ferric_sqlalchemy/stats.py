"""Counters of what the cache did in this process: hits, misses, stores, invalidations, per table."""

import threading
from collections import Counter

EVENTS = ("hits", "misses", "stores", "invalidations", "bypasses", "errors")


class CacheStats:
    """Thread-safe counters; ``snapshot()`` is what ``QueryCache.stats()`` returns."""

    def __init__(self):
        self._lock = threading.Lock()
        self._totals = Counter()
        self._tables: dict[str, Counter] = {}

    def count(self, event: str, tables=(), n: int = 1) -> None:
        with self._lock:
            self._totals[event] += n
            per_table = self._tables
            for table in tables:
                counter = per_table.get(table)
                if counter is None:
                    counter = per_table[table] = Counter()
                counter[event] += n

    def snapshot(self) -> dict:
        """``{"hits": n, ..., "tables": {"users": {"hits": n, ...}}}``; every event present, 0 if none."""
        with self._lock:
            result = {event: self._totals[event] for event in EVENTS}
            result["tables"] = {table: {event: counter[event] for event in EVENTS}
                                for table, counter in sorted(self._tables.items())}
        return result

    def reset(self) -> None:
        with self._lock:
            self._totals.clear()
            self._tables.clear()
