"""Benchmark of a round trip to a server that was idle: ferricd against redis-server, after pauses of the client.

A web worker talks to ferricd between other work (a database query, a
template), so the shard has usually been asleep for a while when a request
arrives. This measures what that costs, in one run on one machine, against
redis-server in the same situation:

1. for each pause (0, 0.5, 1, 2, 5 ms, the client spinning meanwhile so that
   only the server sleeps), the p50 of a ping and of a one-key write
   (ferric ``set``, redis-py ``SET``), each round trip timed alone;
2. the same with the client sleeping instead of spinning (both sides idle,
   as a worker blocked on a database is);
3. ratios ferric/redis per pause, and the ratio of each to its own no-pause
   figure (how much of a round trip is waking up).

Starts its own ferricd (one shard, ``fsync = "never"``) and redis-server (Unix
socket, no persistence) with benchmarks/ipc_bench.py's helpers.

    python3 benchmarks/idle_wakeup_bench.py            # about a minute
    python3 benchmarks/idle_wakeup_bench.py --quick    # a few seconds

Needs redis-server and redis-py.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from ferric_ipc import Client  # noqa: E402
from ipc_bench import Ferricd, RedisServer, machine_report  # noqa: E402

PAUSES_MS = (0, 0.5, 1, 2, 5)


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def timed(call, pause_s, sleeping, ops):
    """p50 in µs of ``call`` after each pause."""
    samples = []
    for _ in range(ops):
        if pause_s:
            time.sleep(pause_s) if sleeping else spin(pause_s)
        t0 = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    args = parser.parse_args()
    ops, rounds = (100, 1) if args.quick else (400, 3)
    if importlib.util.find_spec("redis") is None:
        raise SystemExit("needs redis-py: pip install redis")
    print("Round trips to an idle server: ferricd vs redis-server (p50, µs)")
    for line in machine_report():
        print("  " + line)
    base = tempfile.mkdtemp(prefix="iw-", dir="/tmp")
    ferricd = Ferricd(base, "ferric", shards=1, fsync="never").start()
    redis_server = RedisServer(base).start()
    try:
        ferric = Client(ferricd.run_dir, timeout_ms=10_000)
        red = redis_server.client()
        calls = {
            ("ferric", "ping"): lambda: ferric.ping(0),
            ("redis", "ping"): red.ping,
            ("ferric", "write"): lambda: ferric.set(b"k", b"v" * 20),
            ("redis", "write"): lambda: red.set(b"k", b"v" * 20),
        }
        for sleeping in (False, True):
            print(f"\nclient {'sleeping' if sleeping else 'spinning'} between round trips")
            print(f"  {'pause':>8s} {'ferric ping':>12s} {'redis ping':>11s} {'ratio':>6s} {'ferric write':>13s} "
                  f"{'redis write':>12s} {'ratio':>6s}")
            first = {}
            for pause_ms in PAUSES_MS:
                p50 = {key: [] for key in calls}
                for _ in range(rounds):  # rotating, so that drift hits all alike
                    for key, call in calls.items():
                        p50[key].append(timed(call, pause_ms / 1000, sleeping, ops))
                row = {key: statistics.median(values) for key, values in p50.items()}
                first = first or row
                print(f"  {pause_ms:6.1f}ms {row['ferric', 'ping']:12.1f} {row['redis', 'ping']:11.1f} "
                      f"{row['ferric', 'ping'] / row['redis', 'ping']:6.2f} {row['ferric', 'write']:13.1f} "
                      f"{row['redis', 'write']:12.1f} {row['ferric', 'write'] / row['redis', 'write']:6.2f}   "
                      f"(x{row['ferric', 'ping'] / first['ferric', 'ping']:.1f} / "
                      f"x{row['redis', 'ping'] / first['redis', 'ping']:.1f} their no-pause ping)")
        ferric.close()
    finally:
        print(f"\nferricd: {ferricd.stop()}; redis-server: {redis_server.stop()}")


if __name__ == "__main__":
    main()
