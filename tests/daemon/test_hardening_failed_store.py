"""A shard whose store failed for good (an fsync failed, so what is on disk is unknown) exits and is replaced,
for a real ferricd, whichever write met the failure: not only the group commit's fdatasync but also the fsync
of a data file being rotated out, under a keyspace that never syncs on its own.

The failure is injected with the LD_PRELOAD shim of test_fsync_failure.py.
"""

import os
import time

from ferric_ipc.errors import FerricError, StorageError
from tests.daemon.test_fsync_failure import fail_fsync_shim  # noqa: F401 - a fixture

CONFIG = '[storage]\nmax_file_bytes = "16KiB"\n[keyspaces.default]\nfsync = "never"\n'
VALUE = b"v" * 1000  # a rotation every 16 writes or so
REPLACED_TIMEOUT_S = 30


def test_a_failed_fsync_at_rotation_makes_the_shard_exit_and_be_replaced(make_daemon, fail_fsync_shim):  # noqa: F811
    base = make_daemon.tempdir()
    flag = os.path.join(base, "fail-fsync")
    env = dict(os.environ, LD_PRELOAD=fail_fsync_shim, FERRIC_TEST_FAIL_FSYNC_FLAG=flag)
    daemon = make_daemon(shards=1, env=env, base=base, config=CONFIG)
    client = daemon.client(timeout_ms=5000)
    client.set(b"failed:before", VALUE)
    pid_before = client.hello()["pid"]

    open(flag, "w").close()  # from now on the disk "fails" every fsync
    try:
        for i in range(40):  # writes that need no fsync succeed until the first rotation
            try:
                client.set(f"failed:during:{i}".encode(), VALUE)
            except StorageError as exc:
                assert "fsync" in str(exc), exc
                break
        else:
            raise AssertionError("no write met the failed fsync: the test did not test anything")
    finally:
        os.unlink(flag)  # the disk is "repaired"

    deadline = time.monotonic() + REPLACED_TIMEOUT_S
    while True:
        try:
            client.set(b"failed:after", VALUE)
            break
        except FerricError as exc:
            assert time.monotonic() < deadline, f"writes still fail: {exc}\n{daemon.stderr()[-3000:]}"
            time.sleep(0.1)
    assert client.hello()["pid"] != pid_before, "the failed shard kept running instead of being replaced"
    assert client.get(b"failed:before") == VALUE
    assert "stopping after a storage failure" in daemon.stderr()
    assert daemon.stop() == 0
