"""Warnings that repeat at most once a minute per kind, so an outage does not flood the log."""

import logging
import threading
import time

logger = logging.getLogger("ferric_sqlalchemy")
WARN_INTERVAL_S = 60.0


class RateLimitedWarnings:
    """``warn(kind, message)`` logs at WARNING, then stays quiet for that kind for ``interval_s`` (counting)."""

    def __init__(self, interval_s: float = WARN_INTERVAL_S, clock=time.monotonic):
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, kind: str, message: str) -> None:
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval_s:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message = f"{message} ({suppressed} more like this in the last {self.interval_s:.0f} s)"
        logger.warning(message)
