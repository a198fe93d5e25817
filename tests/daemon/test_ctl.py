"""ferricctl as scripts and operators run it: a subprocess, its output and its exit code, never a traceback."""

import json
import os
import subprocess
import sys
import time

import pytest

from ferricd.key_text import KeyTextError, parse_key, render_key
from hypothesis import given, strategies as st


@pytest.fixture(scope="module")
def ctl(module_daemon_factory):
    daemon = module_daemon_factory(shards=2)

    def run(*args, stdin=None):
        done = subprocess.run([sys.executable, "-m", "ferricd.ctl", "--run-dir", daemon.run_dir, *args],
                              capture_output=True, timeout=60, input=stdin)
        assert b"Traceback" not in done.stderr, done.stderr.decode()
        return done

    run.daemon = daemon
    return run


def test_version_and_help(ctl):
    assert ctl("--version").stdout.decode().startswith("ferricctl ")
    daemon_version = subprocess.run([sys.executable, "-m", "ferricd", "--version"], capture_output=True, text=True)
    assert daemon_version.returncode == 0 and daemon_version.stdout.startswith("ferricd ")
    help_text = ctl("--help").stdout.decode()
    assert "exit codes:" in help_text and "the key does not exist" in help_text
    assert "--raw" in ctl("get", "--help").stdout.decode()


def test_get_of_a_missing_key_exits_1_and_prints_nothing(ctl):
    done = ctl("get", "ctl:missing")
    assert done.returncode == 1 and done.stdout == b""
    assert b"no such key" in done.stderr


def test_set_get_round_trip_of_binary_keys_and_values_through_escapes(ctl):
    key, value = b"ctl:\x00\xff\\ \xc3\xa9", b"v\x01\nline"
    assert ctl("set", render_key(key), render_key(value)).returncode == 0
    listed = ctl("keys", "ctl:").stdout.decode().splitlines()
    assert render_key(key) in listed
    assert ctl("get", listed[listed.index(render_key(key))]).stdout.decode().rstrip("\n") == render_key(value)
    assert ctl("get", "--raw", render_key(key)).stdout == value


def test_keys_without_an_argument_lists_every_key(ctl):
    ctl("set", "ctl:all:1", "x")
    ctl("set", "other:all:2", "y")
    listed = ctl("keys").stdout.decode().splitlines()
    assert "ctl:all:1" in listed and "other:all:2" in listed


@pytest.mark.parametrize("args, message", [
    (("set", "ctl:k", "v", "--ttl-ms", "0"), "0 ms is outside 1 to"),
    (("set", "ctl:k", "v", "--ttl-ms", "-5"), "--ttl-ms"),
    (("set", "ctl:k", "v", "--ttl-ms", "soon"), "not a whole number"),
    (("get", "bad\\q"), "a backslash must start"),
    (("--timeout-ms", "0", "ping"), "is outside 1 to"),
    (("monitor", "--interval", "0"), "outside 0.05 to 3600 s"),
    (("nope",), "invalid choice"),
])
def test_bad_arguments_exit_2_with_one_clear_line(ctl, args, message):
    done = ctl(*args)
    assert done.returncode == 2
    assert message in done.stderr.decode()


def test_non_utf8_arguments_are_keys_too(ctl):
    raw_key = os.fsdecode(b"ctl:\xfe\xfd")
    assert ctl("set", raw_key, "bin").returncode == 0
    assert ctl("get", "ctl:\\xfe\\xfd").stdout == b"bin\n"


def test_a_closed_pipe_ends_ferricctl_quietly(ctl):
    ctl.daemon.client().mset({f"ctl:pipe:{i}": b"x" for i in range(5000)})  # more than a pipe buffer of output
    pipeline = subprocess.run(
        f"{sys.executable} -m ferricd.ctl --run-dir {ctl.daemon.run_dir} keys | head -1",
        shell=True, capture_output=True, timeout=60,
    )
    assert pipeline.stdout.count(b"\n") == 1
    assert b"Traceback" not in pipeline.stderr and b"BrokenPipe" not in pipeline.stderr


