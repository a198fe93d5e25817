"""The supervisor with real processes: shard restarts, clean stop, directory locks,
shard-count check, systemd notifications, and a shard that cannot boot."""

import fcntl
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from ferric_ipc.client import Client
from ferric_ipc.errors import FerricError, FerricTimeoutError
from tests.daemon.conftest import TRANSPORTS, keys_on_shard


#: The timeout of calls that must reach a restarted shard: far longer than a restart takes (well
#: under a second) even on a loaded machine, so a call fails only if it never asks the new shard.
RESTART_TIMEOUT_MS = 10_000


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    return True


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("victim", [0, 1])
def test_sigkill_shard_is_restarted_and_loses_no_acknowledged_write(make_daemon, victim, transport):
    daemon = make_daemon(shards=2)
    client = daemon.client(timeout_ms=RESTART_TIMEOUT_MS, transport=transport)
    keys = [f"sup:kill:{i}".encode() for i in range(200)]
    for key in keys:
        assert client.set(key, b"v-" + key) is True  # written: a killed process loses nothing, whatever the fsync
    mine = keys_on_shard(victim, 1, "sup:kill:probe:")[0]
    before = client.hello(shard=victim)
    other = client.hello(shard=1 - victim)

    os.kill(before["pid"], signal.SIGKILL)
    # The next call to that shard, made once (no retry loop here; the client may retry an
    # idempotent op on its own) while the shard may still be dying: it reaches the new shard.
    after = client.hello(shard=victim)
    assert after["pid"] != before["pid"]
    assert after["epoch"] != before["epoch"]
    assert after["shard"] == victim
    assert client.set(mine, b"after-restart") is True
    assert client.hello(shard=1 - victim) == other, "the other shard was not restarted"
    assert not _alive(before["pid"])
    assert client.mget(keys) == [b"v-" + k for k in keys]
    assert client.get(mine) == b"after-restart"
    fresh = daemon.client(local_reads=False) if _has_local_reads() else daemon.client()
    assert fresh.mget(keys) == [b"v-" + k for k in keys], "the restarted shard itself has every write"
    assert f"shard {victim} died (killed by SIGKILL)" in daemon.stderr()
    assert daemon.stop() == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_request_in_flight_when_shard_dies_is_answered_after_restart(make_daemon, transport):
    """Deterministic form of the race above: the request is certainly in the dying shard's socket
    buffer (the shard is stopped when it arrives), so it dies with the shard, and only the call
    asking the new shard again can be answered: an idempotent call must, within its timeout."""
    daemon = make_daemon(shards=2)
    client = daemon.client(timeout_ms=RESTART_TIMEOUT_MS, transport=transport)
    pid = client.hello(shard=0)["pid"]
    os.kill(pid, signal.SIGSTOP)
    outcome = {}

    def call():
        try:
            outcome["hello"] = client.hello(shard=0)
        except Exception as exc:  # reported below
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.2)  # the request is now queued in the stopped shard's socket
    os.kill(pid, signal.SIGKILL)
    caller.join(2 * RESTART_TIMEOUT_MS / 1000)
    assert not caller.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["hello"]["pid"] != pid
    assert daemon.stop() == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_write_after_a_shard_was_replaced_reaches_the_new_shard_once(make_daemon, transport):
    """A client whose connection led to the shard that was killed: its next write, which it may not
    send twice, goes to the new shard within the call's timeout and is applied once."""
    daemon = make_daemon(shards=2)
    client = daemon.client(timeout_ms=RESTART_TIMEOUT_MS, transport=transport)
    key = keys_on_shard(0, 1, "sup:replaced:")[0]
    assert client.incr(key) == 1
    old_pid = client.hello(shard=0)["pid"]
    os.kill(old_pid, signal.SIGKILL)
    daemon.wait_ready(shards=[0])  # a killed shard answers nothing: this is its successor
    assert client.incr(key) == 2
    assert client.hello(shard=0)["pid"] != old_pid
    assert client.get(key) == b"2"
    assert daemon.stop() == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_write_made_as_its_shard_is_killed_is_applied_once_or_reported_unknown(make_daemon, transport):
    """The write goes out right after SIGKILL, while the shard may still be dying. Over the stream a
    request the dead shard never read is known not to be applied, so it always reaches the new
    shard. ZeroMQ cannot tell: a message it wrote to the dying shard is lost, and the call then
    ends at its timeout saying the write may or may not have been applied. It never succeeds
    without being applied once."""
    daemon = make_daemon(shards=2)
    # ZeroMQ usually waits out the timeout here, so it gets a shorter one (a slow restart is then
    # reported as unknown, which is allowed for it).
    client = daemon.client(timeout_ms=RESTART_TIMEOUT_MS if transport == "unix" else 3000, transport=transport)
    key = keys_on_shard(0, 1, "sup:racing:")[0]
    assert client.incr(key) == 1
    old_pid = client.hello(shard=0)["pid"]
    os.kill(old_pid, signal.SIGKILL)
    try:
        value = client.incr(key)
    except FerricTimeoutError as exc:
        assert transport == "zmq", exc
        assert "may or may not have been applied" in str(exc)
        daemon.wait_ready(shards=[0])
        assert client.get(key) in (b"1", b"2")
    else:
        assert value == 2
        assert client.get(key) == b"2"
    assert client.hello(shard=0)["pid"] != old_pid
    assert daemon.stop() == 0


