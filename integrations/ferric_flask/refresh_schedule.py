"""RefreshSchedule: until when, as far as this process knows, each session's TTL needs no refresh."""

import time

#: Sessions remembered at most; past it the schedule starts over (each session then costs one local read again).
MAX_SESSIONS = 10_000


def monotonic_ms():
    return time.monotonic_ns() // 1_000_000


class RefreshSchedule:
    """Lets a save skip reading a session's remaining TTL while a refresh cannot be due yet.

    A TTL refresh is due once the remaining TTL has dropped more than
    ``interval_ms(ttl_ms)`` below the lifetime. Whenever this process writes a
    session (which sets its TTL to the full lifetime) or reads its remaining
    TTL, it knows the earliest moment a refresh can be due, and until then a
    save need not read the TTL at all. That holds because nothing shortens a
    session's TTL: every write sets the full lifetime (another worker's write
    only moves the moment later). A session deleted meanwhile is caught by the
    next request's read of the session itself.

    Times come from ``clock_ms`` (monotonic milliseconds; tests pass a fake).
    """

    def __init__(self, refresh_interval_ms, clock_ms=monotonic_ms):
        self.refresh_interval_ms = refresh_interval_ms
        self.clock_ms = clock_ms
        self._due_ms = {}  # session key -> clock_ms() before which no refresh is due

    def interval_ms(self, ttl_ms):
        """How far the TTL may drop below ``ttl_ms`` before a refresh: the interval, at most half the TTL."""
        return min(self.refresh_interval_ms, ttl_ms // 2)

    def not_due(self, key):
        """True while ``key`` certainly needs no refresh (False: read its TTL to know)."""
        return self.clock_ms() < self._due_ms.get(key, 0)

    def refresh_due(self, key, remaining_ms, ttl_ms):
        """Whether ``key``, with ``remaining_ms`` left (-1: no expiry), needs its TTL set to ``ttl_ms``."""
        slack_ms = remaining_ms - (ttl_ms - self.interval_ms(ttl_ms))
        if remaining_ms < 0 or slack_ms < 0:
            return True
        self._remember(key, self.clock_ms() + slack_ms)
        return False

    def written(self, key, ttl_ms):
        """``key``'s TTL was just set to ``ttl_ms``."""
        self._remember(key, self.clock_ms() + self.interval_ms(ttl_ms))

    def forget(self, key):
        self._due_ms.pop(key, None)

    def _remember(self, key, due_ms):
        if len(self._due_ms) >= MAX_SESSIONS and key not in self._due_ms:
            self._due_ms.clear()
        self._due_ms[key] = due_ms
