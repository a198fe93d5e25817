"""Eviction on real daemons: a flooded lru keyspace stays bounded beside a durable one, and local reads count."""

import mmap
import os
import stat
import time

from ferric_ipc.file_layout import ACCESS_CLOCK_AT, ACCESS_HEADER, ACCESS_HEADER_BYTES, access_path
from ferric_ipc.keys import key_hash64
from ferric_ipc.routing import shard_for

MiB = 1024 * 1024
BOUND = 2 * MiB
CONFIG = f"""
[keyspaces.cache]
max_bytes = {BOUND}
"""


def cache_held(client):
    return sum(shard["keyspaces"]["cache"]["bytes"] for shard in client.info())


def test_twenty_mib_into_a_two_mib_cache_stays_bounded_and_sessions_survive_a_kill(make_daemon):
    daemon = make_daemon(shards=2, config=CONFIG)
    client = daemon.client(timeout_ms=10_000)
    value = b"c" * 4096
    count = 20 * MiB // len(value)
    sessions, peak = {}, 0
    for start in range(0, count, 64):
        with client.pipeline() as pipe:
            for i in range(start, min(count, start + 64)):
                pipe.set(f"sa:{i:06d}", value)
            pipe.execute()
        session = f"sess:{start}"
        sessions[session] = os.urandom(64)
        assert client.set(session, sessions[session]) is True  # fsync = "always": acknowledged means on disk
        peak = max(peak, cache_held(client))
    held = cache_held(client)
    assert peak <= 1.25 * BOUND
    assert 0.75 * BOUND <= held <= BOUND
    newest = range(count - (BOUND // 8) // len(value), count)  # the newest quarter of a shard's share is kept
    assert all(client.get(f"sa:{i:06d}") == value for i in newest)
    assert all(client.get(key) == data for key, data in sessions.items())
    info = client.info()
    assert sum(shard["keyspaces"]["cache"]["evictions"] for shard in info) > count // 2
    assert sum(shard["keyspaces"]["sessions"]["evictions"] for shard in info) == 0

    daemon.kill()  # SIGKILL to the supervisor and every shard
    daemon.start()
    client = daemon.client(timeout_ms=10_000)
    assert {key: client.get(key) for key in sessions} == sessions
    assert cache_held(client) <= BOUND  # evictions were written as deletes: they stay evicted
    assert all(client.get(f"sa:{i:06d}") == value for i in newest)


def test_keys_read_only_locally_outlive_keys_nobody_read(make_daemon):
    """Sampled LRU is approximate: a hot key can lose a draw where every other sample is newer, so the test
    asks what the policy promises (nearly every hot key kept, nearly every cold one gone), not exact LRU.
    Without local reads marking the access times, hot and cold keys age alike and none survives five
    turnovers of the bound."""
    daemon = make_daemon(shards=2, config=f"[keyspaces.cache]\nmax_bytes = {MiB}\n")
    writer = daemon.client(timeout_ms=10_000, local_reads=False)
    reader = daemon.client()
    value = b"r" * 256
    hot = [f"sa:hot:{i}" for i in range(40)]
    cold = [f"sa:cold:{i}" for i in range(40)]
    writer.mset({key: value for key in hot + cold})
    for start in range(0, 5 * MiB // len(value), 200):  # five times what fits
        writer.mset({f"sa:flood:{i}": value for i in range(start, start + 200)})
        reader.mget(hot)
    assert reader.read_counts["fallback"] == 0  # every read was local: no shard saw them
    assert sum(shard["gets"] for shard in writer.info()) == 0
    hot_kept = sum(found == value for found in reader.mget(hot))
    cold_kept = sum(found == value for found in writer.mget(cold))
    assert hot_kept >= 0.9 * len(hot), (hot_kept, cold_kept)
    assert cold_kept <= 0.1 * len(cold), (hot_kept, cold_kept)


def test_an_mget_marks_its_hits_used_in_every_shard_it_reads(make_daemon):
    """mget marks each hit in its own shard's access times, in C when the extension is built (the end-to-end
    test above cannot tell: the reads the Python path answers at each path check mark hot keys often enough)."""
    daemon = make_daemon(shards=2)  # the built-in cache keyspace evicts
    client = daemon.client()
    keys = [f"sa:mark:{i}".encode() for i in range(12)]
    assert {shard_for(key, 2) for key in keys} == {0, 1}
    client.mset({key: b"v" for key in keys})
    client.mget(keys)  # opens both readers
    time.sleep(0.15)
    client.mget(keys)  # their path checks map the access files
    readers = client._readers
    assert all(readers[shard]._access is not None for shard in (0, 1))
    for reader in readers.values():
        reader._path_checked_ns = time.monotonic_ns() + 10**12  # no Python-path read during the test
    files = {}
    for shard in (0, 1):
        with open(access_path(daemon.run_dir, shard), "r+b") as f:
            files[shard] = mmap.mmap(f.fileno(), 0)
    try:
        buckets = {}
        for key in keys:
            times = files[shard_for(key, 2)]
            buckets[key] = ACCESS_HEADER_BYTES + (key_hash64(key) & (ACCESS_HEADER.unpack_from(times)[3] - 1))
            times[buckets[key]] = (times[ACCESS_CLOCK_AT] + 128) % 256  # long unused
        slow_before = [reader.slow_lookups for reader in readers.values()]
        counts_before = dict(client.read_counts)
        assert client.mget(keys) == [b"v"] * len(keys)
        assert [reader.slow_lookups for reader in readers.values()] == slow_before  # the C path answered
        assert client.read_counts == {"local": counts_before["local"] + len(keys),
                                      "fallback": counts_before["fallback"]}
        for key in keys:
            times = files[shard_for(key, 2)]
            assert times[buckets[key]] in (times[ACCESS_CLOCK_AT], (times[ACCESS_CLOCK_AT] - 1) % 256), key
    finally:
        for times in files.values():
            times.close()


def test_the_access_file_lets_the_application_group_write(make_daemon):
    daemon = make_daemon(shards=1)  # the built-in cache keyspace evicts
    client = daemon.client()
    client.set("sa:x", b"v")
    mode = os.stat(access_path(daemon.run_dir, 0)).st_mode
    assert mode & stat.S_IWGRP and not mode & stat.S_IWOTH
    daemon.stop()
    assert not os.path.exists(access_path(daemon.run_dir, 0))  # a stopped shard leaves none to mark
