"""A disk that fails under fdatasync, for a real ferricd: nothing of the failed batch is acknowledged,
the shard exits and is replaced, and every write acknowledged before is still there.

The failure is injected with LD_PRELOAD (tests/daemon/faults/fail_fsync.c, built here with the
machine's C compiler): fsync and fdatasync return EIO while a flag file exists.
"""

import os
import threading
import time

import pytest

from ferric_ipc.errors import FerricError, StorageError
from tests.daemon.faults import build_shim



@pytest.fixture(scope="module")
def fail_fsync_shim(tmp_path_factory):
    return build_shim(tmp_path_factory, "fail_fsync", "fsync")


def test_a_failed_group_fsync_acknowledges_nothing_and_the_shard_is_replaced(make_daemon, fail_fsync_shim):
    base = make_daemon.tempdir()
    flag = os.path.join(base, "fail-fsync")
    env = dict(os.environ, LD_PRELOAD=fail_fsync_shim, FERRIC_TEST_FAIL_FSYNC_FLAG=flag)
    # Every write synced before its reply, as sessions are by default.
    daemon = make_daemon(shards=1, env=env, base=base, config='[keyspaces.default]\nfsync = "always"\n')
    client = daemon.client(timeout_ms=5000)
    acknowledged = {f"fs:ok:{i}".encode(): b"v%d" % i for i in range(200)}
    for key, value in acknowledged.items():
        assert client.set(key, value) is True
    pid_before = client.hello()["pid"]

    open(flag, "w").close()  # from now on the disk "fails" every fsync
    outcomes = []

    def writer(n):
        c = daemon.client(timeout_ms=5000)
        try:
            outcomes.append(("ok", c.set(f"fs:lost:{n}".encode(), b"x")))
        except StorageError as exc:
            outcomes.append(("storage", str(exc)))
        except FerricError as exc:  # the shard may already be gone when a late writer arrives
            outcomes.append((type(exc).__name__, str(exc)))

    writers = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(15)
    os.unlink(flag)  # the disk is "repaired": the next shard can start

    assert all(kind != "ok" for kind, _ in outcomes), f"a write was acknowledged after a failed fsync: {outcomes}"
    storage_errors = [message for kind, message in outcomes if kind == "storage"]
    assert storage_errors, outcomes
    assert all("fdatasync" in message and "restarts" in message for message in storage_errors), storage_errors

    # The shard exited on its own and a new one serves; every acknowledged write survived.
    deadline = time.monotonic() + 30
    while True:
        try:
            hello = client.hello()
            if hello["pid"] != pid_before:
                break
        except FerricError:
            pass
        assert time.monotonic() < deadline, daemon.stderr()[-3000:]
        time.sleep(0.1)
    assert client.mget(list(acknowledged)) == list(acknowledged.values())
    fresh = daemon.client(local_reads=False)
    assert fresh.mget(list(acknowledged)) == list(acknowledged.values())
    assert client.set(b"fs:after", b"fine") is True
    log = daemon.stderr()
    assert "group commit failed" in log and "stopping after a storage failure" in log, log[-3000:]
    assert daemon.stop() == 0
