"""Every client operation against a real 2-shard ferricd, with exact expected results,
and two separate client processes seeing each other's writes."""

import json
import os
import subprocess
import sys
import time

import pytest

from ferric_ipc.errors import CommandError
from ferric_ipc.protocol import PROTOCOL_VERSION
from ferric_ipc.routing import shard_for
from tests.daemon.conftest import keys_on_shard

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_hello_describes_each_shard(daemon, client):
    seen_pids = set()
    for shard in range(2):
        hello = client.hello(shard=shard)
        assert hello["protocol"] == PROTOCOL_VERSION
        assert hello["shards"] == 2
        assert hello["shard"] == shard
        assert hello["max_value_bytes"] == 16 * 1024 * 1024
        assert isinstance(hello["epoch"], int) and hello["epoch"] > 0
        assert hello["pid"] != daemon.pid
        seen_pids.add(hello["pid"])
    assert len(seen_pids) == 2, "each shard is its own process"
    assert client.ping() is True
    assert client.ping(shard=1) is True


def test_get_set_roundtrip_exact_bytes(client):
    every_byte = bytes(range(256)) * 3
    assert client.set(b"ops:bin", every_byte) is True
    assert client.get(b"ops:bin") == every_byte
    assert client.set("ops:text-é", "välue ✓") is True
    assert client.get("ops:text-é") == "välue ✓".encode()
    assert client.get(b"ops:text-\xc3\xa9") == "välue ✓".encode(), "str keys are their UTF-8 bytes"
    assert client.set(b"ops:empty", b"") is True
    assert client.get(b"ops:empty") == b"", "an empty value is not a missing key"
    assert client.get(b"ops:never-set") is None
    big = os.urandom(1024 * 1024)
    assert client.set(b"ops:big", big) is True
    assert client.get(b"ops:big") == big
    assert client.set(b"ops:bin", b"overwritten") is True
    assert client.get(b"ops:bin") == b"overwritten"
    assert client.set(bytearray(b"ops:ba"), memoryview(b"mv")) is True
    assert client.get(b"ops:ba") == b"mv"


def test_ttl_expiry(client):
    assert client.set(b"ops:ttl", b"short", ttl_ms=300) is True
    assert client.get(b"ops:ttl") == b"short"
    remaining = client.pttl(b"ops:ttl")
    assert 0 < remaining <= 300
    assert client.exists(b"ops:ttl") == 1
    time.sleep(0.45)
    assert client.get(b"ops:ttl") is None
    assert client.pttl(b"ops:ttl") == -2
    assert client.exists(b"ops:ttl") == 0
    # An expired key is missing for nx as well.
    assert client.set(b"ops:ttl", b"again", nx=True) is True
    assert client.get(b"ops:ttl") == b"again"
    assert client.pttl(b"ops:ttl") == -1


def test_expire_persist_ttl(client):
    assert client.pttl(b"ops:exp:missing") == -2
    assert client.expire(b"ops:exp:missing", 1000) is False
    assert client.persist(b"ops:exp:missing") is False
    client.set(b"ops:exp", b"v")
    assert client.pttl(b"ops:exp") == -1
    assert client.persist(b"ops:exp") is False, "no expiry to remove"
    assert client.expire(b"ops:exp", 60_000) is True
    assert 59_000 < client.pttl(b"ops:exp") <= 60_000
    assert client.get(b"ops:exp") == b"v", "expire keeps the value"
    assert client.persist(b"ops:exp") is True
    assert client.pttl(b"ops:exp") == -1
    assert client.get(b"ops:exp") == b"v"
    assert client.expire(b"ops:exp", 200) is True
    time.sleep(0.35)
    assert client.get(b"ops:exp") is None
    assert client.expire(b"ops:exp", 1000) is False


def test_set_nx_xx(client):
    assert client.set(b"ops:nx", b"first", nx=True) is True
    assert client.set(b"ops:nx", b"second", nx=True) is False
    assert client.get(b"ops:nx") == b"first"
    assert client.set(b"ops:xx", b"first", xx=True) is False
    assert client.get(b"ops:xx") is None
    client.set(b"ops:xx", b"base")
    assert client.set(b"ops:xx", b"second", xx=True) is True
    assert client.get(b"ops:xx") == b"second"
    with pytest.raises(CommandError) as excinfo:
        client.set(b"ops:xx", b"both", nx=True, xx=True)
    assert excinfo.value.code == "BAD_ARGS"
    assert client.get(b"ops:xx") == b"second"


def test_set_keeps_or_replaces_ttl(client):
    client.set(b"ops:ttlkeep", b"a", ttl_ms=60_000)
    client.set(b"ops:ttlkeep", b"b")
    assert client.pttl(b"ops:ttlkeep") == -1, "a plain set removes the expiry (Redis SET semantics)"


