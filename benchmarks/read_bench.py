"""Read latency: ferric local reads (mapped index) against ferric round trips, redis-py and python-diskcache.

Starts its own ferricd (one shard, ``fsync = "never"`` by default; reads do
not depend on it) and redis-server (``--port 0 --unixsocket ... --save ""
--appendonly no``) in a temporary directory under /tmp, using the helpers of
``ipc_bench.py``, and stops them at the end (SIGTERM, bounded wait, SIGKILL).

Measures, in one run on one machine, GET p50 / p99 in microseconds, one call
at a time (``time.perf_counter_ns`` around each call), for hits and misses,
100 B and 4 KiB values, same keys and values everywhere:

1. ferric local read: ``Client(run_dir, local_reads=True).get``;
2. ferric round trip: ``Client(run_dir, local_reads=False).get`` (the Unix stream
   transport, the client's default);
3. redis-py ``GET`` over a Unix socket;
4. python-diskcache ``Cache(dir).get`` (SQLite in the temporary directory).

The four take turns in rounds; every round visits every point (size x
hit/miss) and every system, the order rotating, so that drift in the machine
hits them alike. The round-trip floor of the machine (raw AF_UNIX and pyzmq
echo servers, from ``ipc_bench``) is printed first for context. Every reply is checked outside the
timed part; after the timed runs an untimed sweep reads every key through the
local client and compares it with the expected value and with the shard's
reply. ``client.read_counts`` shows whether the local client's reads were
served from the mapped files ("local") or sent to the shard ("fallback").

Then it loads the shard up to --index-keys keys (100k by default) and reports
the index memory per key (``info()[k]["index_bytes"] / keys``).

Targets (PASS/MISS): local GET p50 <= 2 µs for 100 B values; local GET p50
at least 20x below redis-py GET p50; index <= 64 bytes per key.

``--pin CPU`` runs the benchmark, ferricd (supervisor, shard and their
threads) and redis-server all on that one CPU, as in ``ipc_bench.py``.

    python3 benchmarks/read_bench.py            # full run, a few minutes at most
    python3 benchmarks/read_bench.py --quick    # smoke run, under ~30 s
    python3 benchmarks/read_bench.py --pin 0

redis-py and diskcache come with the "bench" extra: pip install -e '.[bench]'.
Without one of them (or without redis-server) that column is skipped and says why.
"""

import argparse
import gc
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for ipc_bench
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ipc_bench as ib  # noqa: E402  (its daemons, percentile and machine report)
from ferric_ipc import Client  # noqa: E402

try:
    import diskcache
except ImportError:  # the project's "bench" extra
    diskcache = None

redis = ib.redis

KEY_FORMAT = b"read:%08d:%d"  # index, value size
MISS_FORMAT = b"read:miss:%08d:%d"  # never written anywhere
INDEX_FORMAT = b"read:idx:%08d"  # extra keys for the index-memory step
VALUE_SIZES = (100, 4096)
CASES = ("hit", "miss")
SYSTEMS = ("local", "remote", "redis", "diskcache")
LABELS = {"local": "ferric local", "remote": "ferric remote", "redis": "redis-py", "diskcache": "diskcache"}
WARMUP_OPS = 500
SEED = 4321

FULL = {"ops": 40_000, "rounds": 8, "keys": 10_000, "index_keys": 100_000, "index_ops": 20_000}
QUICK = {"ops": 3_000, "rounds": 2, "keys": 2_000, "index_keys": 100_000, "index_ops": 3_000}

TARGET_LOCAL_P50_US = 2.0  # local GET p50, 100 B values, at most
TARGET_REDIS_OVER_LOCAL = 20.0  # redis-py GET p50 / local GET p50, at least
TARGET_INDEX_BYTES_PER_KEY = 64.0  # at most


def value_for(size):
    return random.Random(size).randbytes(size)


def summary(samples):
    ordered = sorted(samples)
    return {"n": len(ordered), "p50": ib.percentile(ordered, 0.50) / 1000, "p99": ib.percentile(ordered, 0.99) / 1000}


class Wrong:
    """Wrong replies of one system: a count and the first few, described precisely."""

    def __init__(self):
        self.count = 0
        self.examples = []

    def add(self, key, expected, got):
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(f"key {key!r}: expected {describe(expected)}, got {describe(got)}")


def describe(value):
    if value is None:
        return "None"
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        return f"{type(value).__name__} len {len(value)} starting {value[:16].hex()}"
    return f"{type(value).__name__} {value!r:.60}"


