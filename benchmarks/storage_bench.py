"""Benchmark of the in-process Bitcask storage engine (ferricd.storage.BitcaskStore).

Measures, in one run on one machine:

1. put/s and get/s for 100 B and 4 KiB values under each fsync policy
   (always, interval, never); for "always" also put/s with write_batch of 100
   (group commit: one fdatasync per batch), which is how the daemon writes;
2. python-diskcache with its defaults on the same keys and values, as a peer,
   so the results read as ratios rather than absolutes;
3. restart time with N keys (default 1M, 100 B values) after a clean shutdown
   (key directory snapshot present), and rebuild rate from hint files alone
   and from data files alone;
4. key directory bytes per key;
5. the storage targets, with PASS/MISS.

Every configuration gets a fresh temporary directory. Throughput figures are
medians over --repeats runs. Restart figures are medians over --repeats
reopens of the same directory, with a warm page cache.

    python3 benchmarks/storage_bench.py            # full run, a few minutes
    python3 benchmarks/storage_bench.py --quick    # smoke run, under ~30 s
"""

import argparse
import gc
import glob
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ferricd.storage import BitcaskStore, Put, StoreSettings  # noqa: E402

try:
    import diskcache
except ImportError:  # the project's "bench" extra: pip install -e '.[bench]'
    diskcache = None

KEY_FORMAT = b"key:%08d"
VALUE_SIZES = (100, 4096)
POLICIES = ("always", "interval", "never")
GROUP_COMMIT_BATCH = 100  # ops per write_batch for the "always + batch" row
LOAD_BATCH = 1_000  # ops per write_batch when filling the store for the restart tests
RESTART_VALUE_BYTES = 100
SEED = 1234  # the order of gets

FULL = {"ops": 50_000, "always_ops": 2_000, "keys": 1_000_000, "repeats": 3}
QUICK = {"ops": 10_000, "always_ops": 300, "keys": 100_000, "repeats": 1}

TARGET_HINT_KEYS_PER_S = 500_000  # rebuild from hint files, keys/s, at least
TARGET_INDEX_BYTES_BEYOND_KEY = 64  # key directory bytes per key beyond the key bytes, at most
TARGET_RESTART_S = 1.0  # restart after a clean shutdown, seconds, below

SNAPSHOT_NAME = "keydir.snapshot"


# -- arguments and machine ----------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (100k keys, fewer ops)")
    parser.add_argument("--dir", default=None, help="parent directory for temporary stores (default: system temp)")
    parser.add_argument("--keys", type=int, default=None, help="keys for the restart and key directory tests")
    parser.add_argument("--ops", type=int, default=None, help="operations per throughput run")
    parser.add_argument("--always-ops", type=int, default=None, help="single puts per fsync=always run")
    parser.add_argument("--repeats", type=int, default=None, help="runs per measurement (the median is reported)")
    args = parser.parse_args()
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.dir = os.path.abspath(args.dir or tempfile.gettempdir())
    os.makedirs(args.dir, exist_ok=True)
    return args


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def filesystem(path):
    """``type (device on mountpoint)`` of ``path`` from ``df -T``, or a statvfs summary."""
    try:
        out = subprocess.run(["df", "-PT", path], capture_output=True, text=True, check=True, timeout=10).stdout
        fields = out.splitlines()[1].split()
        return f"{fields[1]} ({fields[0]} on {fields[-1]})"
    except (OSError, subprocess.SubprocessError, IndexError):
        st = os.statvfs(path)
        return f"type unknown (statvfs: block {st.f_bsize} B, {st.f_bavail * st.f_frsize / 2**30:.0f} GiB free)"


def print_machine(args):
    print("FerricStore storage engine benchmark" + (" (--quick)" if args.quick else ""))
    print(f"  cpus (nproc)  {os.cpu_count()}  [{cpu_model()}]")
    print(f"  python        {platform.python_version()} ({platform.python_implementation()}) on {platform.platform()}")
    print(f"  temp dir      {args.dir}: {filesystem(args.dir)}")
    print(f"  diskcache     {diskcache.__version__ if diskcache else 'not installed'}")
    print(f"  settings      ops/run {args.ops:,}, fsync=always single puts {args.always_ops:,}, "
          f"restart keys {args.keys:,}, repeats {args.repeats}")
    print()


