"""``fsync = "interval"`` keeps syncing on time when the wall clock steps back, for a real ferricd: intervals are
measured on the monotonic clock; the wall clock only says when keys expire.

The step is injected with LD_PRELOAD (tests/daemon/faults/step_wall_clock.c, built here with the machine's
C compiler): CLOCK_REALTIME moves by the seconds written in a file, and every fdatasync is logged.
"""

import os
import time

import pytest

from tests.daemon.faults import build_shim

INTERVAL_MS = 100
CONFIG = f'[storage]\nfsync_interval_ms = {INTERVAL_MS}\n[keyspaces.default]\nfsync = "interval"\n'
SYNC_TIMEOUT_S = 5  # fifty intervals


@pytest.fixture(scope="module")
def step_wall_clock_shim(tmp_path_factory):
    return build_shim(tmp_path_factory, "step_wall_clock", "clock-step")


def _syncs(log_path):
    try:
        with open(log_path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _wait_for_sync_after(log_path, count, daemon):
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    while _syncs(log_path) <= count:
        assert time.monotonic() < deadline, (
            f"no fdatasync within {SYNC_TIMEOUT_S} s of an interval write ({INTERVAL_MS} ms interval)\n"
            + daemon.stderr()[-2000:])
        time.sleep(0.02)


def test_interval_fsync_goes_on_after_the_wall_clock_steps_back(make_daemon, step_wall_clock_shim):
    base = make_daemon.tempdir()
    step_file, sync_log = os.path.join(base, "clock-step"), os.path.join(base, "syncs")
    env = dict(os.environ, LD_PRELOAD=step_wall_clock_shim, FERRIC_TEST_CLOCK_STEP_FILE=step_file,
               FERRIC_TEST_SYNC_LOG=sync_log)
    daemon = make_daemon(shards=1, env=env, base=base, config=CONFIG)
    client = daemon.client(timeout_ms=5000)
    syncs = _syncs(sync_log)
    client.set(b"step:before", b"v")
    _wait_for_sync_after(sync_log, syncs, daemon)  # the interval works while the clock is steady

    with open(step_file, "w") as f:
        f.write("-3600\n")  # the wall clock steps back an hour
    time.sleep(3 * INTERVAL_MS / 1000)  # the shard's tick has read the stepped clock
    syncs = _syncs(sync_log)
    client.set(b"step:after", b"v")
    _wait_for_sync_after(sync_log, syncs, daemon)
    assert daemon.stop() == 0
