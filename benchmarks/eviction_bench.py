"""Benchmark of keyspace eviction and of bounded prefix deletes, against peers computed in the same run.

1. Eviction under a Zipf workload. A cache-aside client (get; on a miss, set)
   asks for keys drawn from a Zipf distribution over --keys keys against a
   ferricd whose "cache" keyspace (lru) is bounded at --max-bytes. Reported:
   - accuracy: bytes the keyspace holds / max_bytes, sampled during the run
     (min, mean, max) and at the end;
   - hit rate, against an exact LRU of the same size in bytes computed offline
     over the same request sequence (the peer), as a ratio; and against a
     random-eviction cache of the same size, the floor an approximation
     should beat.
2. Latency of other requests during a prefix delete: a probe process times
   remote gets (round trips) on a shard holding --shard-keys keys, first while
   nothing else happens (the peer), then while another client deletes a
   prefix of --doomed keys. Reported: p50, p99 and max of both, and ratios.
3. What marking a key as used costs a local read: the same get of a 100 B
   value, answered from the mapped files, with the reader marking the access
   times and with it not marking (the peer), in alternating rounds; the
   median round of each.

    python3 benchmarks/eviction_bench.py            # full run, a few minutes
    python3 benchmarks/eviction_bench.py --quick    # smoke run, under a minute
"""

import argparse
import bisect
import itertools
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ferric_ipc import Client  # noqa: E402
from ferric_ipc.file_layout import RECORD_HEADER_BYTES  # noqa: E402

FULL = {"keys": 50_000, "requests": 300_000, "max_bytes": 4 << 20, "shard_keys": 300_000, "doomed": 30_000}
QUICK = {"keys": 10_000, "requests": 40_000, "max_bytes": 1 << 20, "shard_keys": 50_000, "doomed": 5_000}
SKEWS = (0.8, 0.99, 1.2)  # Zipf exponents: from a flat to a steep popularity curve
VALUE_BYTES = 1000
SAMPLE_EVERY = 2_000  # requests between two samples of the bytes held
SEED = 42
START_TIMEOUT_S = 30


# -- a daemon -------------------------------------------------------------------------


class Daemon:
    """``python -m ferricd`` in a fresh directory, with ``config`` as its file."""

    def __init__(self, shards, config):
        self.base = tempfile.mkdtemp(prefix="fb-", dir="/tmp")  # short: socket paths are limited
        self.run_dir = os.path.join(self.base, "run")
        config_path = os.path.join(self.base, "ferricd.toml")
        with open(config_path, "w") as f:
            f.write(config)
        self.log = open(os.path.join(self.base, "ferricd.log"), "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ferricd", "--config", config_path, "--data-dir", os.path.join(self.base, "data"),
             "--run-dir", self.run_dir, "--shards", str(shards)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"ferricd did not start; its log is in {self.base}")
            try:
                with Client(self.run_dir, timeout_ms=500) as probe:
                    probe.ping()
                break
            except Exception:  # not up yet
                time.sleep(0.05)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        shutil.rmtree(self.base, ignore_errors=True)


# -- 1. eviction under Zipf ----------------------------------------------------------------


def zipf_requests(keys, count, skew, rng):
    """``count`` key numbers in [0, keys), number k drawn with probability proportional to 1 / (k + 1) ** skew.

    The numbers are shuffled onto keys, so popularity has nothing to do with key order or slots.
    """
    cumulative = list(itertools.accumulate(1 / (k + 1) ** skew for k in range(keys)))
    total = cumulative[-1]
    names = list(range(keys))
    rng.shuffle(names)
    return [names[bisect.bisect_left(cumulative, rng.random() * total)] for _ in range(count)]


def key_of(number):
    return b"sa:%08d" % number


def record_bytes(number):
    return RECORD_HEADER_BYTES + len(key_of(number)) + VALUE_BYTES


def exact_lru_hits(requests, max_bytes):
    """Hits of a cache-aside client in front of an exact LRU holding at most ``max_bytes`` of records."""
    cache, held, hits = OrderedDict(), 0, 0
    for number in requests:
        if number in cache:
            cache.move_to_end(number)
            hits += 1
            continue
        cache[number] = True
        held += record_bytes(number)
        while held > max_bytes:
            evicted, _ = cache.popitem(last=False)
            held -= record_bytes(evicted)
    return hits


