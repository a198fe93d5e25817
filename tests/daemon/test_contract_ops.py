"""The ops the integrations build on, against a real daemon over both transports, and raced by real processes."""

import multiprocessing
import time
from datetime import timedelta

import msgpack
import pytest

from ferric_ipc import (
    Client,
    CommandError,
    FerricTimeoutError,
    Lease,
    LimitError,
    LockNotAcquired,
)
from ferric_ipc.routing import shard_for


def unpack(value):
    return msgpack.unpackb(value, timestamp=3)


# -- TTLs, counters, conditional deletes -----------------------------------------------


def test_ttls_take_timedelta_and_pttl_is_milliseconds_ttl_seconds(client):
    assert client.set("op:td", b"v", ttl_ms=timedelta(minutes=2))
    assert 119_000 < client.pttl("op:td") <= 120_000
    assert client.ttl("op:td") == 120
    assert client.ttl("op:td-missing") == -2
    client.set("op:td-forever", b"v")
    assert client.ttl("op:td-forever") == -1 and client.pttl("op:td-forever") == -1
    with pytest.raises(TypeError, match="at least one millisecond"):
        client.set("op:td", b"v", ttl_ms=timedelta(microseconds=10))


def test_incr_ttl_applies_only_when_the_counter_is_created(client):
    assert client.incr("op:gen", 1, ttl_ms=60_000) == 1
    assert 0 < client.pttl("op:gen") <= 60_000
    assert client.incr("op:gen", 1, ttl_ms=timedelta(days=1)) == 2
    assert client.pttl("op:gen") <= 60_000, "an existing counter keeps its expiry"
    assert client.incr("op:gen-forever") == 1 and client.pttl("op:gen-forever") == -1


def test_delete_if_removes_only_the_expected_value(client):
    client.set("op:di", b"mine")
    assert client.delete_if("op:di", b"theirs") is False
    assert client.get("op:di") == b"mine"
    assert client.delete_if("op:di", "mine") is True
    assert client.get("op:di") is None
    assert client.delete_if("op:di", b"mine") is False


def test_getex_reads_and_changes_only_the_ttl(client):
    client.set("op:gx", b"v", ttl_ms=5_000)
    assert client.getex("op:gx", ttl_ms=timedelta(hours=1)) == b"v"
    assert client.pttl("op:gx") > 3_500_000
    assert client.getex("op:gx") == b"v" and client.pttl("op:gx") > 3_500_000, "no ttl_ms keeps the expiry"
    assert client.getex("op:gx", persist=True) == b"v" and client.pttl("op:gx") == -1
    assert client.getex("op:gx-missing", ttl_ms=1000) is None and client.get("op:gx-missing") is None
    with pytest.raises(TypeError, match="not both"):
        client.getex("op:gx", ttl_ms=1000, persist=True)


def test_expire_keeps_the_value(client):
    client.set("op:ex", b"value")
    assert client.expire("op:ex", timedelta(seconds=30)) is True
    assert client.get("op:ex") == b"value" and 0 < client.pttl("op:ex") <= 30_000
    assert client.expire("op:ex-missing", 1000) is False
    with pytest.raises(TypeError, match="persist"):
        client.expire("op:ex", None)


# -- patch ---------------------------------------------------------------------------------


def test_patch_creates_merges_and_deletes_fields(client):
    assert client.patch("op:p", set={"user": 7, "cart": [1, 2]}) is True
    assert unpack(client.get("op:p")) == {"user": 7, "cart": [1, 2]}
    assert client.patch("op:p", set={"cart": [1, 2, 3], "theme": "dark"}, delete=["user"]) is True
    assert unpack(client.get("op:p")) == {"cart": [1, 2, 3], "theme": "dark"}
    assert client.patch("op:p", delete=["cart", "theme", "never-there"]) is True
    assert unpack(client.get("op:p")) == {}


def test_patch_ttl_is_kept_unless_given(client):
    client.patch("op:pt", set={"a": 1}, ttl_ms=60_000)
    client.patch("op:pt", set={"b": 2})
    assert 0 < client.pttl("op:pt") <= 60_000
    client.patch("op:pt", set={"c": 3}, ttl_ms=timedelta(hours=2))
    assert client.pttl("op:pt") > 3_600_000


