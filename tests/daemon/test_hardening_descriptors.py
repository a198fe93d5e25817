"""A shard that runs out of file descriptors while it rotates its data file, for a real ferricd: writes may fail
while no descriptor is free, but no read answers INTERNAL, and once descriptors are free again writes succeed
(from the same shard or from the one that replaced it) and every acknowledged write reads back.

The shortage is made by lowering the running shard's RLIMIT_NOFILE (prlimit) to the descriptors it holds.
"""

import os
import resource
import time

import psutil

from ferric_ipc.errors import FerricError

CONFIG = '[storage]\nmax_file_bytes = "16KiB"\n[keyspaces.default]\nfsync = "always"\n'
VALUE = b"v" * 1000  # a rotation every 16 writes or so
RECOVERY_TIMEOUT_S = 30


def _lowest_free_fd(pid):
    """The lowest descriptor number ``pid`` does not use: a soft limit of it leaves no descriptor to open."""
    used = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
    fd = 0
    while fd in used:
        fd += 1
    return fd


def _internal(exc):
    return getattr(exc, "code", None) == "INTERNAL"


def test_a_rotation_out_of_descriptors_is_not_a_permanent_failure(make_daemon):
    daemon = make_daemon(shards=1, config=CONFIG)
    writer = daemon.client(timeout_ms=5000)
    reader = daemon.client(timeout_ms=5000, local_reads=False)  # every read served by the shard
    acknowledged = {}
    for i in range(40):  # a few closed files before the shortage
        key = f"nofile:before:{i}".encode()
        writer.set(key, VALUE)
        acknowledged[key] = VALUE
    assert reader.get(b"nofile:before:0") == VALUE  # both connections exist before the shortage
    shard = psutil.Process(writer.hello()["pid"])
    soft, hard = shard.rlimit(resource.RLIMIT_NOFILE)

    shard.rlimit(resource.RLIMIT_NOFILE, (_lowest_free_fd(shard.pid), hard))
    failures, internal = [], []
    try:
        for i in range(40):  # two rotations and more
            key = f"nofile:during:{i}".encode()
            try:
                writer.set(key, VALUE)
                acknowledged[key] = VALUE
            except FerricError as exc:
                (internal if _internal(exc) else failures).append(f"set {key}: {exc}")
            for read_key in (key, b"nofile:before:0", b"nofile:before:39"):
                try:
                    value = reader.get(read_key)
                    assert value is None or value == VALUE
                except FerricError as exc:
                    (internal if _internal(exc) else failures).append(f"get {read_key}: {exc}")
    finally:
        if shard.is_running():
            shard.rlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert failures, "the descriptor shortage never reached a write: the test did not test anything"
    assert not internal, internal[:5]

    # Descriptors are free again: writes succeed, from this shard or its replacement.
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while True:
        try:
            writer.set(b"nofile:after", VALUE)
            break
        except FerricError as exc:
            assert not _internal(exc), str(exc)
            assert time.monotonic() < deadline, f"writes still fail: {exc}\n{daemon.stderr()[-3000:]}"
            time.sleep(0.1)
    acknowledged[b"nofile:after"] = VALUE
    for i in range(40):  # rotations work again
        key = f"nofile:later:{i}".encode()
        writer.set(key, VALUE)
        acknowledged[key] = VALUE
    assert reader.mget(list(acknowledged)) == list(acknowledged.values())
    assert daemon.stop() == 0