def timed_gets(get, sequence, expected, wrong):
    """GET every key of ``sequence`` once, each timed; replies are checked after the timed loop."""
    samples = []
    replies = []
    append, reply, clock = samples.append, replies.append, time.perf_counter_ns
    gc.disable()
    try:
        for key in sequence:
            t0 = clock()
            got = get(key)
            t1 = clock()
            append(t1 - t0)
            reply(got)
    finally:
        gc.enable()
    for key, got in zip(sequence, replies):
        if got != expected:
            wrong.add(key, expected, got)
    return samples


def timer_floor(ops):
    """perf_counter_ns twice with nothing between: the cost the per-op numbers include."""
    samples, clock = [], time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(ops):
            t0 = clock()
            t1 = clock()
            samples.append(t1 - t0)
    finally:
        gc.enable()
    return summary(samples)


def thread_affinities(pids):
    """``{frozenset(cpus): thread count}`` over every thread of ``pids``."""
    seen = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                cpus = frozenset(os.sched_getaffinity(int(tid)))
            except OSError:
                continue
            seen[cpus] = seen.get(cpus, 0) + 1
    return seen


def fmt_cpus(cpus):
    return "{" + ",".join(str(c) for c in sorted(cpus)) + "}"


def ratio(a, b):
    return a / b if b else float("nan")


def index_stats(client):
    infos = client.info()
    keys = sum(info["keys"] for info in infos)
    index_bytes = sum(info["index_bytes"] for info in infos)
    capacity = sum(info.get("index_capacity", 0) for info in infos)
    return keys, index_bytes, capacity