def test_patch_without_create_leaves_a_missing_key_missing(client):
    assert client.patch("op:pc", set={"a": 1}, create=False) is False
    assert client.get("op:pc") is None
    client.patch("op:pc", set={"a": 1})
    assert client.patch("op:pc", set={"b": 2}, create=False) is True
    assert unpack(client.get("op:pc")) == {"a": 1, "b": 2}


def test_patch_keeps_the_callers_extension_types_byte_for_byte(client):
    def encode(value):
        return msgpack.packb(msgpack.ExtType(42, value.encode()))

    client.patch("op:pe", set={"when": "2026-11-29"}, encode=encode)
    client.patch("op:pe", set={"plain": 1})
    stored = msgpack.unpackb(client.get("op:pe"))
    assert stored == {"when": msgpack.ExtType(42, b"2026-11-29"), "plain": 1}


def test_patch_refuses_a_value_that_is_not_a_map_and_changes_nothing(client):
    for value in (b"plain text", msgpack.packb([1, 2]), msgpack.packb({1: "int key"}), msgpack.packb({}) + b"x"):
        client.set("op:pw", value)
        with pytest.raises(CommandError, match="msgpack map with str keys") as error:
            client.patch("op:pw", set={"a": 1})
        assert error.value.code == "WRONG_TYPE"
        assert client.get("op:pw") == value


def test_patch_checks_its_arguments_before_sending(client):
    with pytest.raises(TypeError, match="fields are str"):
        client.patch("op:pa", set={1: "x"})
    with pytest.raises(TypeError, match="list of field names"):
        client.patch("op:pa", delete="field")
    with pytest.raises(TypeError, match="encode must return bytes"):
        client.patch("op:pa", set={"a": 1}, encode=lambda value: "text")
    with pytest.raises(TypeError):
        client.patch("op:pa", set={"a": object()})
    with pytest.raises(CommandError, match="not exactly one msgpack object"):
        client.patch("op:pa", set={"a": 1}, encode=lambda value: b"\x01\x02")
    assert client.get("op:pa") is None


def test_patch_past_the_value_limit_is_refused_and_keeps_the_old_map(client):
    client.patch("op:pl", set={"a": 1})
    with pytest.raises(LimitError):
        client.patch("op:pl", set={"big": b"x" * (16 * 1024 * 1024)})
    assert unpack(client.get("op:pl")) == {"a": 1}


# -- leases and locks ---------------------------------------------------------------------------


def test_a_lease_names_its_holder_and_is_released_only_by_it(client):
    first = client.lease("op:lease", 60_000)
    assert isinstance(first, Lease) and first.acquired and first.ttl_ms == 60_000
    assert b":" in first.token  # host:pid:random
    second = client.lease("op:lease", 60_000)
    assert not second.acquired and second.token == first.token and 0 < second.ttl_ms <= 60_000
    assert client.release("op:lease", second.token + b"x") is False
    renewed = client.lease("op:lease", 120_000, token=first.token)
    assert renewed.acquired and client.pttl("op:lease") > 60_000
    assert client.release("op:lease", first.token) is True
    assert client.lease("op:lease", 1000).acquired


def test_a_lease_whose_holder_died_is_free_at_its_ttl(client):
    assert client.lease("op:dead", 150).acquired
    assert not client.lease("op:dead", 150).acquired
    time.sleep(0.2)
    assert client.lease("op:dead", 150).acquired


def test_lock_waits_for_a_release_and_gives_up_after_wait_ms(client):
    holder = client.lease("op:lock", 60_000)
    started = time.monotonic()
    with pytest.raises(LockNotAcquired, match="wait_ms=50") as error:
        with client.lock("op:lock", 1000, wait_ms=50):
            pass
    assert isinstance(error.value, FerricTimeoutError)
    assert time.monotonic() - started >= 0.05
    client.release("op:lock", holder.token)
    with client.lock("op:lock", 1000) as lock:
        assert client.get("op:lock") == lock.token
    assert client.get("op:lock") is None, "leaving the block releases the lease"


def test_lock_takes_a_lease_whose_holder_expires_while_waiting(client):
    client.lease("op:lock-exp", 100)
    with client.lock("op:lock-exp", 1000, wait_ms=2000) as lock:
        assert lock.token is not None