def test_incr(client):
    assert client.incr(b"ops:ctr") == 1
    assert client.incr(b"ops:ctr") == 2
    assert client.incr(b"ops:ctr", 40) == 42
    assert client.incr(b"ops:ctr", -50) == -8
    assert client.get(b"ops:ctr") == b"-8"
    client.set(b"ops:ctr2", b"100")
    assert client.incr(b"ops:ctr2", 5) == 105
    assert client.incr(b"ops:ctr-missing", -3) == -3
    client.set(b"ops:notint", b"abc")
    with pytest.raises(CommandError) as excinfo:
        client.incr(b"ops:notint")
    assert excinfo.value.code == "NOT_INTEGER"
    assert client.get(b"ops:notint") == b"abc", "a refused incr leaves the value alone"
    client.set(b"ops:max", str(2**63 - 1).encode())
    with pytest.raises(CommandError) as excinfo:
        client.incr(b"ops:max")
    assert excinfo.value.code == "NOT_INTEGER"
    assert client.get(b"ops:max") == str(2**63 - 1).encode()
    # incr keeps the key's expiry
    client.set(b"ops:ctr-ttl", b"7", ttl_ms=60_000)
    assert client.incr(b"ops:ctr-ttl") == 8
    assert 0 < client.pttl(b"ops:ctr-ttl") <= 60_000


def test_getdel_delete_exists(client):
    client.set(b"ops:gd", b"value")
    assert client.getdel(b"ops:gd") == b"value"
    assert client.get(b"ops:gd") is None
    assert client.getdel(b"ops:gd") is None
    k0 = keys_on_shard(0, 2, "ops:del0:")
    k1 = keys_on_shard(1, 2, "ops:del1:")
    client.mset({k: b"x" for k in k0 + k1})
    assert client.exists(*k0, *k1, b"ops:del:missing") == 4
    assert client.exists(k0[0], k0[0]) == 2, "a key named twice counts twice"
    assert client.delete(k0[0], k1[0], b"ops:del:missing") == 2
    assert client.exists(*k0, *k1) == 2
    assert client.delete(k0[0], k1[0]) == 0
    assert client.delete(k0[1], k1[1]) == 2
    assert client.exists(*k0, *k1) == 0


def test_set_if(client):
    key, guard = b"{ops:tag}:value", b"{ops:tag}:gen"
    assert shard_for(key, 2) == shard_for(guard, 2)
    # expected None: only while the guard is missing
    assert client.set_if(key, b"v1", guard, None) is True
    assert client.get(key) == b"v1"
    client.set(guard, b"3")
    assert client.set_if(key, b"v2", guard, None) is False
    assert client.set_if(key, b"v2", guard, b"2") is False
    assert client.get(key) == b"v1"
    assert client.set_if(key, b"v3", guard, b"3") is True
    assert client.get(key) == b"v3"
    assert client.set_if(key, b"v4", guard, "3", ttl_ms=60_000) is True
    assert client.get(key) == b"v4"
    assert 0 < client.pttl(key) <= 60_000
    # keys on different shards
    a = keys_on_shard(0, 1, "ops:si0:")[0]
    b = keys_on_shard(1, 1, "ops:si1:")[0]
    with pytest.raises(CommandError) as excinfo:
        client.set_if(a, b"x", b, None)
    assert excinfo.value.code == "WRONG_SHARD"
    assert client.get(a) is None


def test_mset_mget_across_shards(client):
    k0 = keys_on_shard(0, 5, "ops:m0:")
    k1 = keys_on_shard(1, 5, "ops:m1:")
    interleaved = [k for pair in zip(k0, k1) for k in pair]
    mapping = {k: b"val-" + k for k in interleaved}
    assert client.mset(mapping) is True
    query = interleaved + [b"ops:m:missing"] + list(reversed(interleaved))
    expected = [b"val-" + k for k in interleaved] + [None] + [b"val-" + k for k in reversed(interleaved)]
    assert client.mget(query) == expected
    for shard, keys in ((0, k0), (1, k1)):  # each went to its own shard
        assert [shard_for(k, 2) for k in keys] == [shard] * 5
    assert client.mset({k0[0]: b"t0", k1[0]: b"t1"}, ttl_ms=60_000) is True
    assert 0 < client.pttl(k0[0]) <= 60_000 and 0 < client.pttl(k1[0]) <= 60_000
    assert client.pttl(k0[1]) == -1
    assert client.mget([]) == []


def test_scan_pages_cover_every_key_once(client):
    keys = sorted(f"ops:scan:{i:03d}".encode() for i in range(137))
    client.mset({k: b"s" for k in keys})
    client.set(b"ops:scanx", b"not under the prefix")
    client.set(b"ops:sca", b"not under the prefix")
    seen, cursor, pages = [], 0, 0
    while True:
        cursor, page = client.scan(b"ops:scan:", cursor, 10)
        assert len(page) <= 10
        seen.extend(page)
        pages += 1
        if cursor == 0:
            break
        assert pages < 1000
    assert sorted(seen) == keys, "every key exactly once, nothing else"
    assert pages >= 14
    assert sorted(client.scan_iter(b"ops:scan:", count=3)) == keys
    assert list(client.scan_iter(b"ops:scan:none:")) == []