# -- helpers --------------------------------------------------------------------------


def make_keys(count):
    return [KEY_FORMAT % i for i in range(count)]


def get_order(keys, ops):
    """``ops`` keys drawn from ``keys`` in a fixed shuffled order (cycling if ``keys`` is shorter)."""
    order = [keys[i % len(keys)] for i in range(ops)]
    random.Random(SEED).shuffle(order)
    return order


def fresh_dir(args, label):
    return tempfile.mkdtemp(prefix=f"ferric-bench-{label}-", dir=args.dir)


def timed(fn, *fn_args):
    """Seconds ``fn(*fn_args)`` took, with the garbage collector settled beforehand."""
    gc.collect()
    started = time.perf_counter()
    fn(*fn_args)
    return time.perf_counter() - started


def median(values):
    return statistics.median(values)


def fmt_rate(rate):
    return "-" if rate is None else f"{rate:,.0f}"


def fmt_ratio(ours, theirs):
    return "-" if ours is None or theirs is None else f"{ours / theirs:.2f}x"


def pass_miss(ok):
    return "PASS" if ok else "MISS"


# -- throughput -------------------------------------------------------------------------


def put_each(put, keys, value):
    for key in keys:
        put(key, value)


def put_batches(store, batches):
    for batch in batches:
        store.write_batch(batch)


def get_each(get, keys):
    """Get every key; returns how many were missing (must be 0)."""
    missing = 0
    for key in keys:
        if get(key) is None:
            missing += 1
    return missing


def check_gets(get, keys, label):
    missing = get_each(get, keys[:1000])
    if missing:
        sys.exit(f"error: {label}: {missing} of the keys just written read as missing")


def ferric_run(args, policy, value_bytes, batched):
    """One run on a fresh store: ``(put/s, get/s)``."""
    count = args.always_ops if policy == "always" and not batched else args.ops
    keys, value = make_keys(count), b"v" * value_bytes
    reads = get_order(keys, args.ops)
    directory = fresh_dir(args, f"{policy}-{value_bytes}")
    store = BitcaskStore(directory, StoreSettings(fsync=policy))
    try:
        if batched:
            batches = [[Put(k, value) for k in keys[i:i + GROUP_COMMIT_BATCH]]
                       for i in range(0, count, GROUP_COMMIT_BATCH)]
            put_s = timed(put_batches, store, batches)
        else:
            put_s = timed(put_each, store.put, keys, value)
        check_gets(store.get, reads, f"ferric {policy}")
        get_s = timed(get_each, store.get, reads)
    finally:
        store.close()
        shutil.rmtree(directory)
    return count / put_s, len(reads) / get_s


def diskcache_run(args, value_bytes):
    """One run of diskcache.Cache with its defaults on a fresh directory: ``(put/s, get/s)``."""
    keys, value = make_keys(args.ops), b"v" * value_bytes
    reads = get_order(keys, args.ops)
    directory = fresh_dir(args, f"diskcache-{value_bytes}")
    cache = diskcache.Cache(directory)
    try:
        put_s = timed(put_each, cache.set, keys, value)
        check_gets(cache.get, reads, "diskcache")
        get_s = timed(get_each, cache.get, reads)
    finally:
        cache.close()
        shutil.rmtree(directory)
    return len(keys) / put_s, len(reads) / get_s


def median_rates(repeats, run, *run_args):
    results = [run(*run_args) for _ in range(repeats)]
    return median(r[0] for r in results), median(r[1] for r in results)


def throughput_rows(args):
    """``(value_bytes, label, put/s, get/s, diskcache put/s, diskcache get/s)`` per configuration."""
    rows = []
    for value_bytes in VALUE_SIZES:
        peer = median_rates(args.repeats, diskcache_run, args, value_bytes) if diskcache else (None, None)
        for policy in POLICIES:
            configs = [(policy, False)] + ([(policy + " +batch" + str(GROUP_COMMIT_BATCH), True)]
                                           if policy == "always" else [])
            for label, batched in configs:
                put_rate, get_rate = median_rates(args.repeats, ferric_run, args, policy, value_bytes, batched)
                rows.append((value_bytes, label, put_rate, get_rate) + peer)
    return rows