def _has_local_reads():
    import inspect
    return "local_reads" in inspect.signature(Client).parameters


def test_sigterm_exits_zero_and_restart_keeps_every_write(make_daemon):
    daemon = make_daemon(shards=2)
    client = daemon.client()
    shard_pids = [client.hello(shard=s)["pid"] for s in range(2)]
    keys = [f"sup:term:{i}".encode() for i in range(300)]
    for key in keys[:150]:
        client.set(key, b"single-" + key)
    client.mset({k: b"batch-" + k for k in keys[150:]})
    client.set(b"sup:term:ttl", b"kept", ttl_ms=600_000)
    client.delete(keys[0])
    client.close()

    daemon.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        code = daemon.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ferricd still running 5 s after SIGTERM:\n{daemon.stderr()}")
    assert code == 0, daemon.stderr()
    assert time.monotonic() - sent < 5
    for pid in shard_pids:
        assert not _alive(pid), f"shard pid {pid} outlived the supervisor"
    assert not os.path.exists(os.path.join(daemon.run_dir, "ferricd.json"))
    assert "stopped cleanly" in daemon.stderr()

    daemon.start()
    client = daemon.client()
    assert client.get(keys[0]) is None, "the delete survived too"
    assert client.mget(keys[1:150]) == [b"single-" + k for k in keys[1:150]]
    assert client.mget(keys[150:]) == [b"batch-" + k for k in keys[150:]]
    assert client.get(b"sup:term:ttl") == b"kept"
    assert 0 < client.pttl(b"sup:term:ttl") <= 600_000
    assert client.info()[0]["keys"] + client.info()[1]["keys"] == 300
    client.close()
    assert daemon.stop() == 0


@pytest.mark.parametrize("share", ["both", "data_dir", "run_dir"])
def test_second_daemon_on_same_directories_refuses(make_daemon, share):
    first = make_daemon(shards=2)
    client = first.client()
    client.set(b"sup:first", b"still here")
    base = make_daemon.tempdir()
    second = make_daemon(
        shards=2, start=False, name="second", base=base,
        data_dir=first.data_dir if share in ("both", "data_dir") else os.path.join(base, "data"),
        run_dir=first.run_dir if share in ("both", "run_dir") else os.path.join(base, "run"),
    )
    second.start(wait=False)
    try:
        code = second.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the second ferricd did not exit:\n{second.stderr()}")
    assert code != 0
    assert f"in use by pid {first.pid}" in second.stderr()
    # the first one keeps serving, on the same sockets
    assert client.get(b"sup:first") == b"still here"
    assert client.set(b"sup:first", b"updated") is True
    fresh = first.client()
    assert fresh.get(b"sup:first") == b"updated"
    assert fresh.hello(0)["shards"] == 2
    assert first.process.poll() is None
    client.close()
    fresh.close()
    assert first.stop() == 0


def test_shard_count_mismatch_is_refused(make_daemon):
    daemon = make_daemon(shards=2)
    daemon.client().set(b"sup:count", b"2 shards")
    assert daemon.stop() == 0
    daemon.shards = 3
    daemon.start(wait=False)
    try:
        code = daemon.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ferricd --shards 3 on a 2-shard directory did not exit:\n{daemon.stderr()}")
    assert code != 0
    assert "--shards 2" in daemon.stderr()
    assert not os.path.exists(os.path.join(daemon.data_dir, "shard-2")), "no third shard was created"
    # the directory still works with the recorded count, and with no count given
    daemon.shards = None
    daemon.start()
    client = daemon.client()
    assert client.hello(0)["shards"] == 2
    assert client.get(b"sup:count") == b"2 shards"
    client.close()
    assert daemon.stop() == 0


