"""Worker processes and a self-checking value format for tests/daemon/test_local_reads.py.

The workers run in processes started with the multiprocessing "spawn" context, so
everything here is importable and every argument is picklable.

A value written by these tests checks itself::

    MAGIC(4) | key_len u16 | version u64 | pad_len u32 | key | pad | blake2b-128(key, version, pad)

so a reader can tell, from the value alone, that it is intact, that it belongs to
the key it asked for, and which version of that key it is.
"""

import hashlib
import os
import random
import struct
import time
import traceback

from ferric_ipc import native
from ferric_ipc.client import Client
from ferric_ipc.errors import FerricError

MAGIC = b"FLR1"
_HEAD = struct.Struct("<HQI")  # key_len, version, pad_len
_DIGEST_BYTES = 16
WRITERS = 4
READERS = 4
MAX_SAMPLES = 20  # violation messages kept per reader


class Violation(Exception):
    """A value that must never be returned: missing, damaged, for another key, or older than one already seen."""

    def __init__(self, message, kind="damaged"):
        super().__init__(message)
        self.kind = kind


def _digest(key, version, pad):
    h = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    h.update(key)
    h.update(version.to_bytes(8, "little"))
    h.update(pad)
    return h.digest()


def pad_length(rng):
    """Mostly small values, some around a page, a few spanning several pages: record sizes vary."""
    r = rng.random()
    if r < 0.70:
        return rng.randrange(0, 96)
    if r < 0.95:
        return rng.randrange(96, 3000)
    return rng.randrange(3000, 20000)


def make_value(key, version, rng=None, pad_len=None):
    rng = rng or random
    if pad_len is None:
        pad_len = pad_length(rng)
    pad = rng.randbytes(pad_len)
    return b"".join((MAGIC, _HEAD.pack(len(key), version, len(pad)), key, pad, _digest(key, version, pad)))


def decode_value(value):
    """``(key, version)`` of a value made by ``make_value``; raises Violation if it does not check out."""
    if not isinstance(value, bytes):
        raise Violation(f"value is {type(value).__name__}, not bytes")
    head_end = len(MAGIC) + _HEAD.size
    if len(value) < head_end + _DIGEST_BYTES or value[:len(MAGIC)] != MAGIC:
        raise Violation(f"not a test value ({len(value)} bytes, starts {value[:16]!r})")
    key_len, version, pad_len = _HEAD.unpack_from(value, len(MAGIC))
    if head_end + key_len + pad_len + _DIGEST_BYTES != len(value):
        raise Violation(f"length mismatch: header says {key_len}+{pad_len}, value has {len(value)} bytes")
    key = value[head_end:head_end + key_len]
    pad = value[head_end + key_len:head_end + key_len + pad_len]
    if _digest(key, version, pad) != value[-_DIGEST_BYTES:]:
        raise Violation(f"checksum mismatch in value of {key!r} version {version}")
    return key, version


def check_value(asked, value, last_seen, floor=0):
    """Check one value read for key ``asked``; updates ``last_seen[asked]``. Returns the version.

    ``floor`` is the version whose set() had already been acknowledged when the read started:
    the read must return that version or a newer one.
    """
    if value is None:
        raise Violation(f"{asked!r} read as missing, but it is never deleted", "missing")
    key, version = decode_value(value)
    if key != asked:
        raise Violation(f"asked for {asked!r}, got the value of {key!r} (version {version})", "foreign")
    previous = last_seen.get(asked, -1)
    if version < previous:
        raise Violation(f"{asked!r} went back from version {previous} to {version}", "backwards")
    if version < floor:
        raise Violation(
            f"{asked!r} read version {version}, but version {floor} was acknowledged before the read", "stale")
    last_seen[asked] = version
    return version


# -- stress workers ----------------------------------------------------------------


