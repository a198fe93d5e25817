"""Random bytes written over a running shard's mapped key directory, for a real ferricd: no request hangs in a
probe that never ends; the shard answers with an error, exits, and the shard that replaces it rebuilds the
table from the data files, with every write acknowledged before still there."""

import random
import time

from ferric_ipc.errors import FerricError, FerricTimeoutError
from ferric_ipc.file_layout import index_path
from ferric_ipc.index_layout import HEADER_BYTES

REPLACED_TIMEOUT_S = 30


def test_a_damaged_live_table_makes_the_shard_rebuild_it_without_hanging(make_daemon):
    daemon = make_daemon(shards=1)
    client = daemon.client(timeout_ms=3000, local_reads=False)  # every read probes the shard's own table
    written = {f"damage:{i}".encode(): b"v%d" % i for i in range(300)}
    client.mset(written)
    pid = client.hello()["pid"]

    with open(index_path(daemon.run_dir, 0), "r+b") as f:  # root, or the daemon's user, could do this
        size = f.seek(0, 2)
        f.seek(HEADER_BYTES)
        f.write(random.Random(3).randbytes(size - HEADER_BYTES))  # no slot is free any more

    deadline = time.monotonic() + REPLACED_TIMEOUT_S
    while True:
        try:
            values = client.mget(list(written))
            if client.hello()["pid"] != pid:
                break
        except FerricTimeoutError as exc:
            raise AssertionError(f"a request hung on the damaged table: {exc}\n{daemon.stderr()[-3000:]}")
        except FerricError:
            pass  # the damaged shard's error, or its successor still starting
        assert time.monotonic() < deadline, daemon.stderr()[-3000:]
        time.sleep(0.05)
    assert values == list(written.values())
    assert "damaged" in daemon.stderr()
    assert daemon.stop() == 0