def print_table(titles, rows):
    """``rows`` of ``(size, case, [cell, ...])`` under column ``titles``, every column as wide as its widest text."""
    width = max(len(text) for text in titles + [cell for _, _, cells in rows for cell in cells])
    header = f"  {'value':>6} {'case':4} | " + " | ".join(f"{title:>{width}}" for title in titles)
    print(header)
    print("  " + "-" * (len(header) - 2))
    for size, case, cells in rows:
        print(f"  {ib.size_label(size):>6} {case:4} | " + " | ".join(f"{cell:>{width}}" for cell in cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (under ~30 s)")
    parser.add_argument("--ops", type=int, default=None, help="timed GETs per system per point (hit/miss x size)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds the ops are split into")
    parser.add_argument("--keys", type=int, default=None, help="distinct keys per value size")
    parser.add_argument("--index-keys", type=int, default=None, help="keys in the shard for the index-memory step")
    parser.add_argument("--fsync", default="never", choices=("never", "always"),
                        help='ferricd [storage] fsync (default "never": fast preload; reads do not depend on it)')
    parser.add_argument("--pin", type=int, default=None, metavar="CPU",
                        help="run the benchmark, ferricd and redis-server on this one CPU")
    args = parser.parse_args()
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
        ib.PIN = args.pin  # ipc_bench's daemons pin themselves in preexec_fn (children inherit it anyway)
    settings = dict(QUICK if args.quick else FULL)
    for name in ("ops", "rounds", "keys", "index_keys"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    ops, rounds, nkeys = settings["ops"], max(1, settings["rounds"]), settings["keys"]
    per_round = max(1, ops // rounds)

    started = time.time()
    print("ferric read benchmark: python3 benchmarks/read_bench.py " + " ".join(sys.argv[1:]))
    print(time.strftime("date      : %Y-%m-%d %H:%M:%S %Z"))
    for line in ib.machine_report():
        print(line)
    print(f"diskcache : {ib.version_of('diskcache') or 'not installed'}")
    print(f"settings  : {per_round * rounds} timed GETs per system per point in {rounds} alternating rounds, "
          f"{WARMUP_OPS} warm-up GETs; {nkeys} keys per value size (+ {nkeys} never-written keys for misses); "
          f"ferricd 1 shard fsync={args.fsync}; index step at {settings['index_keys']:,} keys; "
          + (f"everything pinned to CPU {args.pin}" if args.pin is not None else "no CPU pinning"))

    skipped = {}
    if redis is None:
        skipped["redis"] = "redis-py is not installed (pip install -e '.[bench]')"
    elif shutil.which("redis-server") is None:
        skipped["redis"] = "redis-server is not on PATH"
    if diskcache is None:
        skipped["diskcache"] = "diskcache is not installed (pip install -e '.[bench]')"
    for system, reason in skipped.items():
        print(f"{LABELS[system]} SKIPPED: {reason}")

    floor = timer_floor(20_000)
    print(f"timer     : perf_counter_ns pair with nothing between: p50 {floor['p50']:.3f} µs, p99 {floor['p99']:.3f} µs "
          "(included in every per-op figure)")

    base = tempfile.mkdtemp(prefix="frb-", dir="/tmp")
    print(f"temp dir  : {base}")
    for name, s in ib.transport_floor(base, 5_000 if args.quick else 20_000).items():
        print(f"IPC floor : {name} (ipc_bench's echo servers, 100 B): p50 {s['p50']:.1f} µs, p99 {s['p99']:.1f} µs")
    daemon = redis_server = cache = None
    local = remote_client = rclient = None
    results = {}  # (system, size, case) -> summary
    wrong = {system: Wrong() for system in SYSTEMS}
    counts_after_timed = None
    local_gets_issued = 0
    sweep = {"checked": 0, "wrong": Wrong(), "disagree_with_shard": 0}
    index_rows = []
    index_latency = None
    counts_after_index = None
    daemon_exit = redis_exit = None
    daemon_problems = []
    shard_identity = {}
    try:
        print("\n[1/4] start ferricd and redis-server, preload", flush=True)
        daemon = ib.Ferricd(base, "read1", 1, args.fsync)
        daemon.start()
        local = Client(daemon.run_dir, timeout_ms=10_000, local_reads=True)
        remote_client = Client(daemon.run_dir, timeout_ms=10_000, local_reads=False)
        shard_identity["start"] = (local.hello()["pid"], local.hello()["epoch"])
        if "redis" not in skipped:
            redis_server = ib.RedisServer(base).start()
            rclient = redis_server.client()
        if "diskcache" not in skipped:
            cache = diskcache.Cache(os.path.join(base, "diskcache"))
        pids = [daemon.process.pid] + daemon.children + ([redis_server.process.pid] if redis_server else [])
        affinity = thread_affinities(pids)
        print(f"  ferricd supervisor pid {daemon.process.pid}, shard pids {daemon.children}"
              + (f"; redis-server pid {redis_server.process.pid}" if redis_server else ""))
        print("  thread affinity of ferricd and redis-server: "
              + ", ".join(f"{n} threads on {fmt_cpus(c)}" for c, n in sorted(affinity.items(), key=lambda x: -x[1]))
              + f"; benchmark on {fmt_cpus(os.sched_getaffinity(0))}")

        data = {}
        for size in VALUE_SIZES:
            keys = [KEY_FORMAT % (i, size) for i in range(nkeys)]
            misses = [MISS_FORMAT % (i, size) for i in range(nkeys)]
            value = value_for(size)
            data[size] = (keys, misses, value)
            t0 = time.perf_counter()
            ib.preload("ferric", remote_client, keys, value)
            if rclient is not None:
                ib.preload("redis", rclient, keys, value)
            if cache is not None:
                with cache.transact():
                    for key in keys:
                        cache.set(key, value)
            print(f"  {nkeys} keys of {ib.size_label(size)} loaded into "
                  + ", ".join(s for s in ("ferricd", "redis" if rclient else None, "diskcache" if cache else None) if s)
                  + f" in {time.perf_counter() - t0:.1f} s", flush=True)
        keys_now, index_bytes, capacity = index_stats(remote_client)
        print(f"  ferricd now holds {keys_now} keys; index {index_bytes:,} B, capacity {capacity:,} slots")

        print(f"\n[2/4] sequential GET latency, µs (p50 / p99), {per_round * rounds} per system per point", flush=True)
        getters = {"local": local.get, "remote": remote_client.get}
        if rclient is not None:
            getters["redis"] = rclient.get
        if cache is not None:
            getters["diskcache"] = cache.get
        systems = [s for s in SYSTEMS if s in getters]
        local.read_counts.update(local=0, fallback=0)
        points = [(size, case) for size in VALUE_SIZES for case in CASES]
        pooled = {(system, point): [] for system in systems for point in points}
        print("  rounds done:", end="", flush=True)
        for r in range(rounds):
            # Every round visits every point and every system, so drift in the machine spreads evenly.
            for p, (size, case) in enumerate(points):
                keys, misses, value = data[size]
                pool, expected = (keys, value) if case == "hit" else (misses, None)
                order_rng = random.Random(SEED + 100 * r + p)
                sequence = [order_rng.choice(pool) for _ in range(per_round)]
                warmup = sequence[:WARMUP_OPS] if r == 0 else sequence[:50]
                shift = (r + p) % len(systems)
                for system in systems[shift:] + systems[:shift]:  # rotate who goes first
                    get = getters[system]
                    for key in warmup:
                        get(key)
                    pooled[(system, (size, case))].extend(timed_gets(get, sequence, expected, wrong[system]))
                    if system == "local":
                        local_gets_issued += len(warmup) + len(sequence)
            print(f" {r + 1}/{rounds}", end="", flush=True)
        print()
        for size, case in points:
            for system in systems:
                results[(system, size, case)] = summary(pooled[(system, (size, case))])
            print(f"  GET {ib.size_label(size):>6} {case:4}  "
                  + "  ".join(f"{LABELS[s]} {results[(s, size, case)]['p50']:6.2f} / {results[(s, size, case)]['p99']:7.2f}"
                              for s in systems), flush=True)
        counts_after_timed = dict(local.read_counts)
        remote_counts = dict(remote_client.read_counts)
        print(f"  local client read_counts after the timed runs: {counts_after_timed} "
              f"({local_gets_issued} local GETs issued, warm-ups included)")
        print(f"  remote client read_counts: {remote_counts} (local_reads=False never consults the index)")

        print("\n[3/4] untimed correctness sweep: every key once through the local client, compared with the shard",
              flush=True)
        before = dict(local.read_counts)
        for size in VALUE_SIZES:
            keys, misses, value = data[size]
            for pool, expected in ((keys, value), (misses, None)):
                for key in pool:
                    got = local.get(key)
                    sweep["checked"] += 1
                    if got != expected:
                        sweep["wrong"].add(key, expected, got)
                    if got != remote_client.get(key):
                        sweep["disagree_with_shard"] += 1
        after = dict(local.read_counts)
        sweep["counts"] = {k: after[k] - before[k] for k in after}
        print(f"  {sweep['checked']} keys checked: {sweep['wrong'].count} wrong, "
              f"{sweep['disagree_with_shard']} disagree with the shard's reply; read_counts delta {sweep['counts']}")
        for line in sweep["wrong"].examples:
            print(f"    {line}")

        target_keys = settings["index_keys"]
        print(f"\n[4/4] index memory: load the shard up to {target_keys:,} keys (100 B values)", flush=True)
        keys_now, index_bytes, capacity = index_stats(remote_client)
        index_rows.append((keys_now, index_bytes, capacity))
        small = value_for(100)
        step = max(1, target_keys // 4)
        next_id = 0
        while keys_now < target_keys:
            goal = min(target_keys, (keys_now // step + 1) * step)
            extra = [INDEX_FORMAT % i for i in range(next_id, next_id + goal - keys_now)]
            next_id += len(extra)
            ib.preload("ferric", remote_client, extra, small)
            keys_now, index_bytes, capacity = index_stats(remote_client)
            index_rows.append((keys_now, index_bytes, capacity))
        for keys_at, bytes_at, cap_at in index_rows:
            print(f"  {keys_at:8,} keys: index {bytes_at:11,} B, capacity {cap_at:9,} slots, "
                  f"load {ratio(keys_at, cap_at):4.2f}, {ratio(bytes_at, keys_at):6.1f} B/key")
        # Local GET on the full table: same shard, larger index (longer probes are possible, the cache is colder).
        index_keys = [INDEX_FORMAT % i for i in range(next_id)] or data[100][0]
        rng = random.Random(SEED)
        sequence = [rng.choice(index_keys) for _ in range(settings["index_ops"])]
        for key in sequence[:WARMUP_OPS]:
            local.get(key)
        index_wrong = Wrong()
        before = dict(local.read_counts)
        index_latency = summary(timed_gets(local.get, sequence, small, index_wrong))
        counts_after_index = {k: local.read_counts[k] - before[k] for k in before}
        wrong["local"].count += index_wrong.count
        wrong["local"].examples.extend(index_wrong.examples[:5 - len(wrong["local"].examples)])
        print(f"  local GET 100 B hit at {keys_now:,} keys: p50 {index_latency['p50']:.2f} µs, "
              f"p99 {index_latency['p99']:.2f} µs (n={index_latency['n']}); read_counts delta {counts_after_index}"
              + (f"; WRONG={index_wrong.count}" if index_wrong.count else ""))
        shard_identity["end"] = (local.hello()["pid"], local.hello()["epoch"])
    finally:
        for c in (local, remote_client):
            if c is not None:
                c.close()
        if rclient is not None:
            rclient.close()
        if cache is not None:
            cache.close()
        if daemon is not None:
            daemon_exit = daemon.stop()
            daemon_problems = daemon.log_problems()
        if redis_server is not None:
            redis_exit = redis_server.stop()
        shutil.rmtree(base, ignore_errors=True)

    # -- summary ---------------------------------------------------------------------
    systems = [s for s in SYSTEMS if s not in skipped]
    print("\nsummary: GET latency in µs, p50 / p99 (one call at a time, per-op perf_counter_ns)")
    rows = []
    for size in VALUE_SIZES:
        for case in CASES:
            cells = []
            for s in systems:
                r = results.get((s, size, case))
                cells.append(f"{r['p50']:7.2f} / {r['p99']:6.2f}" if r else "-")
            rows.append((size, case, cells))
    print_table([LABELS[s] for s in systems], rows)
    others = [s for s in ("redis", "remote", "diskcache") if s in systems]
    print("\nratios to ferric local (how many times slower than a local read), p50 (p99)")
    rows = []
    for size in VALUE_SIZES:
        for case in CASES:
            loc = results.get(("local", size, case))
            cells = []
            for s in others:
                r = results.get((s, size, case))
                cells.append(f"{ratio(r['p50'], loc['p50']):6.1f}x ({ratio(r['p99'], loc['p99']):5.1f}x)"
                             if r and loc else "-")
            rows.append((size, case, cells))
    print_table([LABELS[s] + "/local" for s in others], rows)

    print("\ntargets")
    for case in CASES:
        loc = results.get(("local", 100, case))
        if loc:
            verdict = "PASS" if loc["p50"] <= TARGET_LOCAL_P50_US else "MISS"
            print(f"  {verdict}  local GET p50 <= {TARGET_LOCAL_P50_US:g} µs, 100 B, {case}: {loc['p50']:.2f} µs")
    for size in VALUE_SIZES:
        for case in CASES:
            loc, red = results.get(("local", size, case)), results.get(("redis", size, case))
            if not loc:
                continue
            if not red:
                print(f"  ----  local >= {TARGET_REDIS_OVER_LOCAL:g}x faster than redis-py GET (p50), "
                      f"{ib.size_label(size)}, {case}: not measured ({skipped.get('redis')})")
                continue
            r = ratio(red["p50"], loc["p50"])
            verdict = "PASS" if r >= TARGET_REDIS_OVER_LOCAL else "MISS"
            print(f"  {verdict}  local >= {TARGET_REDIS_OVER_LOCAL:g}x faster than redis-py GET (p50), "
                  f"{ib.size_label(size)}, {case}: {red['p50']:.2f} / {loc['p50']:.2f} µs = {r:.1f}x")
    if index_rows:
        keys_at, bytes_at, _ = index_rows[-1]
        per_key = ratio(bytes_at, keys_at)
        verdict = "PASS" if per_key <= TARGET_INDEX_BYTES_PER_KEY else "MISS"
        worst = max(ratio(b, k) for k, b, _ in index_rows if k)
        print(f"  {verdict}  index <= {TARGET_INDEX_BYTES_PER_KEY:g} bytes per key at {keys_at:,} keys: "
              f"{bytes_at:,} B / {keys_at:,} = {per_key:.1f} B/key (worst along the way {worst:.1f})")

    print("\nlocal reads")
    print(f"  read_counts after the timed runs: {counts_after_timed} of {local_gets_issued} local GETs issued"
          + (f"; fallback share {ratio(counts_after_timed['fallback'], local_gets_issued):.2%}" if counts_after_timed else ""))
    if "counts" in sweep:
        print(f"  correctness sweep: {sweep['checked']} keys, {sweep['wrong'].count} wrong, "
              f"{sweep['disagree_with_shard']} disagree with the shard; read_counts delta {sweep['counts']}")
    if counts_after_index is not None:
        print(f"  at {index_rows[-1][0]:,} keys: read_counts delta {counts_after_index}")

    print("\ndaemons")
    for system in systems:
        w = wrong[system]
        print(f"  {LABELS[system]:12} wrong replies in timed runs: {w.count}")
        for line in w.examples:
            print(f"    {line}")
    if "start" in shard_identity:
        same = shard_identity.get("end") == shard_identity["start"]
        print(f"  ferricd shard (pid, epoch) at start {shard_identity['start']}, at end {shard_identity.get('end')}"
              + ("" if same else "  <- CHANGED: the shard restarted during the run"))
    ib.print_exits({"ferricd": (daemon_exit, daemon_problems)}, redis_exit, started)


if __name__ == "__main__":
    main()