def print_throughput(args, rows):
    print(f"1-2. Throughput, in-process, one thread (median of {args.repeats}; "
          f"{args.ops:,} ops per run, {args.always_ops:,} for fsync=always single puts)")
    header = f"  {'value':>6}  {'fsync':<16} {'put/s':>10} {'get/s':>10}   {'dc put/s':>10} {'dc get/s':>10}" \
             f"   {'put ratio':>9} {'get ratio':>9}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for value_bytes, label, put_rate, get_rate, dc_put, dc_get in rows:
        size = "4 KiB" if value_bytes == 4096 else f"{value_bytes} B"
        print(f"  {size:>6}  {label:<16} {fmt_rate(put_rate):>10} {fmt_rate(get_rate):>10}   "
              f"{fmt_rate(dc_put):>10} {fmt_rate(dc_get):>10}   "
              f"{fmt_ratio(put_rate, dc_put):>9} {fmt_ratio(get_rate, dc_get):>9}")
    print("  ratio = ferric / diskcache (above 1: ferric faster). dc = python-diskcache, defaults, same keys/values.")
    if diskcache is None:
        print("  diskcache: SKIPPED (not installed; pip install -e '.[bench]' to compare against it)")
    else:
        print("  note: diskcache's default is SQLite WAL mode with synchronous=NORMAL (no fsync per commit), closest")
        print("        to ferric's fsync=interval/never; the fsync=always rows are more durable than the peer.")
    print(f"  note: fsync=interval syncs at most every {StoreSettings().fsync_interval_ms} ms; "
          f"+batch{GROUP_COMMIT_BATCH} = write_batch of {GROUP_COMMIT_BATCH} Puts, one fdatasync each "
          "(Put lists built before timing).")
    print(f"  note: get/s on the fsync=always single-put rows cycles over only the {args.always_ops:,} keys written there.")
    print()


# -- restart and key directory ------------------------------------------------------------


def fill_store(directory, count):
    """Write ``count`` keys with 100 B values (fsync=never, batches of LOAD_BATCH); returns (seconds, stats)."""
    value = b"v" * RESTART_VALUE_BYTES
    store = BitcaskStore(directory, StoreSettings(fsync="never"))
    gc.collect()
    started = time.perf_counter()
    for first in range(0, count, LOAD_BATCH):
        store.write_batch([Put(KEY_FORMAT % i, value) for i in range(first, min(first + LOAD_BATCH, count))])
    fill_s = time.perf_counter() - started
    stats = store.stats()
    close_s = timed(store.close)
    return fill_s, close_s, stats


def remove_files(directory, pattern):
    for path in glob.glob(os.path.join(directory, pattern)):
        os.unlink(path)


def reopen(directory, count, source):
    """Open the store, check it recovered ``count`` keys from ``source``, close it.

    Returns ``(open seconds, recovery report, index bytes per key)``.
    """
    gc.collect()
    started = time.perf_counter()
    store = BitcaskStore(directory, StoreSettings(fsync="never"))
    open_s = time.perf_counter() - started
    report, stats = store.recovery, store.stats()
    store.close()
    check_recovery(report, stats, count, source)
    return open_s, report, stats["index_bytes"] / stats["keys"]


def check_recovery(report, stats, count, source):
    expected = {
        "snapshot": report.from_snapshot,
        "hints": not report.from_snapshot and report.files_scanned == 0 and report.hint_files_used == report.files,
        "data": not report.from_snapshot and report.hint_files_used == 0 and report.files_scanned == report.files,
    }[source]
    if report.keys != count or stats["keys"] != count:
        sys.exit(f"error: reopen from {source}: {report.keys} keys recovered, expected {count}\n{report}")
    if not expected:
        sys.exit(f"error: reopen did not recover from {source} alone:\n{report}")