def random_eviction_hits(requests, max_bytes, rng):
    """The same with a victim chosen at random: the floor an approximate LRU should beat."""
    members, where, held, hits = [], {}, 0, 0
    for number in requests:
        if number in where:
            hits += 1
            continue
        where[number] = len(members)
        members.append(number)
        held += record_bytes(number)
        while held > max_bytes:
            at = rng.randrange(len(members))
            victim, last = members[at], members[-1]
            members[at], where[last] = last, at
            members.pop()
            del where[victim]
            held -= record_bytes(victim)
    return hits


def held_bytes(client):
    return sum(shard["keyspaces"]["cache"]["bytes"] for shard in client.info())


def run_zipf(settings, shards, skew):
    rng = random.Random(SEED)
    requests = zipf_requests(settings["keys"], settings["requests"], skew, rng)
    max_bytes = settings["max_bytes"]
    daemon = Daemon(shards, f"[keyspaces.cache]\nmax_bytes = {max_bytes}\n")
    value = b"v" * VALUE_BYTES
    hits, samples = 0, []
    try:
        with Client(daemon.run_dir, timeout_ms=10_000) as client:
            started = time.perf_counter()
            for position, number in enumerate(requests):
                key = key_of(number)
                if client.get(key) is not None:
                    hits += 1
                else:
                    client.set(key, value)
                if position % SAMPLE_EVERY == SAMPLE_EVERY - 1 and position > len(requests) // 10:
                    samples.append(held_bytes(client) / max_bytes)
            elapsed = time.perf_counter() - started
            final = held_bytes(client) / max_bytes
            local = client.read_counts["local"]
    finally:
        daemon.stop()
    exact = exact_lru_hits(requests, max_bytes)
    floor = random_eviction_hits(requests, max_bytes, random.Random(SEED))
    return {
        "skew": skew, "hit": hits / len(requests), "exact": exact / len(requests), "random": floor / len(requests),
        "held_min": min(samples), "held_mean": sum(samples) / len(samples), "held_max": max(samples),
        "held_end": final, "local_reads": local, "requests_per_s": len(requests) / elapsed,
    }


# -- 2. latency during a prefix delete -------------------------------------------------------

PROBE = textwrap.dedent("""
    import select, sys, time
    from ferric_ipc import Client
    client = Client(sys.argv[1], local_reads=False, timeout_ms=10_000)
    client.get("bulk:probe")
    print("ready", flush=True)
    for phase in ("alone", "during"):
        latencies = []
        while not select.select([sys.stdin], [], [], 0)[0]:
            started = time.perf_counter()
            client.get("bulk:probe")
            latencies.append(time.perf_counter() - started)
        sys.stdin.readline()
        latencies.sort()
        print(phase, len(latencies), latencies[len(latencies) // 2], latencies[len(latencies) * 99 // 100],
              latencies[-1], flush=True)
""")


