"""Merges and expiry in a running ferricd: under load with local readers, killed at chosen points, copied mid-merge.

Every test runs real daemons. Merge points are chosen through FERRICD_MERGE_HOOK
(ferricd/storage/merge_points.py): "<point> pause" holds a merge there while the
shard keeps serving, "<point> kill" makes the shard SIGKILL itself there.
"""

import io
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from ferric_ipc.client import Client
from ferric_ipc.errors import FerricError
from ferric_ipc.file_layout import shard_dir
from ferricd.compact import compact
from ferricd.storage import BitcaskStore, StoreSettings
from ferricd.storage.merge_points import HOOK_ENV, POINTS
from tests.daemon.conftest import keys_on_shard
from tests.daemon.local_reads_helpers import decode_value, make_value, reader_main, writer_main

SPAWN = multiprocessing.get_context("spawn")
WAIT_S = 30  # bound on every wait for a shard or a merge (none should come near it)


def wait_for(condition, what, timeout_s=WAIT_S, interval_s=0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def call(client, shard, op):
    """One protocol op on one shard, retried while the shard restarts."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return client._call(shard, op, [])
        except FerricError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def merge_and_wait(client, shard):
    """Ask ``shard`` for a merge and wait for its summary."""
    merge_id = call(client, shard, "merge")["merge_id"]
    return wait_for(lambda: _ended(call(client, shard, "merge_status"), merge_id), f"merge {merge_id} of {shard}")


def _ended(status, merge_id):
    last = status["last"]
    return last if last is not None and last["merge_id"] >= merge_id else None


def new_shard_pid(client, shard, old_pid):
    def answered():
        try:
            pid = client.hello(shard=shard)["pid"]
        except FerricError:
            return None
        return pid if pid != old_pid else None

    return wait_for(answered, f"shard {shard} to come back")


def disk_bytes(directory):
    return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory)
               if name.endswith(".data"))


# -- merges under load ----------------------------------------------------------------------------


LOAD_CONFIG = """
[storage]
max_file_bytes = "256KiB"
fsync = "never"
merge_trigger_dead_bytes = "128KiB"
"""
LOAD_SECONDS = 6
FLOOR_BYTES = 128 * 1024


@pytest.mark.timeout(180)
def test_writers_and_local_readers_through_many_merges(make_daemon):
    """Readers never see a wrong, old or missing value while merges replace the files they map, nor die."""
    daemon = make_daemon(shards=2, config=LOAD_CONFIG)
    control = daemon.client(timeout_ms=2000, local_reads=False)
    keys = [f"merge:k{i}".encode() for i in range(64)]
    rng = random.Random(5)
    control.mset({key: make_value(key, 0, rng) for key in keys})

    ready_q, result_q = SPAWN.Queue(), SPAWN.Queue()
    start_evt, stop_evt, verify_evt = SPAWN.Event(), SPAWN.Event(), SPAWN.Event()
    acked = SPAWN.RawArray("q", len(keys))
    procs = [SPAWN.Process(target=writer_main, name=f"writer-{w}", daemon=True,
                           args=(daemon.run_dir, w, keys, acked, ready_q, start_evt, stop_evt, result_q, 10 + w, 2000))
             for w in range(2)]
    procs += [SPAWN.Process(target=reader_main, name=f"reader-{r}", daemon=True,
                            args=(daemon.run_dir, r, keys, acked, ready_q, start_evt, stop_evt, verify_evt, result_q,
                                  20 + r, 2000, r == 1))
              for r in range(2)]
    results = []
    try:
        for proc in procs:
            proc.start()
        for _ in procs:
            ready_q.get(timeout=90)
        merges_before = sum(s["merges"] for s in control.info())
        start_evt.set()
        time.sleep(LOAD_SECONDS)
        stop_evt.set()
        while sum(r["role"] == "writer" for r in results) < 2:
            results.append(result_q.get(timeout=60))
        verify_evt.set()
        while len(results) < len(procs):
            results.append(result_q.get(timeout=60))
    finally:
        stop_evt.set()
        start_evt.set()
        verify_evt.set()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()

    unexpected = [u for r in results for u in r["unexpected"]]
    assert not unexpected, "\n".join(unexpected)
    assert [proc.exitcode for proc in procs] == [0] * len(procs)  # no reader (or writer) died
    readers = [r for r in results if r["role"] == "reader"]
    writers = [r for r in results if r["role"] == "writer"]
    info = control.info()
    merges = sum(s["merges"] for s in info) - merges_before
    assert merges >= 3, info
    assert all(r["local"] > r["fallback"] for r in readers), readers
    # At the end every key holds its last acknowledged version, for the readers' long-lived clients too.
    expected = {}
    for w in writers:
        expected.update({bytes.fromhex(k): v for k, v in w["versions"].items()})
    for key, value in zip(keys, control.mget(keys)):
        assert decode_value(value)[1] == expected.get(key, 0), key
    for r in readers:
        assert {bytes.fromhex(k): v for k, v in r["final"].items()} == {key: expected.get(key, 0) for key in keys}
    assert sum(r["violations"] for r in readers) == 0, [s for r in readers for s in r["samples"]]

    # Once writes stop, the automatic merges bring each shard within 2 x live + the dead-bytes floor.
    def within_bound():
        stats = control.info()
        return all(not s["merging"] and s["data_bytes"] <= 2 * s["live_bytes"] + FLOOR_BYTES for s in stats)

    wait_for(within_bound, "disk use within 2 x live bytes + the floor", timeout_s=15, interval_s=0.2)
    for shard in range(2):
        on_disk = disk_bytes(shard_dir(daemon.data_dir, shard))
        live = control.info()[shard]["live_bytes"]
        assert on_disk <= 2 * live + FLOOR_BYTES, (shard, on_disk, live)


# -- a shard killed at each point of a merge --------------------------------------------------------


KILL_CONFIG = """
[daemon]
restart_backoff_initial_ms = 50
restart_backoff_max_ms = 200
[storage]
max_file_bytes = "16KiB"
merge_auto = false
"""


class ShardModel:
    """Acknowledged writes to one shard's keys, applied through a client; ``check`` reads them all back."""

    def __init__(self, client, keys, rng):
        self.client, self.keys, self.rng = client, keys, rng
        self.values = {}
        self.version = 0

    def random_ops(self, count):
        for _ in range(count):
            key = self.rng.choice(self.keys)
            self.version += 1
            roll = self.rng.random()
            if roll < 0.6 or key not in self.values:
                value = f"{key.decode()}={self.version}|".encode() + bytes(self.rng.randrange(0, 600))
                ttl = self.rng.choice([None, 300_000])
                assert self.client.set(key, value, ttl_ms=ttl) is True
                self.values[key] = (value, ttl is not None)
            elif roll < 0.8:
                assert self.client.delete(key) == 1
                del self.values[key]
            elif roll < 0.9:
                assert self.client.expire(key, 600_000) is True
                self.values[key] = (self.values[key][0], True)
            else:
                assert self.client.persist(key) == self.values[key][1]
                self.values[key] = (self.values[key][0], False)

    def check(self, where):
        for key in self.keys:
            value, has_ttl = self.values.get(key, (None, False))
            assert self.client.get(key) == value, (where, key)
            ttl = self.client.pttl(key)
            assert (ttl > 0 if has_ttl else ttl == (-1 if value is not None else -2)), (where, key, ttl)


@pytest.mark.timeout(180)
def test_sigkill_at_every_merge_point_loses_nothing_acknowledged(make_daemon):
    daemon = make_daemon(shards=2, start=False, config=KILL_CONFIG)
    hook = os.path.join(daemon.base, "merge-hook")
    daemon.env = {**os.environ, HOOK_ENV: hook}
    daemon.start()
    client = daemon.client(timeout_ms=3000)
    model = ShardModel(client, keys_on_shard(0, 120, "kill:"), random.Random(3))
    directory = shard_dir(daemon.data_dir, 0)
    for number, point in enumerate(POINTS * 2):
        model.random_ops(120)
        pid = client.hello(shard=0)["pid"]
        if number < len(POINTS):
            # The merge waits at the point while the shard serves writes; then the shard is killed.
            with open(hook, "w") as f:
                f.write(f"{point} pause")
            call(client, 0, "merge")
            wait_for(lambda: os.path.exists(hook + ".reached"), f"the merge to reach {point}")
            model.random_ops(60)
            os.kill(pid, signal.SIGKILL)
        else:
            # The shard kills itself exactly at the point.
            with open(hook, "w") as f:
                f.write(f"{point} kill")
            try:
                client._call(0, "merge", [])
            except FerricError:  # the shard may die before its answer leaves: asking again would kill the next
                pass
        new_shard_pid(client, 0, pid)
        os.unlink(hook)
        if os.path.exists(hook + ".reached"):
            os.unlink(hook + ".reached")
        model.check(point)
        assert not [name for name in os.listdir(directory) if name.endswith(".tmp")]
    assert "(killed by SIGKILL)" in daemon.stderr()
    summary = merge_and_wait(client, 0)  # and a merge with nobody in the way
    assert summary["state"] == "done"
    model.check("after a clean merge")


# -- a byte-by-byte copy during a merge (power loss) ---------------------------------------------------


COPY_CONFIG = """
[storage]
max_file_bytes = "32KiB"
fsync = "always"
merge_auto = false
"""


def copy_directory(source, target):
    """Copy ``source`` file by file as it is at this moment, as a power cut would leave it.

    Every file is opened before any is copied (retrying if one vanished between the listing
    and the open), so a file deleted while the copy runs is still copied whole.
    """
    while True:
        names = sorted(os.listdir(source))
        fds = {}
        try:
            for name in names:
                fds[name] = os.open(os.path.join(source, name), os.O_RDONLY)
        except FileNotFoundError:
            for fd in fds.values():
                os.close(fd)
            continue
        break
    os.makedirs(target)
    for name, fd in fds.items():
        with open(os.path.join(target, name), "wb") as out:
            while chunk := os.read(fd, 1 << 16):
                out.write(chunk)
        os.close(fd)


class LoggedWriter(threading.Thread):
    """Writes keys on every shard without pause; ``attempted[i]`` is op i, ``acked`` counts ops answered."""

    def __init__(self, run_dir, keys):
        super().__init__(daemon=True)
        self.client = Client(run_dir, timeout_ms=5000)
        self.keys = keys
        self.attempted = []  # (key, value or None)
        self.acked = 0
        self.stop = threading.Event()
        self.error = None

    def run(self):
        rng = random.Random(11)
        try:
            while not self.stop.is_set():
                key = rng.choice(self.keys)
                op = len(self.attempted)
                if rng.random() < 0.15:
                    self.attempted.append((key, None))
                    self.client.delete(key)
                else:
                    value = f"{key.decode()}#{op}".encode() + bytes(rng.randrange(0, 400))
                    self.attempted.append((key, value))
                    self.client.set(key, value)
                self.acked = op + 1
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.client.close()

    def allowed(self, acked):
        """Per key: the values a copy begun once ``acked`` ops were acknowledged may hold."""
        allowed = {key: {None} for key in self.keys}
        for key, value in self.attempted[:acked]:
            allowed[key] = {value}
        for key, value in self.attempted[acked:]:
            allowed[key].add(value)
        return allowed


@pytest.mark.timeout(180)
def test_a_copy_taken_during_a_merge_holds_every_acknowledged_write(make_daemon, tmp_path):
    daemon = make_daemon(shards=2, start=False, config=COPY_CONFIG)
    hook = os.path.join(daemon.base, "merge-hook")
    daemon.env = {**os.environ, HOOK_ENV: hook}
    daemon.start()
    client = daemon.client(timeout_ms=5000)
    keys = [f"copy:{i}".encode() for i in range(150)]
    writer = LoggedWriter(daemon.run_dir, keys)
    writer.start()
    copies = []
    try:
        wait_for(lambda: writer.acked > 1500, "the writer to fill several files", interval_s=0.05)
        for number, point in enumerate(["copying", "output_written", "output_renamed", "switching", "switched",
                                        "input_deleted", None]):
            shard = number % 2
            if point is not None:
                with open(hook, "w") as f:
                    f.write(f"{point} pause")
                merge_id = call(client, shard, "merge")["merge_id"]
                wait_for(lambda: os.path.exists(hook + ".reached"), f"the merge to reach {point}")
            else:
                merge_id = call(client, shard, "merge")["merge_id"]  # copied while it runs, wherever it is
            acked = writer.acked
            target = str(tmp_path / f"copy-{number}")
            for shard_id in range(2):
                copy_directory(shard_dir(daemon.data_dir, shard_id), os.path.join(target, f"shard-{shard_id}"))
            copies.append((point, target, writer.allowed(acked)))
            if point is not None:
                os.unlink(hook)
                os.unlink(hook + ".reached")
            wait_for(lambda: _ended(call(client, shard, "merge_status"), merge_id), f"merge at {point} to end")
            time.sleep(0.2)  # more writes between merges
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    assert writer.error is None, writer.error
    for point, target, allowed in copies:
        for shard_id in range(2):
            store = BitcaskStore(os.path.join(target, f"shard-{shard_id}"), StoreSettings())
            try:
                for key in keys:
                    if key in allowed and (client._shard_of(key) == shard_id):
                        assert store.get(key) in allowed[key], (point, key)
            finally:
                store.close()


# -- expiry ----------------------------------------------------------------------------------------------


EXPIRY_CONFIG = """
[storage]
merge_trigger_dead_bytes = "16KiB"
"""


def test_expired_keys_leave_info_and_the_disk_without_being_read(make_daemon):
    daemon = make_daemon(shards=2, config=EXPIRY_CONFIG)
    client = daemon.client(local_reads=False)
    with client.pipeline() as pipe:
        for i in range(600):
            pipe.set(f"short:{i}", b"s" * 512, ttl_ms=300)
        for i in range(150):
            pipe.set(f"long:{i}", b"l" * 512, ttl_ms=600_000)
            pipe.set(f"forever:{i}", b"f" * 512)
        pipe.execute()
    before = client.info()
    assert sum(s["keys"] for s in before) == 900
    # Nothing is read from here on: the sweep finds the expired keys, the merge takes them off the disk.
    wait_for(lambda: sum(s["keys"] for s in client.info()) == 300, "the sweep to drop 600 keys",
             interval_s=0.1)
    wait_for(lambda: all(s["data_bytes"] == s["live_bytes"] and not s["merging"] for s in client.info()),
             "a merge to leave only live bytes", interval_s=0.1)
    after = client.info()
    assert sum(s["expired"] for s in after) == 600
    assert [s["gets"] for s in after] == [s["gets"] for s in before]
    for shard in range(2):
        assert disk_bytes(shard_dir(daemon.data_dir, shard)) == after[shard]["live_bytes"]
    assert client.get("long:7") == b"l" * 512 and client.get("short:7") is None
    assert 0 < client.pttl("long:7") <= 600_000


def test_a_ttl_refresh_writes_the_key_not_the_value(make_daemon):
    daemon = make_daemon(shards=1, config='[storage]\nmerge_auto = false\n')
    client = daemon.client()
    client.set("sess:abc", b"v" * 4096, ttl_ms=60_000)
    before = client.info()[0]["data_bytes"]
    for _ in range(200):
        assert client.expire("sess:abc", 60_000) is True
    assert client.getex("sess:abc", ttl_ms=90_000) == b"v" * 4096
    assert client.persist("sess:abc") is True
    assert client.info()[0]["data_bytes"] - before == 202 * (29 + len(b"sess:abc"))
    client.set("{x}:k", b"w" * 4096)
    before = client.info()[0]["data_bytes"]
    with client.transaction("x") as tx:  # inside a transaction too
        tx.expire("{x}:k", 50_000)
        tx.get("{x}:k")
        assert tx.execute() == [True, b"w" * 4096]
    assert client.info()[0]["data_bytes"] - before == 29 + len(b"{x}:k")
    assert client.get("sess:abc") == b"v" * 4096 and client.pttl("sess:abc") == -1
    daemon.stop()
    daemon.start()
    assert client.get("sess:abc") == b"v" * 4096 and client.pttl("sess:abc") == -1
    assert client.get("{x}:k") == b"w" * 4096 and 0 < client.pttl("{x}:k") <= 50_000


# -- one merge at a time, and ferricctl compact ------------------------------------------------------------


def test_one_shard_merges_at_a_time(make_daemon):
    daemon = make_daemon(shards=2, start=False, config='[storage]\nmerge_auto = false\nmax_file_bytes = "8KiB"\n')
    hook = os.path.join(daemon.base, "merge-hook")
    daemon.env = {**os.environ, HOOK_ENV: hook}
    daemon.start()
    client = daemon.client()
    for round_no in range(5):
        client.mset({f"k{i}": f"{round_no}".encode() * 100 for i in range(100)})
    with open(hook, "w") as f:
        f.write("switched pause")
    first = call(client, 0, "merge")["merge_id"]
    wait_for(lambda: os.path.exists(hook + ".reached"), "shard 0's merge to pause")
    second = call(client, 1, "merge")["merge_id"]
    time.sleep(0.5)  # shard 1 would have started by now if nothing held it back
    assert call(client, 0, "merge_status")["state"] == "merging"
    assert call(client, 1, "merge_status")["state"] == "waiting"
    os.unlink(hook)
    assert wait_for(lambda: _ended(call(client, 0, "merge_status"), first), "shard 0")["state"] == "done"
    assert wait_for(lambda: _ended(call(client, 1, "merge_status"), second), "shard 1")["state"] == "done"
    assert client.mget([f"k{i}" for i in range(100)]) == [b"4" * 100] * 100


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_ferricctl_compact_shows_progress_and_a_summary(make_daemon):
    daemon = make_daemon(shards=2, config='[storage]\nmerge_auto = false\n')
    client = daemon.client()
    for round_no in range(10):
        client.mset({f"k{i}": bytes([round_no]) * 1000 for i in range(200)})
    argv = [sys.executable, "-m", "ferricd.ctl", "--run-dir", daemon.run_dir, "compact"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["shard 0", "shard 1", "all"]
    freed = re.search(r"all: +(\d+) files?, ([\d.]+) MiB -> (\d+) files?, ([\d.]+) MiB \(([\d.]+) MiB freed\)", lines[2])
    assert freed and float(freed.group(2)) > 1.5 and float(freed.group(4)) < 0.3, lines
    assert subprocess.run(argv + ["--shard", "7"], capture_output=True, text=True, timeout=60).returncode == 2

    client.mset({f"k{i}": b"again" * 200 for i in range(200)})
    terminal = _Terminal()
    assert compact(client, shard=1, out=terminal) == 0
    shown = terminal.getvalue()
    assert "\rshard 1 [" in shown and "100%" in shown and shown.rstrip().splitlines()[-1].startswith("shard 1: ")


def test_readers_let_go_of_files_a_merge_deleted(make_daemon):
    daemon = make_daemon(shards=1, config='[storage]\nmerge_auto = false\nmax_file_bytes = "8KiB"\n')
    client = daemon.client()
    for round_no in range(4):
        client.mset({f"k{i}": f"{round_no}".encode() * 200 for i in range(60)})
    keys = [f"k{i}" for i in range(60)]
    assert client.mget(keys) == [b"3" * 200] * 60  # read locally: maps the data files
    directory = shard_dir(daemon.data_dir, 0)

    def deleted_maps():
        with open("/proc/self/maps") as f:
            return [line for line in f if directory in line and "(deleted)" in line]

    assert merge_and_wait(client, 0)["state"] == "done"
    assert client.mget(keys) == [b"3" * 200] * 60  # the old files are gone: served all the same
    time.sleep(0.15)  # readers look at files_generation every 100 ms while they read
    assert client.mget(keys) == [b"3" * 200] * 60
    assert deleted_maps() == []
    assert client.read_counts["local"] >= 180


MAP_AND_TOUCH = r"""
import mmap, os, sys
directory = sys.argv[1]
maps = []
for name in sorted(os.listdir(directory)):
    if name.endswith(".data") and os.path.getsize(os.path.join(directory, name)):
        with open(os.path.join(directory, name), "rb") as f:
            maps.append(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ))
print(len(maps), flush=True)
sys.stdin.readline()  # the merge runs now
print(sum(sum(m[i] for i in range(0, len(m), 512)) for m in maps), flush=True)  # touches every page
"""


def test_files_mapped_before_a_merge_stay_readable_after_it(make_daemon):
    """A merge never truncates or rewrites a file: a process that mapped one before reads all of it after."""
    daemon = make_daemon(shards=1, config='[storage]\nmerge_auto = false\nmax_file_bytes = "8KiB"\n')
    client = daemon.client()
    for round_no in range(4):
        client.mset({f"k{i}": f"{round_no}".encode() * 200 for i in range(60)})
    child = subprocess.Popen([sys.executable, "-c", MAP_AND_TOUCH, shard_dir(daemon.data_dir, 0)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert int(child.stdout.readline()) >= 4
        assert merge_and_wait(client, 0)["state"] == "done"
        child.stdin.write("go\n")
        child.stdin.flush()
        assert int(child.stdout.readline()) > 0
        assert child.wait(timeout=30) == 0  # a truncated file would have killed it with SIGBUS
    finally:
        child.kill()