def restart_results(args):
    """Fill a store with ``args.keys`` keys, then time reopens from each recovery source."""
    directory = fresh_dir(args, "restart")
    try:
        fill_s, close_s, stats = fill_store(directory, args.keys)
        results = {"fill_s": fill_s, "close_s": close_s, "stats": stats, "runs": {}}
        for source, remove in (("snapshot", ()), ("hints", (SNAPSHOT_NAME,)), ("data", (SNAPSHOT_NAME, "*.hint"))):
            runs = []
            for _ in range(args.repeats):
                for pattern in remove:  # each close writes the snapshot again, a scan writes the hints again
                    remove_files(directory, pattern)
                runs.append(reopen(directory, args.keys, source))
            results["runs"][source] = runs
    finally:
        shutil.rmtree(directory)
    return results


def print_restart(args, results):
    stats, n = results["stats"], args.keys
    print(f"3. Restart with {n:,} keys ({RESTART_VALUE_BYTES} B values, {stats['files']} data file(s), "
          f"{stats['data_bytes'] / 2**20:.0f} MiB; median of {args.repeats}, warm page cache)")
    print(f"  fill (write_batch of {LOAD_BATCH}, fsync=never)   {results['fill_s']:.2f} s  "
          f"({n / results['fill_s']:,.0f} keys/s)")
    print(f"  clean close (hint + snapshot write)        {results['close_s'] * 1000:.0f} ms")
    print(f"  {'recovered from':<34} {'open':>10} {'keys/s':>12} {'recovery.elapsed_ms':>20}  keys ok")
    for source, label in (("snapshot", "snapshot (clean shutdown)"), ("hints", "hint files (snapshot removed)"),
                          ("data", "data files (snapshot, hints removed)")):
        runs = results["runs"][source]
        open_s = median(r[0] for r in runs)
        elapsed = median(r[1].elapsed_ms for r in runs)
        print(f"  {label:<34} {open_s * 1000:>7.0f} ms {n / open_s:>12,.0f} {elapsed:>17.0f} ms  {n:,} x{len(runs)}")
    print()


def print_key_directory(args, results):
    stats, n = results["stats"], args.keys
    states = [("live store after the fill", stats["index_bytes"] / stats["keys"])]
    states += [(f"after reopen from {source}", median(r[2] for r in results["runs"][source]))
               for source in ("snapshot", "hints", "data")]
    key_bytes = len(KEY_FORMAT % 0)
    print(f"4. Key directory at {n:,} keys (index_bytes / keys; keys are {key_bytes} B, e.g. {KEY_FORMAT % 0!r})")
    for label, per_key in states:
        print(f"  {label:<34} {per_key:>8.3f} B/key")
    print("  key bytes held in the key directory: 0 (slots keep an 8-byte hash; the key is read from the record),")
    print("  so bytes per key beyond the key bytes = index_bytes / keys.")
    print()
    return max(per_key for _, per_key in states)


def print_targets(args, results, worst_bytes_per_key):
    n = args.keys
    restart_s = median(r[0] for r in results["runs"]["snapshot"])
    hint_rate = n / median(r[0] for r in results["runs"]["hints"])
    rows = [
        ("rebuild from hint files", f">= {TARGET_HINT_KEYS_PER_S:,} keys/s", f"{hint_rate:,.0f} keys/s",
         hint_rate >= TARGET_HINT_KEYS_PER_S),
        ("key directory beyond key bytes", f"<= {TARGET_INDEX_BYTES_BEYOND_KEY} B/key",
         f"{worst_bytes_per_key:.3f} B/key (worst state)", worst_bytes_per_key <= TARGET_INDEX_BYTES_BEYOND_KEY),
        (f"restart, {n:,} keys, clean shutdown", f"< {TARGET_RESTART_S:g} s", f"{restart_s * 1000:.0f} ms",
         restart_s < TARGET_RESTART_S),
    ]
    print("5. Targets" + ("" if n == 1_000_000 else f" (targets are stated for 1,000,000 keys; this run used {n:,})"))
    for name, target, measured, ok in rows:
        print(f"  {name:<40} {target:<20} {measured:<28} {pass_miss(ok)}")


def main():
    args = parse_args()
    started = time.perf_counter()
    print_machine(args)
    print_throughput(args, throughput_rows(args))
    results = restart_results(args)
    print_restart(args, results)
    worst = print_key_directory(args, results)
    print_targets(args, results, worst)
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
