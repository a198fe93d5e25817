"""Transaction.submit(): a transaction sent without waiting, its outcome read later, other calls in between."""

import os
import signal
import threading
import time

import pytest

from ferric_ipc import CommandError, FerricConnectionError, FerricError, FerricTimeoutError, Submitted
from ferric_ipc.routing import shard_for
from tests.daemon_process import TRANSPORTS


def test_submit_returns_what_execute_would_and_other_calls_run_in_between(client):
    with client.transaction("t") as transaction:
        transaction.set(b"{t}a", b"1")
        transaction.incr(b"{t}n", 5)
        transaction.get(b"{t}a")
        submitted = transaction.submit()
    assert isinstance(submitted, Submitted)
    assert len(transaction) == 0  # submit took the queued operations
    # Calls to the same shard while the reply is on its way: each reply reaches its own caller.
    assert client.set(b"{t}b", b"2") is True
    assert client.mget([b"{t}a", b"{t}b"]) == [b"1", b"2"]
    assert submitted.result() == [True, 5, b"1"]
    assert submitted.done()
    assert submitted.result() == [True, 5, b"1"]  # read once, kept


def test_several_submitted_transactions_are_answered_whatever_order_they_are_read_in(client):
    value = os.urandom(300_000)  # replies longer than one read: one wait reads into the next reply's frame
    client.set(b"{t}big", value)
    sent = []
    for i in range(5):
        with client.transaction("t") as transaction:
            transaction.incr(b"{t}count", 1)
            transaction.get(b"{t}big")
            sent.append(transaction.submit())
    assert sent[-1].result() == [5, value]
    assert all(s.done() for s in sent)
    assert [s.result()[0] for s in sent] == [1, 2, 3, 4, 5]
    assert client.get(b"{t}count") == b"5"


def test_a_failed_submitted_transaction_raises_at_result_and_writes_nothing(client):
    client.set(b"{t}text", b"not a number")
    with client.transaction("t") as transaction:
        transaction.set(b"{t}x", b"1")
        transaction.incr(b"{t}text", 1)
        submitted = transaction.submit()
    assert client.ping()
    with pytest.raises(CommandError, match="nothing was written"):
        submitted.result()
    assert client.get(b"{t}x") is None
    assert client.set(b"{t}x", b"2") and client.get(b"{t}x") == b"2"  # the connection is still in step


def test_a_child_process_cannot_read_its_parents_reply(client):
    with client.transaction("t") as transaction:
        transaction.set(b"{t}fork", b"1")
        submitted = transaction.submit()
    pid = os.fork()
    if pid == 0:
        try:
            submitted.result()
            code = 1
        except FerricError as exc:
            code = 0 if "parent process" in str(exc) else 2
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert submitted.result() == [True]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_shard_killed_before_answering_makes_result_say_it_may_have_been_applied(make_daemon, transport):
    daemon = make_daemon(shards=2)
    client = daemon.client(timeout_ms=2000, transport=transport)
    tag = next(f"s{i}" for i in range(100) if shard_for(f"{{s{i}}}".encode(), 2) == 0)
    key = f"{{{tag}}}k".encode()
    pid = client.hello(shard=0)["pid"]
    os.kill(pid, signal.SIGSTOP)  # the request waits unread until the shard dies
    try:
        with client.transaction(tag) as transaction:
            transaction.set(key, b"1")
            submitted = transaction.submit()
        assert not submitted.done()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)
    # The stream sees its connection end; ZeroMQ hides the loss and the wait runs out. Both say the same.
    lost = FerricConnectionError if transport == "unix" else FerricTimeoutError
    with pytest.raises(lost, match="may or may not have been applied"):
        submitted.result(timeout_ms=1000)
    deadline = time.monotonic() + 10
    while True:  # the supervisor replaces the shard; the Client carries on
        try:
            assert client.set(key, b"2") is True
            break
        except FerricError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert client.get(key) == b"2"


def test_a_retried_read_while_a_transaction_is_on_its_way_does_not_lose_it(make_daemon):
    daemon = make_daemon(shards=1)
    client = daemon.client(timeout_ms=3000)
    pid = client.hello(shard=0)["pid"]
    with client.transaction("t") as transaction:
        transaction.set(b"{t}k", b"1")
        os.kill(pid, signal.SIGSTOP)  # longer than a read's first wait (timeout/8) before it is sent again
        submitted = transaction.submit()
    try:
        threading.Timer(0.8, os.kill, (pid, signal.SIGCONT)).start()
        assert client.ping() is True  # waits on the same socket instead of replacing it
    finally:
        os.kill(pid, signal.SIGCONT)
    assert submitted.result() == [True]


def test_a_result_that_runs_out_can_be_asked_again_and_done_reads_what_arrived(make_daemon):
    daemon = make_daemon(shards=1)
    client = daemon.client(timeout_ms=3000)
    pid = client.hello(shard=0)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        with client.transaction("t") as transaction:
            transaction.set(b"{t}k", b"1")
            submitted = transaction.submit()
        with pytest.raises(FerricTimeoutError, match="call result"):
            submitted.result(timeout_ms=50)
        assert not submitted.done()
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 5
    while not submitted.done():  # nothing else reads the socket: done() does
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert submitted.result(timeout_ms=0) == [True]


def test_an_empty_transaction_is_not_sent(client):
    with client.transaction("t") as transaction:
        submitted = transaction.submit()
    assert submitted.done() and submitted.result() == []
