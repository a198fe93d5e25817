"""ferric_ipc.Client against a real ferricd: fork and thread safety, a stopped or killed daemon,
pipelines, and argument checks made before anything is sent."""

import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from ferric_ipc.client import Client
from ferric_ipc.errors import FerricConnectionError, FerricTimeoutError, LimitError
from ferric_ipc.keys import MAX_KEY_BYTES
from ferric_ipc.routing import shard_for
from tests.daemon.conftest import TRANSPORTS, keys_on_shard

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- fork ----------------------------------------------------------------------------------


def _wait_child(pid, timeout_s=20):
    """The child's exit status code; SIGKILLs it and fails if it does not exit in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"forked child {pid} hung")


def _in_child(work):
    """Run ``work()`` in a forked child; return (exit code, what it wrote to the pipe)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(read_fd)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler
            signal.alarm(15)  # a hung child dies instead of hanging the suite
            message = work()
            os.write(write_fd, message.encode())
            code = 0
        except BaseException as exc:  # reported to the parent through the pipe
            try:
                os.write(write_fd, f"{type(exc).__name__}: {exc}".encode()[:4000])
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(write_fd)
    code = _wait_child(pid)
    chunks = []
    while select.select([read_fd], [], [], 0)[0]:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    return code, b"".join(chunks).decode()


def test_client_used_before_and_after_fork(client):
    k0 = keys_on_shard(0, 1, "cl:fork:0:")[0]
    k1 = keys_on_shard(1, 1, "cl:fork:1:")[0]
    assert client.set(k0, b"parent-before") is True
    assert client.set(k1, b"parent-before") is True
    assert client.get(k0) == b"parent-before"

    def child():
        # the very same Client object, inherited through fork
        assert client.get(k0) == b"parent-before"
        assert client.mget([k0, k1]) == [b"parent-before", b"parent-before"]
        assert client.set(k1, b"from-child") is True
        assert client.incr(b"cl:fork:counter", 5) == 5
        assert client.ping() is True
        return f"child pid {os.getpid()} ok"

    code, message = _in_child(child)
    assert code == 0, message
    assert message.startswith("child pid")
    # the parent's sockets still work, and it sees the child's writes
    assert client.get(k1) == b"from-child"
    assert client.incr(b"cl:fork:counter") == 6
    assert client.set(k0, b"parent-after") is True
    assert client.get(k0) == b"parent-after"

    # a grandchild (fork of a fork) too
    def grandparent():
        code, message = _in_child(lambda: str(client.incr(b"cl:fork:counter", 10)))
        assert code == 0, message
        return message

    code, message = _in_child(grandparent)
    assert (code, message) == (0, "16")
    assert client.get(b"cl:fork:counter") == b"16"


def test_fork_while_other_threads_use_the_client(client):
    """gunicorn-style: a fork can happen while another thread is inside a call on the shared Client."""
    stop = threading.Event()
    errors = []

    def hammer(n):
        i = 0
        while not stop.is_set():
            key = b"cl:forkthread:%d:%d" % (n, i % 50)
            try:
                client.set(key, b"%d" % i)
                if client.get(key) != b"%d" % i:
                    errors.append(f"thread {n}: wrong value for {key!r}")
            except Exception as exc:
                errors.append(f"thread {n}: {exc!r}")
            i += 1

    # Every key exists and has been read before the threads start, so no key directory grows or is
    # mapped for the first time while they run: this test is about fork; test_threads_share_one_client
    # covers threads racing on the mapping.
    client.mset({b"cl:forkthread:%d:%d" % (n, i): b"-" for n in range(3) for i in range(50)})
    client.mset({b"cl:forkthread:child:%d" % r: b"-" for r in range(15)})
    assert client.mget([b"cl:forkthread:%d:%d" % (n, i) for n in range(3) for i in range(50)]) == [b"-"] * 150
    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        for round_ in range(15):
            def child(round_=round_):
                key = b"cl:forkthread:child:%d" % round_
                assert client.set(key, b"c") is True
                assert client.get(key) == b"c"
                return "ok"

            code, message = _in_child(child)
            assert (code, message) == (0, "ok"), f"round {round_}: {message}"
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []
    assert client.mget([b"cl:forkthread:child:%d" % r for r in range(15)]) == [b"c"] * 15


# -- threads -------------------------------------------------------------------------------


