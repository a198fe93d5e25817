"""Keyspaces on real daemons: default TTLs, a full keyspace refusing writes, and what info shows per keyspace."""

import subprocess
import sys

import pytest

from ferric_ipc import LimitError

CONFIG = """
[keyspaces.tokens]
prefix = "tok:"
default_ttl_ms = 60000

[keyspaces.quota]
prefix = "quota:"
fsync = "always"
max_bytes = 4096
"""


@pytest.fixture(scope="module")
def daemon(module_daemon_factory):
    return module_daemon_factory(shards=1, config=CONFIG)


@pytest.fixture
def client(daemon):
    client = daemon.client()
    client.delete_prefix(b"")
    return client


def test_writes_without_a_ttl_get_their_keyspaces_default(client):
    client.set("tok:plain", b"v")
    assert 59_000 < client.pttl("tok:plain") <= 60_000
    client.set("tok:given", b"v", ttl_ms=5_000)
    assert client.pttl("tok:given") <= 5_000  # a TTL the write gives wins
    client.incr("tok:counter")
    assert 59_000 < client.pttl("tok:counter") <= 60_000
    client.patch("tok:map", set={"a": 1})
    assert 59_000 < client.pttl("tok:map") <= 60_000
    client.mset({"tok:m1": b"1", "other:m2": b"2"})
    assert client.pttl("tok:m1") > 59_000 and client.pttl("other:m2") == -1  # per key: other keyspaces have none
    with client.pipeline() as pipe:
        pipe.set("tok:piped", b"v")
        pipe.execute()
    assert client.pttl("tok:piped") > 59_000


def test_ops_that_keep_a_ttl_keep_it_and_persist_removes_it(client):
    client.set("tok:kept", b"v", ttl_ms=5_000)
    assert client.getex("tok:kept") == b"v" and client.pttl("tok:kept") <= 5_000
    client.set("tok:counter2", b"5", ttl_ms=5_000)
    client.incr("tok:counter2")
    assert client.pttl("tok:counter2") <= 5_000  # an existing counter keeps its expiry
    assert client.persist("tok:kept") and client.pttl("tok:kept") == -1


def test_a_full_keyspace_that_never_evicts_refuses_the_write_and_keeps_its_keys(client):
    stored = 0
    with pytest.raises(LimitError, match="'quota' is full") as refused:
        while True:
            client.set(f"quota:{stored}", b"q" * 200)
            stored += 1
    assert refused.value.code == "KEYSPACE_FULL"
    assert stored > 10
    assert all(client.get(f"quota:{i}") == b"q" * 200 for i in range(stored))
    client.set("elsewhere", b"x" * 10_000)  # other keyspaces are not affected
    client.delete("quota:0")
    client.set("quota:again", b"q" * 200)  # deleting made room


def test_info_shows_keys_bytes_and_evictions_per_keyspace(daemon, client):
    client.set("tok:a", b"v")
    client.set("sess:a", b"v" * 10)
    (shard,) = client.info()
    assert set(shard["keyspaces"]) == {"default", "sessions", "cache", "tokens", "quota"}
    assert shard["keyspaces"]["sessions"] == {"keys": 1, "bytes": 29 + 6 + 10, "max_bytes": 0, "evictions": 0}
    assert shard["keyspaces"]["quota"]["max_bytes"] == 4096
    text = subprocess.run([sys.executable, "-m", "ferricd.ctl", "--run-dir", daemon.run_dir, "info"],
                          capture_output=True, text=True, timeout=60).stdout
    header = next(line for line in text.splitlines() if "keyspace" in line)
    assert header.split() == ["shard", "keyspace", "keys", "bytes", "max", "evictions"]
    assert any(line.split()[:3] == ["0", "sessions", "1"] for line in text.splitlines())
