"""The daemon's two clocks, each read through one seam (tests pass fakes).

The wall clock says when keys expire (``expire_at_ms`` is absolute, shared with
clients); every interval and timeout is measured on the monotonic clock, which
no NTP step or operator moves, so a clock stepped back never postpones a sync.
"""

import time


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch: what ``expire_at_ms`` is measured in, and nothing else."""
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    """Milliseconds on CLOCK_MONOTONIC (an arbitrary start, never stepped): for intervals and timeouts."""
    return time.monotonic_ns() // 1_000_000