def test_threads_share_one_client(daemon):
    """8 threads, one fresh Client, each writing and reading back its own keys. They start together
    (so they race to open the client's sockets and mappings), and every key is new, so each shard's
    key directory grows while the threads read (local reads remap it)."""
    client = daemon.client(timeout_ms=5000)
    n_threads, rounds = 8, 400
    prefix = "cl:thr"
    barrier = threading.Barrier(n_threads)
    failures = []

    def work(n):
        try:
            barrier.wait(5)
            for i in range(rounds):
                key = f"{prefix}:{n}:{i}".encode()
                value = f"{n}-{i}".encode() * (1 + i % 7)
                assert client.set(key, value) is True
                got = client.get(key)
                assert got == value, f"thread {n} read {got!r} for {key!r}, wrote {value!r}"
                if i % 10 == 0:
                    keys = [f"{prefix}:{n}:m{j}".encode() for j in range(3)]
                    client.mset({k: b"m%d-%d" % (n, i) for k in keys})
                    assert client.mget(keys) == [b"m%d-%d" % (n, i)] * 3
                    client.incr(f"{prefix}:shared")
        except Exception as exc:
            failures.append(f"thread {n}: {exc!r}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert failures == []
    assert client.get(f"{prefix}:shared") == str(n_threads * rounds // 10).encode()
    keys = [f"{prefix}:{n}:{i}".encode() for n in range(n_threads) for i in range(rounds)]
    assert client.mget(keys) == [f"{n}-{i}".encode() * (1 + i % 7) for n in range(n_threads) for i in range(rounds)]
    client.close()


# -- daemon stopped ----------------------------------------------------------------------------


def test_no_daemon_raises_connection_error_quickly(make_daemon):
    run_dir = os.path.join(make_daemon.tempdir(), "run")
    os.makedirs(run_dir)
    for directory in (run_dir, os.path.join(run_dir, "does-not-exist")):
        c = Client(directory, timeout_ms=2000)
        for call in (lambda: c.get(b"k"), lambda: c.set(b"k", b"v"), c.ping, c.info, lambda: c.mget([b"a"])):
            started = time.monotonic()
            with pytest.raises(FerricConnectionError) as excinfo:
                call()
            assert time.monotonic() - started < 0.5
            message = str(excinfo.value)
            assert "start ferricd" in message, message
            assert directory in message
        c.close()


def _assert_fails_fast(call, bound_s, allow_value=None):
    started = time.monotonic()
    try:
        result = call()
    except (FerricTimeoutError, FerricConnectionError):
        pass
    else:
        assert allow_value is not None and result == allow_value, f"returned {result!r} with the daemon dead"
    elapsed = time.monotonic() - started
    assert elapsed < bound_s, f"took {elapsed:.2f} s (bound {bound_s} s)"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_killed_daemon_times_out_within_timeout(make_daemon, transport):
    daemon = make_daemon(shards=2)
    timeout_ms = 300
    c = daemon.client(timeout_ms=timeout_ms, transport=transport)
    k0 = keys_on_shard(0, 1, "cl:dead:")[0]
    k1 = keys_on_shard(1, 1, "cl:dead:")[0]
    c.set(k0, b"last")
    c.set(k1, b"last")
    os.killpg(daemon.pid, signal.SIGKILL)  # supervisor and shards at once: nothing cleans up
    daemon.process.wait(5)
    time.sleep(0.1)
    assert os.path.exists(os.path.join(daemon.run_dir, "ferricd.json")), "stale daemon file left behind"
    assert os.path.exists(os.path.join(daemon.run_dir, "shard-0.sock")), "stale socket left behind"

    once, twice = timeout_ms / 1000 + 0.3, 2 * timeout_ms / 1000 + 0.3  # idempotent ops are retried once
    fresh = daemon.client(timeout_ms=timeout_ms, transport=transport)
    for c_ in (c, fresh):  # a client with open sockets, and one that connects now
        _assert_fails_fast(lambda: c_.set(k0, b"x"), once)
        _assert_fails_fast(lambda: c_.incr(b"cl:dead:n"), once)
        _assert_fails_fast(lambda: c_.delete(k1), once)
        _assert_fails_fast(lambda: c_.mset({k0: b"a", k1: b"b"}), 2 * once)  # one call per shard
        _assert_fails_fast(lambda: c_.ping(shard=1), twice)
        _assert_fails_fast(lambda: c_.hello(0), twice)
        # A read may be answered from the files the dead daemon left, but only with the last value.
        _assert_fails_fast(lambda: c_.get(k1), twice, allow_value=b"last")
        p = c_.pipeline()
        p.set(k0, b"p")
        _assert_fails_fast(p.execute, once)
    # The client works again as soon as a daemon is back on the same directories.
    daemon.start()
    assert c.set(k0, b"back") is True
    assert c.get(k0) == b"back"
    assert c.get(k1) == b"last"
    assert daemon.stop() == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cleanly_stopped_daemon_is_reported(make_daemon, transport):
    daemon = make_daemon(shards=2)
    c = daemon.client(timeout_ms=300, transport=transport)
    c.set(b"cl:stopped", b"v")
    assert daemon.stop() == 0
    _assert_fails_fast(lambda: c.set(b"cl:stopped", b"x"), 0.6)  # sockets already open
    fresh = daemon.client(timeout_ms=300)
    with pytest.raises(FerricConnectionError, match="start ferricd"):
        fresh.set(b"cl:stopped", b"x")


# -- pipeline ----------------------------------------------------------------------------------


def test_pipeline_thousand_sets_then_gets(client):
    keys = [f"cl:pipe:{i}".encode() for i in range(1000)]
    assert {shard_for(k, 2) for k in keys} == {0, 1}
    p = client.pipeline()
    for i, key in enumerate(keys):
        p.set(key, b"value-%d" % i)
    for key in keys:
        p.get(key)
    assert len(p) == 2000
    results = p.execute()
    assert results == [True] * 1000 + [b"value-%d" % i for i in range(1000)]
    assert len(p) == 0, "execute empties the pipeline"
    assert p.execute() == []
    assert client.mget(keys[:3] + keys[-3:]) == [b"value-%d" % i for i in (0, 1, 2, 997, 998, 999)]


def test_pipeline_mixed_ops_in_order(client):
    p = client.pipeline()
    p.set(b"cl:pm:a", b"1").incr(b"cl:pm:a", 4).get(b"cl:pm:a").set(b"cl:pm:b", b"x", nx=True)
    p.set(b"cl:pm:b", b"y", nx=True).getdel(b"cl:pm:b").get(b"cl:pm:b").expire(b"cl:pm:a", 60_000).persist(b"cl:pm:a")
    p.pttl(b"cl:pm:a").pttl(b"cl:pm:none")
    assert p.execute() == [True, 5, b"5", True, False, b"x", None, True, True, -1, -2]


# -- client-side validation --------------------------------------------------------------------


BAD_CALLS = {
    "get(5)": lambda c: c.get(5),
    "get(None)": lambda c: c.get(None),
    "get(1.5)": lambda c: c.get(1.5),
    "get([k])": lambda c: c.get(["k"]),
    "set(k, 5)": lambda c: c.set(b"k", 5),
    "set(k, None)": lambda c: c.set(b"k", None),
    "set(k, dict)": lambda c: c.set(b"k", {"a": 1}),
    "set(7, v)": lambda c: c.set(7, b"v"),
    "set ttl_ms=1.5": lambda c: c.set(b"k", b"v", ttl_ms=1.5),
    "set ttl_ms='100'": lambda c: c.set(b"k", b"v", ttl_ms="100"),
    "set ttl_ms=0": lambda c: c.set(b"k", b"v", ttl_ms=0),
    "set ttl_ms=-5": lambda c: c.set(b"k", b"v", ttl_ms=-5),
    "set ttl_ms=True": lambda c: c.set(b"k", b"v", ttl_ms=True),
    "mget([ok, 3])": lambda c: c.mget([b"ok", 3]),
    "mset({k: 5})": lambda c: c.mset({b"k": 5}),
    "mset({5: v})": lambda c: c.mset({5: b"v"}),
    "delete(ok, 5)": lambda c: c.delete(b"ok", 5),
    "exists(None)": lambda c: c.exists(None),
    "expire(k, '10')": lambda c: c.expire(b"k", "10"),
    "incr(k, 1.5)": lambda c: c.incr(b"k", 1.5),
    "incr(k, '1')": lambda c: c.incr(b"k", "1"),
    "getdel(3)": lambda c: c.getdel(3),
    "set_if value=5": lambda c: c.set_if(b"{t}a", 5, b"{t}b", None),
    "set_if expected=5": lambda c: c.set_if(b"{t}a", b"v", b"{t}b", 5),
    "set_if guard=5": lambda c: c.set_if(b"{t}a", b"v", 5, None),
    "scan(5)": lambda c: c.scan(5),
    "scan(cursor=-1)": lambda c: c.scan(b"", -1),
    "scan(cursor='0')": lambda c: c.scan(b"", "0"),
    "scan(count='10')": lambda c: c.scan(b"", 0, "10"),
    "delete_prefix(None)": lambda c: c.delete_prefix(None),
    "pipeline set(5, v)": lambda c: c.pipeline().set(5, b"v"),
    "pipeline incr(k, 0.5)": lambda c: c.pipeline().incr(b"k", 0.5),
}


def _not_type_errors(c):
    """Names of BAD_CALLS that did not raise TypeError on ``c``, with what happened instead."""
    wrong = []
    for name, call in BAD_CALLS.items():
        try:
            result = call(c)
        except TypeError:
            continue
        except Exception as exc:
            wrong.append(f"{name}: {type(exc).__name__}: {str(exc)[:80]}")
        else:
            wrong.append(f"{name}: returned {result!r}")
    return wrong


def test_wrong_types_raise_type_error_before_sending(client):
    errors_before = [i["errors"] for i in client.info()]
    assert _not_type_errors(client) == []
    assert [i["errors"] for i in client.info()] == errors_before, "a bad call reached a shard"
    with pytest.raises(TypeError):
        Client("/tmp", timeout_ms=0)
    with pytest.raises(TypeError):
        Client("/tmp", timeout_ms=1.5)


def test_wrong_types_raise_type_error_even_without_a_daemon(make_daemon):
    """A programming error is reported as one whether or not ferricd runs: with no daemon behind the
    client, anything that got as far as routing or sending would raise FerricConnectionError instead."""
    nowhere = Client(os.path.join(make_daemon.tempdir(), "run"), timeout_ms=500)
    assert _not_type_errors(nowhere) == []
    nowhere.close()


def test_oversized_key_raises_limit_error_before_sending(make_daemon, client):
    nowhere = Client(os.path.join(make_daemon.tempdir(), "run"), timeout_ms=500)
    big = b"k" * (MAX_KEY_BYTES + 1)
    big_text = "é" * (MAX_KEY_BYTES // 2 + 1)  # 2 bytes each in UTF-8: over the limit in bytes, not chars
    for c in (nowhere, client):
        for call in (lambda: c.get(big), lambda: c.set(big, b"v"), lambda: c.set(big_text, b"v"),
                     lambda: c.mget([b"a", big]), lambda: c.mset({big: b"v"}), lambda: c.delete(big),
                     lambda: c.incr(big), lambda: c.set_if(b"a", b"v", big, None), lambda: c.scan(big),
                     lambda: c.pipeline().set(big, b"v")):
            with pytest.raises(LimitError):
                call()
    # exactly at the limit is fine
    at_limit = b"K" * MAX_KEY_BYTES
    assert client.set(at_limit, b"edge") is True
    assert client.get(at_limit) == b"edge"
    assert client.delete(at_limit) == 1
    # values are limited by the daemon (16 MiB by default), with the same error type
    with pytest.raises(LimitError):
        client.set(b"cl:hugevalue", b"x" * (16 * 1024 * 1024 + 1))
    assert client.get(b"cl:hugevalue") is None
    nowhere.close()


# -- garbage collection --------------------------------------------------------------------------

GC_CHILD = r"""
import gc, sys
from ferric_ipc.client import Client
c = Client(sys.argv[1], timeout_ms=1000)
assert c.set(b"cl:gc", b"v")
holder = {"client": c}
holder["self"] = holder  # any reference cycle will do: a stored exception's traceback is the usual one
del c, holder
gc.collect()
print("collected")
"""


def test_client_in_reference_cycle_does_not_hang_gc(daemon):
    """A Client left to the garbage collector (not closed) must not hang the process."""
    try:
        out = subprocess.run([sys.executable, "-c", GC_CHILD, daemon.run_dir], capture_output=True, text=True,
                             timeout=8, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail("gc.collect() of an unclosed Client in a reference cycle hung for 8 s (zmq Context.__del__ "
                    "runs term() while the Client's socket is still open)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "collected"