def writer_main(run_dir, writer_id, keys, acked, ready_q, start_evt, stop_evt, result_q, seed, timeout_ms):
    """Owns ``keys[i]`` for ``i % WRITERS == writer_id``; bumps their versions until ``stop_evt``.

    A version counts as written only once set()/mset() returned; it is then published in
    ``acked`` (a shared array, one slot per key) for the readers' freshness check. A call that
    failed is retried with the very same value until it is acknowledged, so a
    write that landed without its reply can never be overtaken by an older one.
    """
    result = {"role": "writer", "id": writer_id, "writes": 0, "errors": 0, "unexpected": [], "pending": {}}
    versions = {}
    try:
        client = Client(run_dir, timeout_ms=timeout_ms)
        rng = random.Random(seed)
        mine = [key for position, key in enumerate(keys) if position % WRITERS == writer_id]
        slot_of = {key: position for position, key in enumerate(keys)}
        versions = dict.fromkeys(mine, 0)  # the test stored version 0 of every key before starting us
        ready_q.put(("ready", "writer", writer_id))
        start_evt.wait()
        give_up_at = None
        while not stop_evt.is_set():
            batch = rng.sample(mine, rng.randint(2, 4)) if rng.random() < 0.15 else [rng.choice(mine)]
            mapping = {key: make_value(key, versions[key] + 1, rng) for key in batch}
            while True:
                try:
                    if len(mapping) == 1:
                        [(key, value)] = mapping.items()
                        if client.set(key, value) is not True:
                            raise AssertionError(f"set({key!r}) returned a non-True answer")
                    else:
                        client.mset(mapping)
                    break
                except FerricError:
                    result["errors"] += 1
                    if stop_evt.is_set():  # keep trying for a while after the stop; then report it pending
                        give_up_at = give_up_at or time.monotonic() + 30
                        if time.monotonic() > give_up_at:
                            result["pending"] = {key.hex(): versions[key] + 1 for key in mapping}
                            break
                    time.sleep(0.01)
            if result["pending"]:
                break
            for key in mapping:
                versions[key] += 1
                acked[slot_of[key]] = versions[key]
            result["writes"] += len(mapping)
        client.close()
    except BaseException:
        result["unexpected"].append(traceback.format_exc())
    result["versions"] = {key.hex(): version for key, version in versions.items()}
    result_q.put(result)


def reader_main(run_dir, reader_id, keys, acked, ready_q, start_evt, stop_evt, verify_evt, result_q, seed, timeout_ms,
                pure_python=False):
    """Reads ``keys`` with local reads until ``stop_evt``, checking every value it gets.

    ``pure_python`` keeps this process off the C extension, so one run checks both read paths.

    Then, once ``verify_evt`` is set (every writer has finished), reads every key once more
    with the same client and reports what it got in ``final``.
    """
    result = {
        "role": "reader", "id": reader_id, "reads": 0, "calls": 0, "errors": 0, "violations": 0,
        "samples": [], "kinds": {}, "unexpected": [], "local": 0, "fallback": 0, "max_version": 0,
    }
    try:
        if pure_python:
            native.extension = None  # read before any LocalShardReader exists in this process
        result["path"] = "python" if native.extension is None else "C"
        client = Client(run_dir, timeout_ms=timeout_ms, local_reads=True)
        rng = random.Random(seed)
        last_seen = {}
        slot_of = {key: position for position, key in enumerate(keys)}
        ready_q.put(("ready", "reader", reader_id))
        start_evt.wait()
        started = time.monotonic()

        def violation(exc):
            result["violations"] += 1
            result["kinds"][exc.kind] = result["kinds"].get(exc.kind, 0) + 1
            if len(result["samples"]) < MAX_SAMPLES:
                elapsed = time.monotonic() - started
                result["samples"].append(f"reader {reader_id} at +{elapsed:.3f} s: [{exc.kind}] {exc}")

        def check(asked, value, floor):
            try:
                result["max_version"] = max(result["max_version"], check_value(asked, value, last_seen, floor))
            except Violation as exc:
                violation(exc)
            result["reads"] += 1

        while not stop_evt.is_set():
            result["calls"] += 1
            r = rng.random()
            try:
                if r < 0.55:
                    key = rng.choice(keys)
                    floor = acked[slot_of[key]]
                    check(key, client.get(key), floor)
                elif r < 0.95:
                    asked = rng.sample(keys, rng.randint(2, 8))
                    floors = [acked[slot_of[key]] for key in asked]
                    values = client.mget(asked)
                    if len(values) != len(asked):
                        raise Violation(f"mget of {len(asked)} keys returned {len(values)} values", "count")
                    for key, value, floor in zip(asked, values, floors):
                        check(key, value, floor)
                elif r < 0.975:
                    key = rng.choice(keys)
                    ttl = client.pttl(key)
                    if ttl != -1:
                        raise Violation(f"ttl({key!r}) = {ttl}, but the key exists and never expires", "ttl")
                else:
                    asked = rng.sample(keys, 3)
                    found = client.exists(*asked)
                    if found != 3:
                        raise Violation(f"exists({asked!r}) = {found}, but every key exists", "exists")
            except FerricError:  # a shard restarting: allowed, counted
                result["errors"] += 1
                time.sleep(0.005)
            except Violation as exc:
                violation(exc)
            if result["calls"] % 256 == 0:
                time.sleep(0.0002)  # leave the shards some CPU on a small machine
        result["local"], result["fallback"] = client.read_counts["local"], client.read_counts["fallback"]
        result["last_seen"] = {key.hex(): version for key, version in last_seen.items()}
        verify_evt.wait(120)
        final = {}
        for key, value in zip(keys, client.mget(keys)):  # the long-lived client, after everything
            try:
                final[key.hex()] = decode_value(value)[1] if value is not None else None
            except Violation as exc:
                final[key.hex()] = f"bad value: {exc}"
        result["final"] = final
        result["final_counts"] = dict(client.read_counts)
        client.close()
    except BaseException:
        result["unexpected"].append(traceback.format_exc())
    result_q.put(result)