def test_flush_prefix_counts(client):
    keys = [f"ops:fl:{i}".encode() for i in range(40)]
    client.mset({k: b"f" for k in keys})
    client.set(b"ops:fl-keep", b"kept")
    client.set(b"ops:f", b"kept")
    assert {shard_for(k, 2) for k in keys} == {0, 1}
    assert client.delete_prefix(b"ops:fl:") == 40
    assert client.mget(keys) == [None] * 40
    assert client.get(b"ops:fl-keep") == b"kept"
    assert client.get(b"ops:f") == b"kept"
    assert client.delete_prefix(b"ops:fl:") == 0


def test_info_per_shard(daemon, client):
    hellos = [client.hello(shard=s) for s in range(2)]
    before = client.info()
    assert [i["shard"] for i in before] == [0, 1]
    for info, hello in zip(before, hellos):
        assert info["pid"] == hello["pid"]
        assert info["epoch"] == hello["epoch"]
        assert info["rss_bytes"] > 1_000_000
        assert info["cpu_seconds"] >= 0
        assert info["open_files"] > 0
    # Only requests that reach the shard count, so reads go through ops a client never answers
    # from mapped memory: getdel (a read) and set(nx=True) (a read, then no write).
    new = {0: keys_on_shard(0, 3, "ops:info0:"), 1: keys_on_shard(1, 4, "ops:info1:")}
    missing = {0: keys_on_shard(0, 1, "ops:info0:missing:")[0], 1: keys_on_shard(1, 1, "ops:info1:missing:")[0]}
    for shard, keys in new.items():
        for key in keys:
            assert client.set(key, b"0123456789") is True
        assert client.set(keys[0], b"other", nx=True) is False  # read: a hit
        assert client.getdel(missing[shard]) is None  # read: a miss
    assert client.set(new[0][0], b"not a number") is True
    with pytest.raises(CommandError):
        client.incr(new[0][0])  # one failed request on shard 0: reads the value (a hit), counts an error
    after = client.info()
    delta = [{name: a[name] - b[name] for name in ("keys", "puts", "gets", "hits", "misses", "errors")}
             for a, b in zip(after, before)]
    assert delta[0] == {"keys": 3, "puts": 4, "gets": 3, "hits": 2, "misses": 1, "errors": 1}
    assert delta[1] == {"keys": 4, "puts": 4, "gets": 2, "hits": 1, "misses": 1, "errors": 0}
    for a, b in zip(after, before):
        assert a["requests"] > b["requests"]
        assert a["live_bytes"] > b["live_bytes"]
        assert a["files"] >= 1
        assert a["live_bytes"] + a["dead_bytes"] == a["data_bytes"]


CHILD = r"""
import json, sys
from ferric_ipc.client import Client
run_dir, mode, prefix = sys.argv[1:4]
client = Client(run_dir, timeout_ms=2000)
keys = [f"{prefix}{i}".encode() for i in range(20)]
if mode == "write":
    for k in keys:
        assert client.set(k, b"from-child-" + k)
    client.incr(prefix + "counter", 10)
    print(json.dumps({"written": len(keys)}))
else:
    print(json.dumps({"values": [None if v is None else v.decode() for v in client.mget(keys)],
                      "counter": client.get(prefix + "counter").decode()}))
"""


def run_child(run_dir, mode, prefix):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, run_dir, mode, prefix],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_two_client_processes_see_each_others_writes(daemon, client):
    # child writes, this process reads
    assert run_child(daemon.run_dir, "write", "ops:xp:a:") == {"written": 20}
    keys = [f"ops:xp:a:{i}".encode() for i in range(20)]
    assert {shard_for(k, 2) for k in keys} == {0, 1}
    assert client.mget(keys) == [b"from-child-" + k for k in keys]
    assert client.get(b"ops:xp:a:counter") == b"10"
    # this process writes, a child reads
    keys = [f"ops:xp:b:{i}".encode() for i in range(20)]
    client.mset({k: b"from-parent-" + k for k in keys})
    client.incr(b"ops:xp:b:counter", 7)
    assert run_child(daemon.run_dir, "read", "ops:xp:b:") == {
        "values": [f"from-parent-ops:xp:b:{i}" for i in range(20)],
        "counter": "7",
    }
    # a second Client object in the same process shares nothing with the first but the daemon
    other = daemon.client(timeout_ms=2000)
    assert other.set(b"ops:xp:c", b"other") is True
    assert client.get(b"ops:xp:c") == b"other"
    other.close()
