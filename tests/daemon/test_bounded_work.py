"""Ops whose work grows with the shard (prefix delete, scan) run in bounded steps: other requests never wait long."""

import subprocess
import sys
import textwrap

# The probe measures the latency of remote gets on the same shard until told to stop.
PROBE = textwrap.dedent("""
    import select, sys, time
    from ferric_ipc import Client
    client = Client(sys.argv[1], local_reads=False)
    client.get("probe")
    print("ready", flush=True)
    latencies = []
    while not select.select([sys.stdin], [], [], 0)[0]:
        started = time.perf_counter()
        client.get("bulk:probe")
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    print(len(latencies), latencies[-1], latencies[len(latencies) * 99 // 100], flush=True)
""")

KEYS = 300_000


def test_a_prefix_delete_and_a_full_scan_of_a_large_shard_keep_other_requests_fast(make_daemon):
    daemon = make_daemon(shards=1, config='[storage]\nfsync = "never"\n')
    client = daemon.client(timeout_ms=10_000)
    for batch in range(KEYS // 10_000):
        client.mset({f"bulk:{batch}:{i}": b"v" * 50 for i in range(10_000)})
    client.mset({f"doomed:{i}": b"x" for i in range(1000)})
    probe = subprocess.Popen([sys.executable, "-c", PROBE, daemon.run_dir], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert probe.stdout.readline().strip() == "ready"
        assert client.delete_prefix("doomed:") == 1000
        assert sum(1 for _ in client.scan_iter("")) == KEYS
        assert list(client.scan_iter("doomed:")) == []
        probe.stdin.write("stop\n")
        probe.stdin.flush()
        count, worst_s, p99_s = probe.stdout.readline().split()
    finally:
        probe.kill()
        probe.wait()
    assert int(count) > 100
    # Before the work was bounded, the prefix delete alone held the shard for seconds.
    assert float(worst_s) < 0.100, f"a request waited {float(worst_s) * 1000:.0f} ms (p99 {float(p99_s) * 1000:.1f} ms)"