def run_prefix_delete(settings, probe_alone_s):
    daemon = Daemon(1, '[keyspaces.default]\nfsync = "never"\n')
    try:
        with Client(daemon.run_dir, timeout_ms=30_000) as client:
            kept = settings["shard_keys"] - settings["doomed"]
            for start in range(0, kept, 10_000):
                client.mset({f"bulk:{i}": b"v" * 50 for i in range(start, min(kept, start + 10_000))})
            for start in range(0, settings["doomed"], 10_000):
                client.mset({f"doomed:{i}": b"x" * 50 for i in range(start, min(settings["doomed"], start + 10_000))})
            probe = subprocess.Popen([sys.executable, "-c", PROBE, daemon.run_dir], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
            try:
                assert probe.stdout.readline().strip() == "ready"
                time.sleep(probe_alone_s)
                probe.stdin.write("next\n")
                probe.stdin.flush()
                alone = probe.stdout.readline().split()
                started = time.perf_counter()
                deleted = client.delete_prefix("doomed:")
                delete_s = time.perf_counter() - started
                probe.stdin.write("stop\n")
                probe.stdin.flush()
                during = probe.stdout.readline().split()
            finally:
                probe.kill()
                probe.wait()
    finally:
        daemon.stop()
    assert deleted == settings["doomed"], deleted

    def figures(line):
        return {"count": int(line[1]), "p50": float(line[2]), "p99": float(line[3]), "max": float(line[4])}

    return {"alone": figures(alone), "during": figures(during), "delete_s": delete_s, "deleted": deleted}


# -- 3. the cost of marking a local read --------------------------------------------------------


def local_get_us(client, key, count):
    started = time.perf_counter()
    for _ in range(count):
        client.get(key)
    return (time.perf_counter() - started) / count * 1e6


def run_marking(reads, rounds):
    """Median µs per local get with the reader marking the access times and with it not marking (the peer).

    One daemon and one client, so nothing else differs: the reader's mapping of
    the access times is switched off and on between rounds (a private attribute:
    this measures exactly what marking adds to a hit).
    """
    daemon = Daemon(1, "")  # the built-in cache keyspace evicts: the shard publishes access times
    times = {"marking": [], "plain": []}
    try:
        with Client(daemon.run_dir) as client:
            client.set("sa:read", b"v" * 100)
            client.get("sa:read")
            time.sleep(0.2)  # past the reader's 100 ms path check, which maps the access times
            client.get("sa:read")
            (reader,) = client._readers.values()
            access = reader._access
            if access is None:
                raise SystemExit("the reader did not map the access times")
            for _ in range(rounds):
                for name in times:
                    reader._access = access if name == "marking" else None
                    # Hold off the path check (it would map the file again) for the round.
                    reader._path_checked_ns = time.monotonic_ns() + 3_600 * 10**9
                    times[name].append(local_get_us(client, "sa:read", reads))
            locals_only = client.read_counts["fallback"] == 0
    finally:
        daemon.stop()
    return {name: sorted(samples)[len(samples) // 2] for name, samples in times.items()}, locals_only


# -- report ------------------------------------------------------------------------------------


def table(header, rows):
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in [header, *rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (under a minute)")
    parser.add_argument("--shards", type=int, default=2, help="shards of the eviction daemon (default 2)")
    parser.add_argument("--keys", type=int, help="distinct keys the Zipf workload draws from")
    parser.add_argument("--requests", type=int, help="requests per Zipf run")
    parser.add_argument("--max-bytes", type=int, help="the cache keyspace's bound")
    parser.add_argument("--shard-keys", type=int, help="keys on the shard a prefix is deleted from")
    parser.add_argument("--doomed", type=int, help="keys the prefix delete removes")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    for name in settings:
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"{settings['keys']:,} keys of {VALUE_BYTES} B, {settings['requests']:,} requests, "
          f"max_bytes {settings['max_bytes']:,} (about {settings['max_bytes'] // record_bytes(0):,} entries), "
          f"{args.shards} shards")

    rows = []
    for skew in SKEWS:
        r = run_zipf(settings, args.shards, skew)
        rows.append([f"{skew}", f"{r['hit']:.3f}", f"{r['exact']:.3f}", f"{r['hit'] / r['exact']:.3f}",
                     f"{r['random']:.3f}", f"{r['held_min']:.3f}", f"{r['held_mean']:.3f}", f"{r['held_max']:.3f}",
                     f"{r['held_end']:.3f}", f"{r['requests_per_s']:,.0f}"])
    print("\n1. Eviction: cache-aside over a Zipf workload; held = bytes the keyspace holds / max_bytes, "
          "sampled after the first 10 % of requests")
    print(table(["zipf s", "hit", "exact LRU", "hit/exact", "random", "held min", "mean", "max", "end", "req/s"],
                rows))

    r = run_prefix_delete(settings, 3.0 if args.quick else 5.0)
    alone, during = r["alone"], r["during"]
    print(f"\n2. Remote gets on a shard of {settings['shard_keys']:,} keys while a prefix delete removes "
          f"{r['deleted']:,} of them ({r['delete_s']:.2f} s); the peer is the same probe with nothing else running")
    print(table(["", "gets", "p50 ms", "p99 ms", "max ms"], [
        ["alone", f"{alone['count']:,}", f"{alone['p50'] * 1e3:.3f}", f"{alone['p99'] * 1e3:.3f}",
         f"{alone['max'] * 1e3:.2f}"],
        ["during delete", f"{during['count']:,}", f"{during['p50'] * 1e3:.3f}", f"{during['p99'] * 1e3:.3f}",
         f"{during['max'] * 1e3:.2f}"],
        ["ratio", "", f"{during['p50'] / alone['p50']:.2f}x", f"{during['p99'] / alone['p99']:.2f}x",
         f"{during['max'] / alone['max']:.2f}x"],
    ]))

    medians, locals_only = run_marking(20_000 if args.quick else 100_000, 5 if args.quick else 11)
    print("\n3. A local get of a 100 B value (median round), with and without marking the key in the access times"
          + ("" if locals_only else " (some reads went to the shard: the figures mix in round trips)"))
    print(table(["", "us per get"], [
        ["marking", f"{medians['marking']:.3f}"],
        ["not marking", f"{medians['plain']:.3f}"],
        ["difference", f"{medians['marking'] - medians['plain']:+.3f}"],
        ["ratio", f"{medians['marking'] / medians['plain']:.3f}x"],
    ]))


if __name__ == "__main__":
    main()