# -- transactions and pipelines ---------------------------------------------------------------


def test_a_transaction_runs_in_order_and_sees_its_own_writes(client):
    with client.transaction("u1") as tx:
        tx.set("op:{u1}:a", b"1").incr("op:{u1}:a", 41).get("op:{u1}:a")
        tx.patch("op:{u1}:s", set={"f": 1}).delete_if("op:{u1}:a", b"42").exists("op:{u1}:a")
        assert len(tx) == 6
        assert tx.execute() == [True, 42, b"42", True, True, 0]
    assert client.get("op:{u1}:a") is None and unpack(client.get("op:{u1}:s")) == {"f": 1}


def test_a_failing_transaction_writes_nothing(client):
    client.set("op:{u2}:text", b"not a number")
    tx = client.transaction("u2")
    # The first four succeed (a deleted counter counts from 0); the patch of a plain value fails.
    tx.set("op:{u2}:a", b"new").delete("op:{u2}:text").incr("op:{u2}:text")
    tx.set("op:{u2}:b", b"never")
    tx.patch("op:{u2}:a", set={"f": 1})
    with pytest.raises(CommandError, match="transaction aborted at op 4 \\(patch\\).*nothing was written") as error:
        tx.execute()
    assert error.value.code == "WRONG_TYPE"
    assert client.get("op:{u2}:text") == b"not a number"
    assert client.get("op:{u2}:a") is None and client.get("op:{u2}:b") is None


def test_a_transaction_holds_only_keys_of_its_hash_tag(client):
    tx = client.transaction("u3")
    with pytest.raises(CommandError, match="hash tag") as error:
        tx.set("op:{other}:a", b"v")
    assert error.value.code == "WRONG_SHARD"
    with pytest.raises(TypeError, match="braces"):
        client.transaction("{u3}")
    assert client.transaction("u3").execute() == []


def test_a_transaction_refuses_a_lying_client_on_the_shard(daemon, client):
    """A transaction frame sent straight to a shard with a key of another shard is refused whole."""
    other = next(f"op:far{i}".encode() for i in range(100) if shard_for(f"op:far{i}".encode(), 2) == 1)
    mine = next(f"op:near{i}".encode() for i in range(100) if shard_for(f"op:near{i}".encode(), 2) == 0)
    with pytest.raises(CommandError, match="another shard") as error:
        client._call(0, "multi", [[["set", [mine, b"v", None, False, False]], ["set", [other, b"v", None, False, False]]]])
    assert error.value.code == "WRONG_SHARD"
    assert client.get(mine) is None


def test_pipeline_returns_errors_in_place_when_asked(client):
    with client.pipeline() as pipe:
        pipe.set("op:pp", b"text").incr("op:pp").get("op:pp")
        results = pipe.execute(raise_on_error=False)
    assert results[0] is True and results[2] == b"text"
    assert isinstance(results[1], CommandError) and results[1].code == "NOT_INTEGER"
    pipe = client.pipeline()
    pipe.set("op:pp2", b"x").incr("op:pp2").lease("op:pp-lease", 1000)
    with pytest.raises(CommandError):
        pipe.execute()
    assert client.get("op:pp2") == b"x", "a pipeline is not atomic: the set before the error stays"
    pipe.lease("op:pp-lease2", 1000)
    assert isinstance(pipe.execute()[0], Lease)


def test_a_pipeline_left_by_an_exception_sends_nothing(client):
    with pytest.raises(RuntimeError):
        with client.pipeline() as pipe:
            pipe.set("op:pq", b"v")
            raise RuntimeError("the block failed")
    assert len(pipe) == 0 and client.get("op:pq") is None


# -- races between real processes -------------------------------------------------------------

RACERS = 4
ROUNDS = 150


def _patch_own_field(run_dir, transport, racer, start):
    client = Client(run_dir, transport=transport)
    start.wait()
    for i in range(ROUNDS):
        client.patch("race:session", set={f"f{racer}": i, "shared": racer})
    client.close()


def _release_once(run_dir, transport, token, start, wins):
    client = Client(run_dir, transport=transport)
    start.wait()
    wins.put(client.delete_if("race:owned", token))
    client.close()


