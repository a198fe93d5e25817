"""Lifecycle benchmark: latency while a shard merges, merge throughput, disk use after an hour of session traffic.

Measures, in one run, against ferricd processes started for it (fsync = "always", the default):

1. get (a local read from the mapped files) and set (a round trip) latency, p50 and p99, on a
   shard that is idle and on the same shard while it merges, with the ratio of the two
   (target: p99 while merging within 3x of idle);
2. merge throughput: MB/s of live data copied, alone and while serving the latency load;
3. disk bytes / live bytes after an hour's worth of Flask-style session traffic, replayed at
   full speed by 4 workers: every request refreshes its session's TTL (Flask's
   SESSION_REFRESH_EACH_REQUEST), some change a field, users log in and out (target: at
   most 2). Alongside, the bytes the same traffic appends when every refresh rewrites the
   session, as it did before TTL-only records.

    python3 benchmarks/lifecycle_bench.py           # a few minutes
    python3 benchmarks/lifecycle_bench.py --quick   # smoke run, about a minute
"""

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import msgpack

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ferric_ipc.client import Client  # noqa: E402
from ferric_ipc.errors import FerricError  # noqa: E402

# The session hour: 20,000 active sessions and 360,000 requests, a site at 100 requests a second.
FULL = {"keys": 40_000, "value_bytes": 1024, "rounds": 3, "sets": 2_000, "sessions": 20_000, "requests": 360_000}
# Smoke run: its sessions hold less live data than merge_trigger_dead_bytes, so its disk / live may pass 2.
QUICK = {"keys": 10_000, "value_bytes": 1024, "rounds": 3, "sets": 500, "sessions": 4_000, "requests": 20_000}

TARGET_P99_RATIO = 3.0  # p99 while merging / p99 idle, at most
TARGET_DISK_RATIO = 2.0  # disk bytes / live bytes after the session hour, at most
RECORD_HEADER_BYTES = 29
SESSION_TTL_MS = 31 * 24 * 3600 * 1000  # Flask's PERMANENT_SESSION_LIFETIME default: 31 days
SESSION_WORKERS = 4
BATCH = 50  # sets per latency batch
GETS_PER_SET = 10  # gets per set in a batch


# -- a daemon for the benchmark ------------------------------------------------------------------


class Daemon:
    """``python -m ferricd`` in a temporary directory; ``stop()`` ends it."""

    def __init__(self, base, shards, config):
        self.base = base
        os.makedirs(base)
        self.run_dir = os.path.join(base, "run")
        self.data_dir = os.path.join(base, "data")
        config_path = os.path.join(base, "ferricd.toml")
        with open(config_path, "w") as f:
            f.write(config)
        self.log = open(os.path.join(base, "ferricd.log"), "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ferricd", "--data-dir", self.data_dir, "--run-dir", self.run_dir,
             "--shards", str(shards), "--config", config_path],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(self.run_dir, timeout_ms=500) as client:
                    client.ping()
                return
            except FerricError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"ferricd did not start; see {self.log.name}") from None
                time.sleep(0.05)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def merge_status(client, shard=0):
    return client._call(shard, "merge_status", [])


def start_merge(client, shard=0):
    return client._call(shard, "merge", [])["merge_id"]


def wait_merge(client, merge_id, shard=0):
    while True:
        last = merge_status(client, shard)["last"]
        if last is not None and last["merge_id"] >= merge_id:
            return last
        time.sleep(0.01)


# -- measurements ---------------------------------------------------------------------------------


