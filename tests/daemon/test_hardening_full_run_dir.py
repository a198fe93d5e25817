"""A full run directory (under systemd, /run: a small tmpfs), for a real ferricd: the shard reserves the pages
of a table before it maps it, so a table that finds no room stays in the shard's memory instead of killing it
with SIGBUS; it keeps serving every read and write itself, says in its log and in ``info`` what is wrong, and
publishes its table again once there is room.

The full filesystem is injected with LD_PRELOAD (tests/daemon/faults/full_run_dir.c, built here with the
machine's C compiler): growing a file in the run directory leaves it without pages, and reserving fails.
"""

import os
import time

import pytest

from ferric_ipc.file_layout import index_path
from ferricd.housekeeping import MAPPED_FILES_RETRY_S
from tests.daemon.faults import build_shim

VALUE = b"v" * 100


@pytest.fixture(scope="module")
def full_run_dir_shim(tmp_path_factory):
    return build_shim(tmp_path_factory, "full_run_dir", "full-filesystem")


def _full_daemon(make_daemon, shim, full_from_the_start):
    base = make_daemon.tempdir()
    flag, run_dir = os.path.join(base, "run-dir-full"), os.path.join(base, "run")
    env = dict(os.environ, LD_PRELOAD=shim, FERRIC_TEST_FULL_DIR=run_dir, FERRIC_TEST_FULL_FLAG=flag)
    if full_from_the_start:
        open(flag, "w").close()
    daemon = make_daemon(shards=1, env=env, base=base, run_dir=run_dir)
    return daemon, flag


def test_a_table_that_finds_no_room_stays_in_memory_and_the_shard_serves(make_daemon, full_run_dir_shim):
    daemon, flag = _full_daemon(make_daemon, full_run_dir_shim, full_from_the_start=False)
    client = daemon.client(timeout_ms=5000)
    remote = daemon.client(timeout_ms=5000, local_reads=False)
    pid = client.hello()["pid"]
    assert client.info()[0]["index_file_error"] is None

    open(flag, "w").close()  # the run directory is full from now on
    written = {}
    for i in range(2000):  # the table grows several times, and so does the access file of the cache keyspace
        for key in (f"full:{i}".encode(), f"sa:full:{i}".encode()):
            assert client.set(key, VALUE) is True
            written[key] = VALUE
    assert client.hello()["pid"] == pid, "the shard was replaced:\n" + daemon.stderr()[-3000:]
    assert client.mget(list(written)) == list(written.values())
    assert remote.mget(list(written)) == list(written.values())
    info = client.info()[0]
    assert "No space left on device" in info["index_file_error"], info["index_file_error"]
    assert "No space left on device" in info["access_file_error"], info["access_file_error"]
    assert not os.path.exists(index_path(daemon.run_dir, 0))  # clients ask the shard, not a stale table
    log = daemon.stderr()
    assert f"could not put the key directory shard-0.idx in {daemon.run_dir}" in log, log[-3000:]
    assert "SIGBUS" not in log, log[-3000:]

    os.unlink(flag)  # room again: the shard puts its files back within MAPPED_FILES_RETRY_S, without a write
    deadline = time.monotonic() + MAPPED_FILES_RETRY_S + 5
    while client.info()[0]["index_file_error"] is not None or client.info()[0]["access_file_error"] is not None:
        assert time.monotonic() < deadline, daemon.stderr()[-3000:]
        time.sleep(0.1)
    assert os.path.exists(index_path(daemon.run_dir, 0))
    assert client.mget(list(written)) == list(written.values())
    assert client.read_counts["local"] > 0
    assert client.hello()["pid"] == pid
    assert daemon.stop() == 0


def test_a_shard_starts_and_serves_with_its_run_directory_full(make_daemon, full_run_dir_shim):
    daemon, flag = _full_daemon(make_daemon, full_run_dir_shim, full_from_the_start=True)
    client = daemon.client(timeout_ms=5000)
    pid = client.hello()["pid"]
    for i in range(500):
        assert client.set(f"full:{i}".encode(), VALUE) is True
    assert client.get(b"full:0") == VALUE
    assert client.hello()["pid"] == pid
    assert "No space left on device" in client.info()[0]["index_file_error"]
    assert daemon.stop() == 0