# -- read-your-writes --------------------------------------------------------------


def ryw_writer_main(run_dir, conn, rounds, seed, timeout_ms):
    """Process A: per round, one acknowledged write, then ``(round, key, expected, op)`` to B; waits for B.

    B answers "ok" to go on or "stop" to end early. Ends with ``("done", stats)``.
    """
    stats = {"rounds": 0, "unexpected": None}
    try:
        client = Client(run_dir, timeout_ms=timeout_ms)
        rng = random.Random(seed)
        previous_new = None
        for i in range(rounds):
            kind = i % 10
            if kind in (0, 1, 2, 3):  # a key never written before (inserts: the table grows along the way)
                key = f"ryw:new:{i}".encode()
                expected = f"ryw-{i}:".encode() + rng.randbytes(pad_length(rng))
                assert client.set(key, expected) is True
                op = "set-new"
                previous_new = key
            elif kind in (4, 5):  # overwrite one hot key
                key = b"ryw:hot"
                expected = f"hot-{i}:".encode() + rng.randbytes(pad_length(rng))
                assert client.set(key, expected) is True
                op = "overwrite"
            elif kind == 6:  # overwrite a hash-tagged hot key through mset
                key = b"ryw:{tag}:hot"
                expected = f"tag-{i}:".encode() + rng.randbytes(pad_length(rng))
                assert client.mset({key: expected, b"ryw:{tag}:other": b"o"}) is True
                op = "mset"
            elif kind == 7:  # delete the key written by the last set-new round
                key = previous_new
                assert client.delete(key) == 1
                expected = None
                op = "delete"
            elif kind == 8:  # delete the hot key (it comes back at the next overwrite round)
                key = b"ryw:hot"
                client.delete(key)
                expected = None
                op = "delete-hot"
            else:  # a value with an expiry far away
                key = b"ryw:ttl"
                expected = f"ttl-{i}:".encode() + rng.randbytes(pad_length(rng))
                assert client.set(key, expected, ttl_ms=600_000) is True
                op = "set-ttl"
            conn.send((i, key, expected, op))
            stats["rounds"] = i + 1
            if conn.recv() != "ok":
                break
        client.close()
    except BaseException:
        stats["unexpected"] = traceback.format_exc()
    conn.send(("done", stats))
    conn.close()


def overwrite_main(run_dir, key, ready_q, stop_evt, result_q, timeout_ms):
    """Overwrite ``key`` (which already exists) as fast as acknowledgements come, until ``stop_evt``."""
    result = {"writes": 0, "unexpected": None}
    try:
        client = Client(run_dir, timeout_ms=timeout_ms, local_reads=False)
        ready_q.put("ready")
        while not stop_evt.is_set():
            client.set(key, b"overwritten-%d" % result["writes"])
            result["writes"] += 1
        client.close()
    except BaseException:
        result["unexpected"] = traceback.format_exc()
    result_q.put(result)


def pid_alive(pid):
    """True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
