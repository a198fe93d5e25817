"""A stopped or killed daemon is reported at once (FerricConnectionError naming what to do), not after the timeout."""

import os
import signal
import subprocess
import sys
import time

import pytest

from ferric_ipc import Client, FerricConnectionError
from tests.daemon_process import TRANSPORTS

LONG_TIMEOUT_MS = 20_000  # what a call would wait if it did not tell a stopped daemon from a slow one


def _elapsed_s(call):
    started = time.monotonic()
    with pytest.raises(FerricConnectionError) as error:
        call()
    return time.monotonic() - started, str(error.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_connected_client_fails_at_once_after_a_clean_stop(make_daemon, transport):
    daemon = make_daemon(shards=2)
    client = Client(daemon.run_dir, timeout_ms=LONG_TIMEOUT_MS, transport=transport)
    try:
        client.set("ff:a", b"1")
        assert daemon.stop() == 0
        for call in (lambda: client.set("ff:a", b"2"), lambda: client.delete("ff:a"), lambda: client.ping()):
            elapsed_s, message = _elapsed_s(call)
            assert elapsed_s < LONG_TIMEOUT_MS / 4000, message
            assert "start it" in message or "start ferricd" in message, message
    finally:
        client.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_connected_client_fails_at_once_after_the_daemon_was_killed(make_daemon, transport):
    daemon = make_daemon(shards=2)
    client = Client(daemon.run_dir, timeout_ms=LONG_TIMEOUT_MS, transport=transport)
    try:
        client.set("ff:b", b"1")
        supervisor_pid = daemon.pid
        daemon.kill()  # SIGKILL to the whole group: ferricd.json and the sockets stay behind
        assert os.path.exists(os.path.join(daemon.run_dir, "ferricd.json"))
        for call in (lambda: client.set("ff:b", b"2"), lambda: client.delete("ff:b")):
            elapsed_s, message = _elapsed_s(call)
            assert elapsed_s < LONG_TIMEOUT_MS / 4000, message
            assert f"pid {supervisor_pid}" in message and "not running" in message, message
    finally:
        client.close()


def test_ferricctl_ping_against_a_killed_daemon_answers_within_a_second(make_daemon):
    daemon = make_daemon(shards=2)
    daemon.kill()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ferricd.ctl", "--run-dir", daemon.run_dir, "--timeout-ms", "20000",
                           "ping"], capture_output=True, text=True, timeout=60)
    elapsed_s = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    assert "not running" in done.stderr and "Traceback" not in done.stderr
    assert elapsed_s < 5, f"{elapsed_s:.1f} s (interpreter start included)"


def test_a_restarting_shard_is_still_waited_for(make_daemon):
    """The fast failure is only for a daemon that stopped: a shard being replaced is waited for."""
    daemon = make_daemon(shards=1)
    client = daemon.client(timeout_ms=LONG_TIMEOUT_MS)
    client.set("ff:c", b"1")
    os.kill(client.hello()["pid"], signal.SIGKILL)
    assert client.set("ff:c", b"2") in (True,)
    assert client.get("ff:c") == b"2"
