"""The one seam through which the daemon reads the wall clock (tests pass a fake)."""

import time


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch: what ``expire_at_ms`` is measured in."""
    return time.time_ns() // 1_000_000
