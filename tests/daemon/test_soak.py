"""Soak: 8 client processes, 90/9/1 get/set/delete over a durable and an evicting keyspace, while shards
merge, sweep expired keys and evict. Zero errors, no session write lost, p50/p99 reported.

The default suite runs it for SOAK_SECONDS (6 s); FERRIC_SOAK_SECONDS lengthens it, e.g.
``FERRIC_SOAK_SECONDS=600 python -m pytest tests/daemon/test_soak.py -s``.
"""

import json
import multiprocessing
import os
import random
import time
from array import array

import pytest

SOAK_SECONDS = float(os.environ.get("FERRIC_SOAK_SECONDS") or 6)
WORKERS = 8
SESSIONS_PER_WORKER = 50
CACHE_KEYS = 4000
CACHE_BOUND = 1024 * 1024
CONFIG = f"""
[storage]
max_file_bytes = "512KiB"
merge_trigger_dead_percent = 20
merge_trigger_dead_bytes = "256KiB"

[keyspaces.cache]
max_bytes = {CACHE_BOUND}
"""
SPAWN = multiprocessing.get_context("spawn")


def session_key(worker, i):
    return f"sess:{worker}:{i}".encode()


def cache_key(i):
    return f"sa:{{{i % 64}}}:{i}".encode()


def cache_value(key, rng):
    return key + b"=" + rng.randbytes(rng.randrange(200, 900))


def worker_main(run_dir, worker, seed, ready_q, start_evt, stop_evt, result_q):
    """Gets, sets and deletes until told to stop; sessions are this worker's alone, so it knows their values."""
    from ferric_ipc import Client

    rng = random.Random(seed)
    out = {"worker": worker, "ops": 0, "errors": [], "violations": []}
    # Seconds per op: local gets, then writes (sets and deletes) of sessions (fsync always) and of the cache.
    latencies = {"get": array("d"), "session_write": array("d"), "cache_write": array("d")}
    client = Client(run_dir, timeout_ms=10_000)
    sessions = {session_key(worker, i): client.get(session_key(worker, i)) for i in range(SESSIONS_PER_WORKER)}
    try:
        ready_q.put(worker)
        start_evt.wait()
        while not stop_evt.is_set():
            dice, durable = rng.random(), rng.random() < 0.5
            key = rng.choice(list(sessions)) if durable else cache_key(rng.randrange(CACHE_KEYS))
            started = time.perf_counter()
            try:
                if dice < 0.90:
                    got = client.get(key)
                    latencies["get"].append(time.perf_counter() - started)
                    if durable and got != sessions[key]:
                        out["violations"].append(f"{key!r}: read {got!r:.60}, last acknowledged {sessions[key]!r:.60}")
                    elif not durable and got is not None and not got.startswith(key + b"="):
                        out["violations"].append(f"{key!r}: read a value of another key: {got!r:.60}")
                elif dice < 0.99:
                    if durable:
                        value = rng.randbytes(rng.randrange(50, 400))
                        client.set(key, value, ttl_ms=3_600_000)
                        sessions[key] = value
                    else:  # cache entries expire soon: the sweep has work
                        client.set(key, cache_value(key, rng), ttl_ms=rng.randrange(200, 3000))
                    latencies["session_write" if durable else "cache_write"].append(time.perf_counter() - started)
                else:
                    client.delete(key)
                    latencies["session_write" if durable else "cache_write"].append(time.perf_counter() - started)
                    if durable:
                        sessions[key] = None
            except Exception as exc:  # every error fails the soak
                out["errors"].append(f"{type(exc).__name__}: {exc}")
            out["ops"] += 1
        remote = Client(run_dir, timeout_ms=10_000, local_reads=False)
        for key, value in sessions.items():  # the shards agree, not only the mapped files
            for got in (client.get(key), remote.get(key)):
                if got != value:
                    out["violations"].append(f"{key!r} at the end: {got!r:.60}, last acknowledged {value!r:.60}")
        remote.close()
    except Exception as exc:
        out["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        client.close()
        out["latencies"] = {kind: samples.tobytes() for kind, samples in latencies.items()}
        result_q.put(out)


def percentile(samples, share):
    return samples[min(len(samples) - 1, int(len(samples) * share))] if samples else float("nan")


@pytest.mark.soak
@pytest.mark.timeout(int(SOAK_SECONDS * 3) + 240)
def test_soak_mixed_keyspaces_under_merge_sweep_and_eviction(make_daemon, record_property):
    daemon = make_daemon(shards=2, config=CONFIG)
    control = daemon.client(timeout_ms=10_000, local_reads=False)
    rng = random.Random(7)
    for worker in range(WORKERS):
        control.mset({session_key(worker, i): rng.randbytes(100) for i in range(SESSIONS_PER_WORKER)})
    for start in range(0, CACHE_KEYS, 500):  # twice what the cache holds: eviction runs from the start
        control.mset({cache_key(i): cache_value(cache_key(i), rng) for i in range(start, start + 500)})
    ready_q, start_evt, stop_evt, result_q = SPAWN.Queue(), SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=worker_main, name=f"soak-{w}", daemon=True,
                           args=(daemon.run_dir, w, 100 + w, ready_q, start_evt, stop_evt, result_q))
             for w in range(WORKERS)]
    results = []
    try:
        for proc in procs:
            proc.start()
        for _ in procs:  # starting 8 interpreters takes seconds on a busy machine: the clock starts after
            ready_q.get(timeout=120)
        start_evt.set()
        time.sleep(SOAK_SECONDS * 0.4)
        for shard in range(2):  # a merge while everything else goes on, whatever the triggers say
            control._call(shard, "merge", [])
        time.sleep(SOAK_SECONDS * 0.6)
        stop_evt.set()
        deadline = time.monotonic() + 120
        while len(results) < WORKERS and time.monotonic() < deadline:
            results.append(result_q.get(timeout=max(0.1, deadline - time.monotonic())))
    finally:
        stop_evt.set()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    assert len(results) == WORKERS, f"{len(results)} of {WORKERS} workers reported"

    latencies = {kind: sorted(x for r in results for x in array("d", r["latencies"][kind]))
                 for kind in results[0]["latencies"]}
    info = control.info()
    summary = {"seconds": SOAK_SECONDS, "ops": sum(r["ops"] for r in results)}
    for kind, samples in latencies.items():
        summary[f"{kind}_count"] = len(samples)
        summary[f"{kind}_p50_us"] = round(percentile(samples, 0.50) * 1e6, 1)
        summary[f"{kind}_p99_us"] = round(percentile(samples, 0.99) * 1e6, 1)
    summary |= {
        "evictions": sum(s["keyspaces"]["cache"]["evictions"] for s in info),
        "expired": sum(s["expired"] for s in info),
        "merges": sum(s["merges"] for s in info),
        "cache_bytes": sum(s["keyspaces"]["cache"]["bytes"] for s in info),
    }
    print("SOAK SUMMARY", json.dumps(summary))
    for name, value in summary.items():
        record_property(name, value)
    assert [e for r in results for e in r["errors"]] == []
    assert [v for r in results for v in r["violations"]] == []
    assert len(latencies["get"]) > 1000 and latencies["session_write"] and latencies["cache_write"]
    assert summary["evictions"] > 0 and summary["expired"] > 0 and summary["merges"] > 0
    assert summary["cache_bytes"] <= CACHE_BOUND
    assert sum(s["keyspaces"]["sessions"]["evictions"] for s in info) == 0
