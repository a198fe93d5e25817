"""Shard liveness without a round trip: each shard rewrites its monotonic time in a file the supervisor reads.

``run_dir/shard-K.heartbeat`` holds 8 bytes, the shard loop's last beat as
CLOCK_MONOTONIC nanoseconds (little-endian u64; the clock is system-wide, and
unlike a file's mtime it never steps with the wall clock). The shard beats from
its loop at most every BEAT_INTERVAL_NS, so a shard that keeps serving, however
busy, keeps beating; one stuck in a request, stopped or deadlocked does not.
"""

import os
import struct
import time

BEAT = struct.Struct("<Q")
BEAT_INTERVAL_NS = 100_000_000  # a beat costs one pwrite of 8 bytes


def heartbeat_path(run_dir, shard_id):
    return os.path.join(run_dir, f"shard-{shard_id}.heartbeat")


class HeartbeatWriter:
    """The shard's side: ``beat()`` from its loop."""

    def __init__(self, run_dir, shard_id, file_mode=0o640):
        path = heartbeat_path(run_dir, shard_id)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, file_mode)
        self._last_ns = 0
        self.beat()

    def beat(self):
        now_ns = time.monotonic_ns()
        if now_ns - self._last_ns >= BEAT_INTERVAL_NS:
            os.pwrite(self._fd, BEAT.pack(now_ns), 0)
            self._last_ns = now_ns

    def close(self):
        os.close(self._fd)


def beat_age_ms(run_dir, shard_id):
    """Milliseconds since shard ``shard_id`` last beat, or None if it has not beaten since its file was removed."""
    try:
        with open(heartbeat_path(run_dir, shard_id), "rb") as f:
            data = f.read(BEAT.size)
    except FileNotFoundError:
        return None
    if len(data) != BEAT.size:
        return None
    return max(0, time.monotonic_ns() - BEAT.unpack(data)[0]) // 1_000_000


def clear_heartbeat(run_dir, shard_id):
    """Forget a shard's last beat (before starting its successor, so an old beat never vouches for it)."""
    try:
        os.unlink(heartbeat_path(run_dir, shard_id))
    except FileNotFoundError:
        pass