def test_sd_notify_ready_watchdog_stopping(make_daemon):
    base = make_daemon.tempdir()
    notify_path = os.path.join(base, "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(0.05)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="400000")
    env.pop("WATCHDOG_PID", None)
    daemon = make_daemon(shards=2, env=env, start=False, base=base)

    def receive_until(predicate, timeout_s):
        got, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data = listener.recv(4096)
            except socket.timeout:
                continue
            for line in data.decode().splitlines():
                got.append((time.monotonic(), line))
                if predicate(line):
                    return got
        return got

    try:
        daemon.start(wait=False)
        messages = receive_until(lambda line: line == "READY=1", 20)
        assert messages and messages[-1][1] == "READY=1", f"no READY=1: {messages}\n{daemon.stderr()}"
        ready_at = messages[-1][0]
        probe = daemon.client(timeout_ms=1000)
        assert probe.ping() is True  # every shard answers the moment READY=1 arrives
        assert [probe.hello(shard=s)["shard"] for s in range(2)] == [0, 1]
        probe.close()

        more = receive_until(lambda line: False, 1.5)
        watchdogs = [at for at, line in messages + more if line == "WATCHDOG=1"]
        assert len(watchdogs) >= 2, f"WATCHDOG=1 {len(watchdogs)} times in ~1.5 s"
        # systemd kills the service when WATCHDOG_USEC (400 ms) passes without a WATCHDOG=1.
        gaps = [b - a for a, b in zip([ready_at] + watchdogs, watchdogs + [time.monotonic()])]
        assert max(gaps) < 0.4, f"WATCHDOG=1 gaps {[round(g, 3) for g in gaps]} s exceed WATCHDOG_USEC=400ms"

        daemon.send_signal(signal.SIGTERM)
        tail = receive_until(lambda line: line == "STOPPING=1", 10)
        assert tail and tail[-1][1] == "STOPPING=1", f"no STOPPING=1: {tail}"
        assert daemon.process.wait(timeout=10) == 0
    finally:
        listener.close()


def test_shard_that_cannot_boot_is_retried_while_others_serve(make_daemon):
    base = make_daemon.tempdir()
    config = "[daemon]\nrestart_backoff_max_ms = 500\n"
    daemon = make_daemon(shards=2, config=config, start=False, base=base)
    shard1_dir = os.path.join(daemon.data_dir, "shard-1")
    os.makedirs(shard1_dir)
    lock_fd = os.open(os.path.join(shard1_dir, "LOCK"), os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
        daemon.start(wait=False)
        daemon.wait_ready(shards=[0])
        client = daemon.client(timeout_ms=1000)
        key0 = keys_on_shard(0, 1, "sup:boot:")[0]
        key1 = keys_on_shard(1, 1, "sup:boot:")[0]
        assert client.set(key0, b"served") is True
        # Shard 1 keeps failing and being reported, with backoff; shard 0 keeps serving meanwhile.
        deadline = time.monotonic() + 10
        while daemon.stderr().count("shard 1 cannot start") < 4 and time.monotonic() < deadline:
            assert client.get(key0) == b"served"
            time.sleep(0.1)
        log = daemon.stderr()
        assert log.count("shard 1 cannot start") >= 4, log
        assert f"in use by pid {os.getpid()}" in log, "the shard names who holds its directory"
        assert "shard 0 cannot start" not in log
        assert daemon.process.poll() is None
        assert "ready:" not in log, "not ready while a shard is down"
    finally:
        os.close(lock_fd)  # releases the flock
    released_at = time.monotonic()
    probe = daemon.client(timeout_ms=200)
    while True:
        try:
            probe.ping(shard=1)
            break
        except Exception:
            if time.monotonic() - released_at > 0.5 + 3.0:
                pytest.fail(f"shard 1 not up {time.monotonic() - released_at:.1f} s after the lock was released:\n"
                            f"{daemon.stderr()}")
            time.sleep(0.02)
    elapsed = time.monotonic() - released_at
    probe.close()
    assert elapsed < 0.5 + 3.0  # one backoff (max 500 ms) plus a process start
    assert client.set(key1, b"now served") is True
    assert client.get(key1) == b"now served"
    assert client.get(key0) == b"served"
    client.close()
    assert daemon.stop() == 0


def test_a_shard_that_stops_answering_is_stopped_and_replaced(make_daemon):
    """A shard that was up and then hangs (SIGSTOP stands in for a deadlock) stops beating; the
    supervisor sends SIGTERM after heartbeat_timeout_ms, SIGKILL after twice that, and starts a new one."""
    config = "[daemon]\nhealth_interval_ms = 100\nheartbeat_timeout_ms = 1000\nrestart_backoff_max_ms = 500\n"
    daemon = make_daemon(shards=2, config=config)
    client = daemon.client(timeout_ms=3000)
    assert client.set("hung:key", b"kept") is True
    shard = keys_on_shard(0, 1, "hung:probe:")[0]
    hung = client.hello(shard=0)
    time.sleep(0.5)  # let the supervisor see shard 0 beat first
    os.kill(hung["pid"], signal.SIGSTOP)
    deadline = time.monotonic() + 20
    replaced = None
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            replaced = client.hello(shard=0)
        except FerricError:
            continue
        if replaced["pid"] != hung["pid"]:
            break
    assert replaced is not None and replaced["pid"] != hung["pid"], daemon.stderr()[-3000:]
    assert not _alive(hung["pid"])
    stderr = daemon.stderr()
    assert "shard 0 has not beaten for" in stderr and "sending SIGTERM" in stderr
    assert "shard 0 ignored SIGTERM; sending SIGKILL" in stderr
    assert client.set(shard, b"after") is True and client.get(shard) == b"after"
    assert client.get("hung:key") == b"kept"
    assert daemon.stop() == 0