def _count_under_lock(run_dir, transport, start):
    client = Client(run_dir, transport=transport)
    start.wait()
    for _ in range(40):
        with client.lock("race:lock", 5_000, wait_ms=30_000):
            # A read-modify-write that only a working lock keeps exact.
            value = int(client.get("race:counter") or b"0")
            client.set("race:counter", str(value + 1))
    client.close()


def _run_racers(target, args_for):
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    processes = [context.Process(target=target, args=args_for(context, start, racer)) for racer in range(RACERS)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0


def test_concurrent_patches_of_different_fields_all_survive(daemon, client):
    _run_racers(_patch_own_field, lambda ctx, start, racer: (daemon.run_dir, client.transport, racer, start))
    fields = unpack(client.get("race:session"))
    assert {f"f{racer}": ROUNDS - 1 for racer in range(RACERS)}.items() <= fields.items()
    assert fields["shared"] in range(RACERS)


def test_only_one_of_many_concurrent_delete_ifs_wins(daemon, client):
    queue = multiprocessing.get_context("spawn").Queue()
    for _ in range(2):
        client.set("race:owned", b"token-1")
        _run_racers(_release_once, lambda ctx, start, racer: (daemon.run_dir, client.transport, b"token-1", start, queue))
        wins = [queue.get(timeout=10) for _ in range(RACERS)]
        assert wins.count(True) == 1, wins


def test_a_lock_excludes_every_other_process(daemon, client):
    _run_racers(_count_under_lock, lambda ctx, start, racer: (daemon.run_dir, client.transport, start))
    assert client.get("race:counter") == str(RACERS * 40).encode()


# -- the TTL range -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl_ms", [2**62 + 1, 2**63 - 1, 2**63, 2**64 - 1])
def test_a_ttl_past_the_range_is_refused_before_sending(client, ttl_ms):
    with pytest.raises(ValueError, match="ttl_ms=None"):
        client.set("op:far", b"v", ttl_ms=ttl_ms)
    assert client.get("op:far") is None


def test_the_longest_ttl_reads_the_same_on_every_path(daemon, client):
    """A TTL of 2**62 ms (or a timedelta of the largest size) is read back as existing by the local
    read, the pure-Python path and the shard alike."""
    assert client.set("op:longest", b"v", ttl_ms=2**62)
    assert client.set("op:largest-td", b"v", ttl_ms=timedelta.max)
    remote = Client(daemon.run_dir, local_reads=False, transport=client.transport)
    try:
        for key in ("op:longest", "op:largest-td"):
            assert client.get(key) == remote.get(key) == b"v"
            assert client.exists(key) == remote.exists(key) == 1
            assert client.pttl(key) > 2**50 and remote.pttl(key) > 2**50
    finally:
        remote.close()


def test_the_shard_refuses_a_ttl_past_the_range(client):
    with pytest.raises(CommandError, match="2\\*\\*62") as error:
        client._call(shard_for(b"op:raw", client.shard_count), "set", [b"op:raw", b"v", 2**63, False, False])
    assert error.value.code == "BAD_ARGS"


def test_a_value_over_the_daemons_limit_is_refused_before_anything_is_sent(make_daemon):
    daemon = make_daemon(shards=1, config='[storage]\nmax_value_bytes = "4KiB"\n')
    client = daemon.client()
    before = client.info()[0]["requests"]
    too_long = b"x" * 4097
    for attempt in (
        lambda: client.set("op:big", too_long),
        lambda: client.mset({"op:big": too_long}),
        lambda: client.set_if("{t}big", too_long, "{t}guard", None),
        lambda: client.pipeline().set("op:big", too_long),
        lambda: client.transaction("t").set("{t}big", too_long),
    ):
        with pytest.raises(LimitError, match="this ferricd accepts at most 4096"):
            attempt()
    assert client.info()[0]["requests"] == before + 1, "only the info request itself reached the shard"
    assert client.set("op:big", b"x" * 4096) is True


def test_read_counts_count_reads_sent_to_the_daemon_when_local_reads_are_off(daemon):
    client = Client(daemon.run_dir, local_reads=False)
    try:
        client.get("op:rc")
        client.mget(["op:rc", "op:rc2"])
        assert client.read_counts == {"local": 0, "fallback": 3}
    finally:
        client.close()