def test_info_reads_at_a_glance_and_as_json(ctl):
    text = ctl("info").stdout.decode()
    assert "dead %" in text and "KiB" in text or "MiB" in text
    assert "local reads in this client:" in text and "keys:" in text
    data = json.loads(ctl("info", "--json").stdout)
    assert len(data["shards"]) == 2 and "local_reads" in data
    assert {"keys", "live_bytes", "dead_bytes", "requests"} <= data["shards"][0].keys()


SLOW_SWEEP_CONFIG = """
[storage]
expiry_sweep_slots = 1
"""


def test_info_leaves_out_keys_that_expired_but_were_not_yet_swept(make_daemon):
    # The sweep looks at one slot a tick here, so most expired keys are still in the key directory.
    daemon = make_daemon(shards=2, config=SLOW_SWEEP_CONFIG)
    with daemon.client(local_reads=False).pipeline() as pipe:
        for i in range(2000):
            pipe.set(f"short:{i}", b"s" * 100, ttl_ms=200)
        for i in range(60):
            pipe.set(f"long:{i}", b"l" * 100, ttl_ms=600_000)
            pipe.set(f"forever:{i}", b"f" * 100)
        pipe.execute()
    time.sleep(0.5)

    def ctl(*args):
        done = subprocess.run([sys.executable, "-m", "ferricd.ctl", "--run-dir", daemon.run_dir, *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        return done.stdout

    shards = json.loads(ctl("info", "--json"))["shards"]
    assert sum(s["keys"] for s in shards) == 120
    assert sum(s["expired_unswept"] for s in shards) > 1000  # the situation under test: they were not swept
    assert not any(s["keys_estimated"] for s in shards)
    assert sum(s["keyspaces"]["default"]["keys"] for s in shards) == 120
    for s in shards:
        assert s["live_bytes"] + s["dead_bytes"] == s["data_bytes"]
        assert s["keyspaces"]["default"]["bytes"] == s["live_bytes"]
    text = ctl("info")
    total = next(line.split() for line in text.splitlines() if line.split()[:1] == ["all"])
    assert total[1] == "120"  # the "all" row: shard, keys, ...
    assert "expired keys are left out" in text


def test_monitor_prints_rates_and_latency(ctl):
    done = ctl("monitor", "--interval", "0.2", "--count", "2")
    assert done.returncode == 0
    lines = done.stdout.decode().splitlines()
    assert sum(line.startswith("shard") for line in lines) == 2
    assert "p99 ms" in lines[1]


def test_check_says_what_it_counts(ctl, tmp_path):
    done = ctl("check", str(tmp_path))
    assert done.returncode == 0
    assert b"records: records in the data files" in done.stdout
    assert ctl("check", str(tmp_path / "nowhere")).returncode == 2


@given(st.binary(max_size=40))
def test_rendering_is_reversible(data):
    assert parse_key(render_key(data)) == data


def test_rendering_keeps_printable_text_as_it_is():
    assert render_key("sess:é/42".encode()) == "sess:é/42"
    assert render_key(b"a\\b") == "a\\\\b"
    with pytest.raises(KeyTextError):
        parse_key("a\\x4")


def test_info_leads_with_what_is_wrong():
    """A table the shard could not put in the run directory (tests/daemon/test_hardening_full_run_dir.py
    makes one) is named above the numbers, with what to do about it."""
    from ferricd.ctl import format_info

    error = "no 4096-byte table in /run/ferricd (No space left on device): reads go through the shard"
    text = format_info([{"shard": 0, "index_file_error": error, "access_file_error": None},
                        {"shard": 1, "index_file_error": None}], "C extension")
    assert text.startswith("PROBLEMS\nshard 0: " + error + "; free space in the run directory")
    assert "shard 1:" not in text.split("\n\n")[0]
    assert "PROBLEMS" not in format_info([{"shard": 0, "index_file_error": None}], "C extension")