def percentiles(samples_ns):
    ordered = sorted(samples_ns)
    return ordered[len(ordered) // 2] / 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000


def timed(call, *args):
    started = time.perf_counter_ns()
    call(*args)
    return time.perf_counter_ns() - started


def latency_and_merge(args, base):
    """Phases 1 and 2: one shard, merges only when asked for."""
    daemon = Daemon(os.path.join(base, "latency"), 1, '[storage]\nmerge_auto = false\n')
    rng = random.Random(1)
    keys = [f"bench:{i:07d}".encode() for i in range(args.keys)]
    value = bytes(args.value_bytes)
    try:
        with Client(daemon.run_dir, timeout_ms=10_000) as client:
            for _ in range(args.rounds):  # live data, plus rounds - 1 times as much dead
                for start in range(0, len(keys), 1000):
                    client.mset({key: value for key in keys[start:start + 1000]})
            alone = wait_merge(client, start_merge(client))  # a merge with nothing else to do
            for _ in range(args.rounds - 1):
                for start in range(0, len(keys), 1000):
                    client.mset({key: value for key in keys[start:start + 1000]})
            for key in keys[:2000]:
                client.get(key)  # map the files before timing

            def batch():
                """The same mix idle and merging: gets then sets, so gets also meet keys just written."""
                return ([timed(client.get, rng.choice(keys)) for _ in range(BATCH * GETS_PER_SET)],
                        [timed(client.set, rng.choice(keys), value) for _ in range(BATCH)])

            idle_gets, idle_sets = [], []
            while len(idle_sets) < args.sets:
                gets, sets = batch()
                idle_gets += gets
                idle_sets += sets

            busy_gets, busy_sets, merges = [], [], []
            while len(busy_sets) < args.sets:
                merge_id = start_merge(client)
                while True:
                    gets, sets = batch()
                    status = merge_status(client)
                    if status["state"] != "merging" or status["merge_id"] != merge_id:
                        break  # the batch may have outlasted the merge: not counted
                    busy_gets += gets
                    busy_sets += sets
                merges.append(wait_merge(client, merge_id))
    finally:
        daemon.stop()
    return {
        "get_idle": percentiles(idle_gets), "get_merging": percentiles(busy_gets),
        "set_idle": percentiles(idle_sets), "set_merging": percentiles(busy_sets),
        "merge_alone": alone, "merges_under_load": merges,
    }


def session_value(rng, fields=12):
    """About 2 KiB of msgpack map, like a Flask session with a user, a cart and some flags."""
    return msgpack.packb({f"field{i}": rng.randbytes(150) for i in range(fields)} | {"_user": rng.randrange(10**9)})


def session_hour(args, base):
    """Phase 3: 2 shards with the default merge settings; 4 workers replay the hour at full speed."""
    daemon = Daemon(os.path.join(base, "sessions"), 2, "")
    appended = {"actual": 0, "rewriting": 0}  # bytes the replay appends, and would if refreshes rewrote values
    ratios = []
    try:
        with Client(daemon.run_dir, timeout_ms=10_000) as client:
            rng = random.Random(2)
            sessions = [f"session:{rng.randbytes(16).hex()}".encode() for _ in range(args.sessions)]
            sizes = {}
            for start in range(0, len(sessions), 500):
                batch = {sid: session_value(rng) for sid in sessions[start:start + 500]}
                client.mset(batch, ttl_ms=SESSION_TTL_MS)
                sizes.update((sid, len(v)) for sid, v in batch.items())
            lock = threading.Lock()
            per_worker = args.requests // SESSION_WORKERS
            stop = threading.Event()

            def worker(number):
                wrng = random.Random(100 + number)
                written = rewriting = 0
                with Client(daemon.run_dir, timeout_ms=10_000) as own:
                    for _ in range(per_worker):
                        with lock:
                            sid = wrng.choice(sessions)
                        roll = wrng.random()
                        if roll < 0.02:  # a login: a new session
                            new = f"session:{wrng.randbytes(16).hex()}".encode()
                            data = session_value(wrng)
                            own.set(new, data, ttl_ms=SESSION_TTL_MS)
                            with lock:
                                sessions.append(new)
                                sizes[new] = len(data)
                            written += RECORD_HEADER_BYTES + len(new) + len(data)
                            rewriting += RECORD_HEADER_BYTES + len(new) + len(data)
                        elif roll < 0.03:  # a logout
                            if own.delete(sid):
                                written += RECORD_HEADER_BYTES + len(sid)
                                rewriting += RECORD_HEADER_BYTES + len(sid)
                                with lock:
                                    if sid in sizes:
                                        sessions.remove(sid)
                                        del sizes[sid]
                        elif roll < 0.13:  # the request changed the session: one field, and the TTL
                            own.patch(sid, set={"field0": wrng.randbytes(150)}, ttl_ms=SESSION_TTL_MS)
                            size = RECORD_HEADER_BYTES + len(sid) + sizes.get(sid, 0)
                            written += size
                            rewriting += size
                        else:  # an unchanged session: Flask refreshes its expiry
                            own.expire(sid, SESSION_TTL_MS)
                            written += RECORD_HEADER_BYTES + len(sid)
                            rewriting += RECORD_HEADER_BYTES + len(sid) + sizes.get(sid, 0)
                with lock:
                    appended["actual"] += written
                    appended["rewriting"] += rewriting

            def sample():
                with Client(daemon.run_dir, timeout_ms=10_000) as watcher:
                    while not stop.wait(0.5):
                        info = watcher.info()
                        ratios.append(sum(s["data_bytes"] for s in info) / max(1, sum(s["live_bytes"] for s in info)))

            started = time.monotonic()
            workers = [threading.Thread(target=worker, args=(n,)) for n in range(SESSION_WORKERS)]
            watcher = threading.Thread(target=sample, daemon=True)
            watcher.start()
            for thread in workers:
                thread.start()
            for thread in workers:
                thread.join()
            elapsed = time.monotonic() - started
            stop.set()
            info = client.info()
    finally:
        daemon.stop()
    disk = {"data": 0, "all": 0}
    for shard in range(2):
        directory = os.path.join(daemon.data_dir, f"shard-{shard}")
        for name in os.listdir(directory):
            size = os.path.getsize(os.path.join(directory, name))
            disk["all"] += size if name.endswith((".data", ".hint")) else 0
            disk["data"] += size if name.endswith(".data") else 0
    live = sum(s["live_bytes"] for s in info)
    return {
        "requests": per_worker * SESSION_WORKERS, "elapsed_s": elapsed, "live": live,
        "data_bytes": sum(s["data_bytes"] for s in info), "merges": sum(s["merges"] for s in info),
        "disk": disk, "appended": appended, "max_ratio": max(ratios, default=0.0),
    }


# -- report ---------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer operations")
    parser.add_argument("--dir", default=None, help="parent directory for the daemons (default: system temp)")
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        setattr(args, name, value)
    base = tempfile.mkdtemp(prefix="fl-", dir=args.dir or "/tmp")
    try:
        print(f"# lifecycle_bench on {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"{args.keys} keys of {args.value_bytes} B, {args.sessions} sessions, {args.requests} requests")
        latency = latency_and_merge(args, base)
        sessions = session_hour(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print("\n## Latency on one shard, idle and while it merges (us)")
    print(f"{'op':<5} {'idle p50':>9} {'idle p99':>9} {'merging p50':>12} {'merging p99':>12} {'p99 ratio':>10}")
    verdicts = []
    for op in ("get", "set"):
        idle, busy = latency[f"{op}_idle"], latency[f"{op}_merging"]
        ratio = busy[1] / idle[1]
        verdicts.append((f"{op} p99 while merging <= {TARGET_P99_RATIO:g}x idle", ratio <= TARGET_P99_RATIO,
                         f"{ratio:.2f}x"))
        print(f"{op:<5} {idle[0]:>9.1f} {idle[1]:>9.1f} {busy[0]:>12.1f} {busy[1]:>12.1f} {ratio:>9.2f}x")

    print("\n## Merge throughput (MB/s of live data copied)")
    alone = latency["merge_alone"]
    loaded = latency["merges_under_load"]
    alone_rate = alone["bytes_copied"] / alone["elapsed_ms"] / 1000
    loaded_rate = (sum(m["bytes_copied"] for m in loaded) / sum(m["elapsed_ms"] for m in loaded) / 1000)
    print(f"alone:             {alone_rate:7.1f} MB/s ({alone['bytes_copied'] / 1e6:.1f} MB in "
          f"{alone['elapsed_ms'] / 1000:.2f} s; {alone['bytes_before'] / 1e6:.1f} -> {alone['bytes_after'] / 1e6:.1f} MB)")
    print(f"under the latency load: {loaded_rate:7.1f} MB/s ({len(loaded)} merges)")

    print("\n## An hour of Flask-style session traffic, replayed at full speed (2 shards, default merge settings)")
    s = sessions
    ratio = s["disk"]["data"] / s["live"]
    print(f"requests: {s['requests']} in {s['elapsed_s']:.1f} s ({s['requests'] / s['elapsed_s']:.0f}/s), "
          f"merges: {s['merges']}")
    print(f"live bytes: {s['live'] / 2**20:.1f} MiB; data files: {s['disk']['data'] / 2**20:.1f} MiB "
          f"(with hints {s['disk']['all'] / 2**20:.1f} MiB)")
    print(f"disk / live: {ratio:.2f} (with hints {s['disk']['all'] / s['live']:.2f}; "
          f"highest seen during the replay {s['max_ratio']:.2f})")
    print(f"bytes appended: {s['appended']['actual'] / 2**20:.1f} MiB; had every refresh rewritten the session: "
          f"{s['appended']['rewriting'] / 2**20:.1f} MiB ({s['appended']['rewriting'] / s['appended']['actual']:.1f}x)")
    verdicts.append((f"disk / live after the hour <= {TARGET_DISK_RATIO:g}", ratio <= TARGET_DISK_RATIO,
                     f"{ratio:.2f}"))

    print("\n## Targets")
    for name, passed, figure in verdicts:
        print(f"{'PASS' if passed else 'MISS'}  {name}: {figure}")


if __name__ == "__main__":
    main()
