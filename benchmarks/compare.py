"""python-diskcache's benchmark method against every backend, in one run: ferric, Redis, memcached, diskcache.

Method (python-diskcache's tests/benchmark_core.py, as published with its
timings_core_p1/p8 tables), the same for every backend:

* 100 keys (``b"0"`` ... ``b"99"``), preloaded with their own name before the run;
* each process: ``--ops`` operations (100,000 by default) drawn at random, seeded
  with the process number: 90% ``get``, 9% ``set`` of a 20-byte value, 1% ``delete``;
* every operation timed alone with ``time.perf_counter``; the first 1,000
  timings of each process are dropped (warm-up);
* run with 1 process and with 8 processes, all started together; the timings
  are merged over the processes and reported per op as count, misses,
  p50 / p90 / p99 / max in µs, and "total": the sum of all timed operations in
  seconds (diskcache's "Total"). Wall time is printed alongside.

Backends (each server started here on a Unix socket in a short temporary
directory under /tmp, and stopped at the end, also on Ctrl-C or an error):

* ferric (``ferric_ipc.Client``, default Unix stream transport; ferricd with
  ``--shards`` shards, one per CPU by default, the daemon's own default) with
  local reads on and off, each ``[keyspaces.default] fsync`` mode: never,
  interval (the default configuration), always;
* Redis through redis-py: redis-server ``--appendonly no`` (redis-py's usual
  peer), and ``--appendonly yes --appendfsync always``;
* memcached through pymemcache, ``default_noreply=False`` and ``True``;
* diskcache ``Cache`` and ``FanoutCache`` (its defaults: 8 shards, timeout 10 ms).

A backend whose server binary or Python package is missing is skipped with the
reason (Debian: ``apt-get install redis-server memcached``; Python:
``pip install -e '.[bench]'``).

Also measured in the same run:

* server CPU per op: utime + stime from /proc/<pid>/stat of the server
  processes (ferricd: the sum over its shard processes, pids from each shard's
  ``hello``; the supervisor is not counted) before and after --probe-ops
  sequential SETs and then GETs from one process (ferric with local reads off,
  so the shard serves the GETs); and the same per op of each mixed run;
* local reads under the mixed workload (local reads on, default config):
  the share of local reads the C lookup handed to the slow pure-Python path
  (``Client.slow_local_reads``; n/a with a client that does not count them),
  and the local GET p50 of the mixed run against a read-only run (100% get,
  same method).

Targets (PASS/MISS):

* SET p50 <= 1.0x redis-py at 1 and at 8 processes, ferric fsync=never
  against Redis appendonly no; fsync=always against Redis appendfsync always;
* ferric's total time (default configuration: local reads on, fsync=interval)
  the lowest of all backends, at 1 and at 8 processes;
* shard CPU per SET and per GET within 2x redis-server's (fsync=never
  against appendonly no);
* local GET p50 in the mixed run within 1.5x that of the read-only run.

    python3 benchmarks/compare.py              # full run: about 11 minutes on 2 cores
    python3 benchmarks/compare.py --quick      # smoke run, about 30 s
    python3 benchmarks/compare.py --backends ferric,redis --procs 1
"""

import argparse
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from queue import Empty

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)  # for ipc_bench

import ipc_bench as ib  # noqa: E402  (its redis-server, ferricd, percentile, terminate and machine report)
from ferric_ipc import Client, native  # noqa: E402

redis = ib.redis  # None without redis-py
try:
    import pymemcache.client.base as pymemcache_base
except ImportError:  # the "bench" extra: pip install -e '.[bench]'
    pymemcache_base = None
try:
    import diskcache
except ImportError:
    diskcache = None

KEY_RANGE = 100
VALUE_BYTES = 20
GET_BELOW = 0.90  # random() below this: get
SET_BELOW = 0.99  # below this: set; else delete
WARMUP_OPS = 1_000
FULL = {"ops": 100_000, "probe_ops": 30_000}
QUICK = {"ops": 4_000, "probe_ops": 3_000}
FSYNC_MODES = ("never", "interval", "always")
DEFAULT_FSYNC = "interval"  # [keyspaces.default] fsync of the embedded defaults
CLIENT_TIMEOUT_S = 10
START_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 1_800.0  # one mixed run, all its processes
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")

TARGET_SET_P50_RATIO = 1.0  # ferric / redis-py, at most
TARGET_CPU_RATIO = 2.0  # ferric shard CPU / redis-server CPU per op, at most
TARGET_LOCAL_GET_RATIO = 1.5  # local get p50, mixed / read-only, at most

ACTIONS = ("get", "set", "delete")
GROUPS = ("ferric", "redis", "memcached", "diskcache")


@dataclass
class Backend:
    """One client configuration: how each worker process opens it, and whose CPU it costs."""

    label: str
    kind: str  # ferric, redis, memcached, diskcache, diskcache-fanout
    address: str  # run dir, socket path or cache directory
    options: dict = field(default_factory=dict)
    server_pids: list = field(default_factory=list)


# -- servers --------------------------------------------------------------------


def wait_ready(process, name, probe):
    """Poll ``probe()`` until it is true; raise if ``process`` exits or START_TIMEOUT_S passes."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} during start-up")
        try:
            if probe():
                return
        except Exception as exc:  # not up yet
            last_error = exc
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not answer within {START_TIMEOUT_S:.0f} s (last error: {last_error!r})")


class FerricServer(ib.Ferricd):
    """ferricd with the benchmark's keys (default keyspace) at one fsync mode; knows its shard pids."""

    def __init__(self, base, fsync, shards):
        super().__init__(base, f"f-{fsync}", shards, fsync)
        self.shard_pids = []

    def start(self):
        with open(self.config_path, "w") as f:
            f.write(f'[keyspaces.default]\nfsync = "{self.fsync}"\n')
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ferricd", "--config", self.config_path, "--data-dir", self.data_dir,
             "--run-dir", self.run_dir, "--shards", str(self.shards)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

        def answers():
            with Client(self.run_dir, timeout_ms=500) as probe:
                return probe.ping() and probe.shard_count == self.shards

        try:
            wait_ready(self.process, f"ferricd ({self.name})", answers)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from None
        self.children = self._child_pids()
        with Client(self.run_dir, timeout_ms=5_000) as client:
            self.shard_pids = [client.hello(shard)["pid"] for shard in range(self.shards)]
        return self


class MemcachedServer:
    """memcached on a Unix socket in ``base`` (no TCP), 64 MB of memory, its default threads."""

    def __init__(self, base):
        self.socket_path = os.path.join(base, "memcached.sock")
        self.log_path = os.path.join(base, "memcached.log")
        self.process = None
        self.exit_status = None

    def start(self):
        command = ["memcached", "-s", self.socket_path, "-a", "0700", "-m", "64"]
        if os.geteuid() == 0:
            command += ["-u", "root"]  # memcached refuses to run as root without naming the user
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(self.process, "memcached", self._answers)
        return self

    def _answers(self):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1)
            probe.connect(self.socket_path)
            probe.sendall(b"version\r\n")
            return probe.recv(64).startswith(b"VERSION")

    def stop(self):
        if self.process is None:
            return "not started"
        self.exit_status = ib.terminate(self.process, self.exit_status)
        self._log.close()
        return self.exit_status


def server_version(command):
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception as exc:
        return f"({' '.join(command)} failed: {exc})"


def skip_reasons():
    """{group: why it is skipped} for the backends this machine cannot run."""
    reasons = {}
    if redis is None:
        reasons["redis"] = "redis-py is not installed (pip install -e '.[bench]')"
    elif shutil.which("redis-server") is None:
        reasons["redis"] = "redis-server is not on PATH (apt-get install redis-server)"
    if pymemcache_base is None:
        reasons["memcached"] = "pymemcache is not installed (pip install -e '.[bench]')"
    elif shutil.which("memcached") is None:
        reasons["memcached"] = "memcached is not on PATH (apt-get install memcached)"
    if diskcache is None:
        reasons["diskcache"] = "diskcache is not installed (pip install -e '.[bench]')"
    return reasons


# -- CPU of server processes ----------------------------------------------------------


def cpu_s(pids):
    """utime + stime, in seconds, of the processes ``pids`` (all their threads), from /proc/<pid>/stat."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5); [0] here is field 3
    return ticks / CLOCK_TICKS_PER_S


# -- clients and the workload ----------------------------------------------------------


def open_client(backend):
    if backend.kind == "ferric":
        return Client(backend.address, timeout_ms=CLIENT_TIMEOUT_S * 1000, local_reads=backend.options["local_reads"])
    if backend.kind == "redis":
        return redis.Redis(unix_socket_path=backend.address, socket_timeout=CLIENT_TIMEOUT_S)
    if backend.kind == "memcached":
        return pymemcache_base.Client(backend.address, default_noreply=backend.options["noreply"],
                                      timeout=CLIENT_TIMEOUT_S, connect_timeout=CLIENT_TIMEOUT_S)
    if backend.kind == "diskcache":
        return diskcache.Cache(backend.address)
    if backend.kind == "diskcache-fanout":
        return diskcache.FanoutCache(backend.address)
    raise ValueError(backend.kind)


def close_client(client):
    close = getattr(client, "close", None)
    if close is not None:
        close()


def key_of(number):
    return str(number).encode()


def preload(backend):
    """Every key set to its own name, as diskcache's dispatch() does before starting the workers."""
    client = open_client(backend)
    try:
        for number in range(KEY_RANGE):
            client.set(key_of(number), key_of(number))
    finally:
        close_client(client)


def run_ops(client, seed, ops, warmup_ops, get_below=GET_BELOW, set_below=SET_BELOW):
    """The timed loop of one process: ``(timings_s, misses)``, both per action, warm-up dropped."""
    rng = random.Random(seed)
    timings_s = {action: [] for action in ACTIONS}
    misses = dict.fromkeys(ACTIONS, 0)
    get, set_, delete = client.get, client.set, client.delete
    clock = time.perf_counter
    for count in range(ops):
        key = key_of(rng.randrange(KEY_RANGE))
        choice = rng.random()
        if choice < get_below:
            start = clock()
            result = get(key)
            end = clock()
            action, miss = "get", result is None
        elif choice < set_below:
            value = b"%020d" % count  # VALUE_BYTES
            start = clock()
            result = set_(key, value)
            end = clock()
            action, miss = "set", result is False
        else:
            start = clock()
            result = delete(key)
            end = clock()
            action, miss = "delete", not result
        if count >= warmup_ops:
            timings_s[action].append(end - start)
            misses[action] += miss
    return timings_s, misses


def ferric_read_counts(client):
    """``{"local": n, "fallback": n, "slow": n}``; "slow" (local reads that took the pure-Python path)
    only from a client that counts them."""
    counts = dict(client.read_counts)
    slow = getattr(client, "slow_local_reads", None)
    if slow is not None:
        counts["slow"] = slow
    return counts


def _worker(backend, number, ops, get_below, start_event, queue, results_path):
    """One benchmark process: open the client, wait for the start, run, write the timings to ``results_path``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        client = open_client(backend)
        client.get(key_of(0))  # connected before the start
        queue.put(("ready", number, None))
        start_event.wait()
        timings_s, misses = run_ops(client, number, ops, WARMUP_OPS, get_below)
        read_counts = ferric_read_counts(client) if backend.kind == "ferric" else {}
        close_client(client)
        with open(results_path, "wb") as f:
            f.write(msgpack.packb({"timings_s": timings_s, "misses": misses, "read_counts": read_counts}))
        queue.put(("done", number, None))
    except BaseException:
        queue.put(("error", number, traceback.format_exc()))


def _await(queue, workers, status, deadline):
    """Wait until every worker has reported ``status``; raise on an error report or a worker that died."""
    pending = set(range(len(workers)))
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers {sorted(pending)} did not report {status!r} in time")
        try:
            got, number, detail = queue.get(timeout=0.5)
        except Empty:
            dead = [n for n in pending if workers[n].exitcode is not None]
            if dead:
                raise RuntimeError(f"worker {dead[0]} exited with {workers[dead[0]].exitcode} "
                                   f"before reporting {status!r}") from None
            continue
        if got == "error":
            raise RuntimeError(f"worker {number} failed:\n{detail}")
        if got == status:
            pending.discard(number)


def run_mixed(backend, procs, ops, workdir, get_below=GET_BELOW):
    """diskcache's method with ``procs`` processes of ``ops`` each; the merged result (see ``merge``).

    ``get_below=1.0`` makes it read-only.
    """
    preload(backend)
    ctx = multiprocessing.get_context("fork")
    start_event, queue = ctx.Event(), ctx.Queue()
    paths = [os.path.join(workdir, f"out-{n}.msgpack") for n in range(procs)]
    workers = [ctx.Process(target=_worker, args=(backend, n, ops, get_below, start_event, queue, paths[n]), daemon=True)
               for n in range(procs)]
    try:
        for worker in workers:
            worker.start()
        _await(queue, workers, "ready", time.monotonic() + START_TIMEOUT_S + 10 * procs)
        cpu_before_s = cpu_s(backend.server_pids)
        started = time.perf_counter()
        start_event.set()
        _await(queue, workers, "done", time.monotonic() + RUN_TIMEOUT_S)
        wall_s = time.perf_counter() - started
        server_cpu_s = cpu_s(backend.server_pids) - cpu_before_s
        for worker in workers:
            worker.join(10)
    finally:
        kill_workers(workers)
    outputs = []
    for path in paths:
        with open(path, "rb") as f:
            outputs.append(msgpack.unpackb(f.read(), strict_map_key=False))
        os.remove(path)
    result = merge(outputs)
    result["wall_s"] = wall_s
    result["load_avg"] = os.getloadavg()[0]  # other work on the machine shows here
    result["server_cpu_us_per_op"] = (server_cpu_s / (procs * ops) * 1e6) if backend.server_pids else None
    return result


def kill_workers(workers):
    """Those still running after an error or Ctrl-C."""
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join()


def merge(outputs):
    """Per action: count, miss, p50/p90/p99/max in µs and total in s; plus the run's total_s and read counts."""
    result = {"actions": {}, "read_counts": {}}
    total_s = 0.0
    for action in ACTIONS:
        samples_s = sorted(t for output in outputs for t in output["timings_s"][action])
        action_total_s = sum(samples_s)
        total_s += action_total_s
        result["actions"][action] = {
            "count": len(samples_s),
            "miss": sum(output["misses"][action] for output in outputs),
            "p50_us": ib.percentile(samples_s, 0.50) * 1e6,
            "p90_us": ib.percentile(samples_s, 0.90) * 1e6,
            "p99_us": ib.percentile(samples_s, 0.99) * 1e6,
            "max_us": (samples_s[-1] * 1e6) if samples_s else float("nan"),
            "total_s": action_total_s,
        }
    for output in outputs:
        for name, count in output["read_counts"].items():
            result["read_counts"][name] = result["read_counts"].get(name, 0) + count
    result["total_s"] = total_s
    return result


def probe_cpu(backend, ops):
    """Server CPU in µs per SET and per GET: ``ops`` sequential sets, then ``ops`` gets, from this process."""
    client = open_client(backend)
    keys = [key_of(n) for n in range(KEY_RANGE)]
    value = b"v" * VALUE_BYTES
    try:
        for key in keys:  # warm: connected, every key present
            client.set(key, value)
        cpu_us = {}
        for action, call in (("set", lambda key: client.set(key, value)), ("get", client.get)):
            before_s = cpu_s(backend.server_pids)
            for n in range(ops):
                call(keys[n % KEY_RANGE])
            cpu_us[action] = (cpu_s(backend.server_pids) - before_s) / ops * 1e6
        return cpu_us
    finally:
        close_client(client)


# -- reporting -------------------------------------------------------------------------


def ratio(a, b):
    return a / b if a is not None and b else float("nan")


def slow_share(reads):
    """The share of local reads that took the pure-Python path, as text."""
    if native.extension is None:
        return "all (no C extension)"
    if "slow" not in reads:
        return "n/a: this Client has no slow_local_reads counter"
    return f"{reads['slow']:,} ({ratio(reads['slow'], reads.get('local', 0)):.3%})"


def number(value, decimals):
    """``value`` formatted, or "-" when there is none (no server, no op of that kind)."""
    return "-" if value is None or value != value else f"{value:.{decimals}f}"


def verdict(passed):
    return "PASS" if passed else "MISS"


def plural(procs):
    return f"{procs} process" + ("es" if procs > 1 else "")


def print_run(label, procs, result):
    """One run in diskcache's layout: a row per action and the total."""
    cpu = result["server_cpu_us_per_op"]
    cpu_text = f"server CPU {cpu:.1f} µs/op" if cpu is not None else "in-process (no server)"
    print(f"\n  {label}, {plural(procs)}: wall {result['wall_s']:.2f} s, {cpu_text}, "
          f"load avg {result['load_avg']:.2f} at the end")
    print(f"    {'action':8} {'count':>9} {'miss':>7} {'p50_us':>9} {'p90_us':>9} {'p99_us':>9} {'max_us':>10} {'total_s':>9}")
    for action, row in result["actions"].items():
        print(f"    {action:8} {row['count']:9,} {row['miss']:7,} {number(row['p50_us'], 1):>9} "
              f"{number(row['p90_us'], 1):>9} {number(row['p99_us'], 1):>9} {number(row['max_us'], 1):>10} "
              f"{row['total_s']:9.3f}")
    count = sum(row["count"] for row in result["actions"].values())
    print(f"    {'total':8} {count:9,} {'':>7} {'':>9} {'':>9} {'':>9} {'':>10} {result['total_s']:9.3f}")
    reads = result["read_counts"]
    if reads.get("local"):
        print(f"    reads (warm-up included): {reads['local']:,} local, of which slow (pure-Python path): "
              f"{slow_share(reads)}; {reads.get('fallback', 0):,} sent to a shard")
    elif reads:
        print(f"    reads (warm-up included): all {reads.get('fallback', 0):,} sent to a shard")
    sys.stdout.flush()


def print_summary(procs, results, labels, skipped_rows):
    """Every backend side by side for one process count; the lowest total time marked."""
    rows = [(label, results[(label, procs)]) for label in labels if (label, procs) in results]
    if not rows:
        return
    lowest = min((row for row in rows if row[0] != READ_ONLY_LABEL), key=lambda row: row[1]["total_s"])[0]
    print(f"\n  {plural(procs)} (p50 in µs; total_s = sum of the timed ops over all processes)")
    print(f"    {'backend':44} {'get p50':>8} {'get p99':>8} {'set p50':>8} {'set p99':>8} {'del p50':>8} "
          f"{'total_s':>8} {'wall_s':>7} {'srv CPU µs/op':>13}")
    for label, result in rows:
        acts = result["actions"]
        cpu = result["server_cpu_us_per_op"]
        cells = [acts["get"]["p50_us"], acts["get"]["p99_us"], acts["set"]["p50_us"], acts["set"]["p99_us"],
                 acts["delete"]["p50_us"]]
        print(f"    {label:44} " + " ".join(f"{number(cell, 1):>8}" for cell in cells)
              + f" {result['total_s']:8.3f} {result['wall_s']:7.2f} {number(cpu, 1):>13}"
              + ("  <- lowest" if label == lowest else ""))
    for label, reason in skipped_rows:
        print(f"    {label:44} skipped: {reason}")


# -- main ----------------------------------------------------------------------------------


LOCAL = "ferric local reads"
REMOTE = "ferric no local reads"


def ferric_label(local_reads, fsync):
    suffix = " (default)" if local_reads and fsync == DEFAULT_FSYNC else ""
    return f"{LOCAL if local_reads else REMOTE}, fsync={fsync}{suffix}"


DEFAULT_LABEL = ferric_label(True, DEFAULT_FSYNC)
READ_ONLY_LABEL = f"{LOCAL}, fsync={DEFAULT_FSYNC}, 100% get"
REDIS_LABEL = "redis-py, appendonly no"
REDIS_AOF_LABEL = "redis-py, appendonly yes, appendfsync always"
MEMCACHED_LABELS = {False: "pymemcache, noreply=False", True: "pymemcache, noreply=True"}
DISKCACHE_LABELS = {"diskcache": "diskcache.Cache", "diskcache-fanout": "diskcache.FanoutCache (8 shards)"}


def measure(backend, args, settings, base, results, read_only=False):
    """Mixed runs of ``backend`` at each process count, printed as they finish, stored in ``results``."""
    label = READ_ONLY_LABEL if read_only else backend.label
    for procs in args.procs:
        results[(label, procs)] = run_mixed(backend, procs, settings["ops"], base, 1.0 if read_only else GET_BELOW)
        print_run(label, procs, results[(label, procs)])


def run_ferric(args, settings, base, results, cpu, servers):
    for fsync in FSYNC_MODES:
        server = FerricServer(base, fsync, args.shards)
        servers.append(server)
        server.start()
        print(f"\nferricd, {args.shards} shards, [keyspaces.default] fsync = \"{fsync}\"", flush=True)
        for local_reads in (True, False):
            backend = Backend(ferric_label(local_reads, fsync), "ferric", server.run_dir,
                              {"local_reads": local_reads}, server.shard_pids)
            measure(backend, args, settings, base, results)
            if fsync == DEFAULT_FSYNC and local_reads:
                measure(backend, args, settings, base, results, read_only=True)
        probe = Backend("probe", "ferric", server.run_dir, {"local_reads": False}, server.shard_pids)
        cpu[f"ferric fsync={fsync}"] = probe_cpu(probe, settings["probe_ops"])
        server.stop()


def run_redis(args, settings, base, results, cpu, servers):
    for durable, label in ((False, REDIS_LABEL), (True, REDIS_AOF_LABEL)):
        server = ib.RedisServer(base, durable=durable)
        servers.append(server)
        server.start()
        print(f"\nredis-server, {label.split(', ', 1)[1]}", flush=True)
        backend = Backend(label, "redis", server.socket_path, server_pids=[server.process.pid])
        measure(backend, args, settings, base, results)
        cpu[label] = probe_cpu(backend, settings["probe_ops"])
        server.stop()


def run_memcached(args, settings, base, results, cpu, servers):
    server = MemcachedServer(base)
    servers.append(server)
    server.start()
    print("\nmemcached", flush=True)
    for noreply, label in MEMCACHED_LABELS.items():
        backend = Backend(label, "memcached", server.socket_path, {"noreply": noreply}, [server.process.pid])
        measure(backend, args, settings, base, results)
    cpu[MEMCACHED_LABELS[False]] = probe_cpu(
        Backend("probe", "memcached", server.socket_path, {"noreply": False}, [server.process.pid]),
        settings["probe_ops"])
    server.stop()


def run_diskcache(args, settings, base, results):
    print("\ndiskcache (SQLite in the temporary directory)", flush=True)
    for kind, label in DISKCACHE_LABELS.items():
        for procs in args.procs:
            directory = os.path.join(base, f"{kind}-{procs}")  # a fresh cache per run, as diskcache's dispatch()
            backend = Backend(label, kind, directory)
            results[(label, procs)] = run_mixed(backend, procs, settings["ops"], base)
            print_run(label, procs, results[(label, procs)])
            shutil.rmtree(directory, ignore_errors=True)


def print_cpu(cpu):
    print("\nserver CPU per op (utime+stime of the server processes / ops; one process, sequential; "
          "ferric: shard processes, local reads off)")
    print(f"    {'server':44} {'SET µs':>8} {'GET µs':>8}")
    for name, row in cpu.items():
        print(f"    {name:44} {row['set']:8.1f} {row['get']:8.1f}")


def why_not(skipped, *groups):
    """Why a comparison of ``groups`` was not measured."""
    return "; ".join(f"{group}: {skipped[group]}" for group in groups if group in skipped) or "failed"


def print_targets(args, results, cpu, skipped):
    print("\ntargets")
    for procs in args.procs:
        for fsync, peer in (("never", REDIS_LABEL), ("always", REDIS_AOF_LABEL)):
            mine, theirs = results.get((ferric_label(True, fsync), procs)), results.get((peer, procs))
            what = f"SET p50 <= {TARGET_SET_P50_RATIO}x {peer}, fsync={fsync}, {plural(procs)}"
            if mine is None or theirs is None:
                print(f"  n/a   {what}: not measured ({why_not(skipped, 'ferric', 'redis')})")
                continue
            a, b = mine["actions"]["set"]["p50_us"], theirs["actions"]["set"]["p50_us"]
            print(f"  {verdict(ratio(a, b) <= TARGET_SET_P50_RATIO)}  {what}: {a:.1f} vs {b:.1f} µs = {ratio(a, b):.2f}x")
    for procs in args.procs:
        rows = {label: result for (label, p), result in results.items() if p == procs and label != READ_ONLY_LABEL}
        if DEFAULT_LABEL not in rows:
            continue
        mine = rows[DEFAULT_LABEL]["total_s"]
        peers = {label: r["total_s"] for label, r in rows.items() if not label.startswith("ferric ")}
        what = f"ferric total time (default config) lowest of all backends, {plural(procs)}"
        if not peers:
            print(f"  n/a   {what}: no peer measured")
            continue
        best = min(peers, key=peers.get)
        print(f"  {verdict(mine < peers[best])}  {what}: {mine:.3f} s; lowest peer {best} {peers[best]:.3f} s "
              f"= {ratio(mine, peers[best]):.2f}x ({len(peers)} peers)")
    ferric_cpu, redis_cpu = cpu.get("ferric fsync=never"), cpu.get(REDIS_LABEL)
    for action in ("set", "get"):
        what = f"shard CPU per {action.upper()} <= {TARGET_CPU_RATIO}x redis-server's, fsync=never vs appendonly no"
        if ferric_cpu is None or redis_cpu is None:
            print(f"  n/a   {what}: not measured ({why_not(skipped, 'ferric', 'redis')})")
            continue
        r = ratio(ferric_cpu[action], redis_cpu[action])
        print(f"  {verdict(r <= TARGET_CPU_RATIO)}  {what}: {ferric_cpu[action]:.1f} vs {redis_cpu[action]:.1f} µs = {r:.2f}x")
    for name, peer in (("ferric fsync=always", REDIS_AOF_LABEL), ("ferric fsync=never", MEMCACHED_LABELS[False])):
        if name in cpu and peer in cpu:
            print(f"  info  CPU per op {name} / {peer}: SET {ratio(cpu[name]['set'], cpu[peer]['set']):.2f}x, "
                  f"GET {ratio(cpu[name]['get'], cpu[peer]['get']):.2f}x")
    for procs in args.procs:
        mixed, read_only = results.get((DEFAULT_LABEL, procs)), results.get((READ_ONLY_LABEL, procs))
        if mixed is None or read_only is None:
            continue
        a, b = mixed["actions"]["get"]["p50_us"], read_only["actions"]["get"]["p50_us"]
        print(f"  {verdict(ratio(a, b) <= TARGET_LOCAL_GET_RATIO)}  local GET p50 mixed <= {TARGET_LOCAL_GET_RATIO}x "
              f"read-only, {plural(procs)}: {a:.2f} vs {b:.2f} µs = {ratio(a, b):.2f}x")
        print(f"  info  local reads that took the slow (pure-Python) path, mixed run, {plural(procs)}: "
              f"{slow_share(mixed['read_counts'])} (Client.slow_local_reads)")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK['ops']:,} ops per process")
    parser.add_argument("--ops", type=int, default=None, help=f"operations per process (default {FULL['ops']:,})")
    parser.add_argument("--probe-ops", type=int, default=None,
                        help=f"SETs and GETs of the server CPU probe (default {FULL['probe_ops']:,})")
    parser.add_argument("--procs", default="1,8", help="process counts, comma-separated (default 1,8)")
    parser.add_argument("--shards", type=int, default=os.cpu_count(), help="ferricd shards (default: one per CPU)")
    parser.add_argument("--backends", default=",".join(GROUPS), help=f"comma-separated subset of {','.join(GROUPS)}")
    args = parser.parse_args()
    args.procs = [int(p) for p in args.procs.split(",")]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - set(GROUPS)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}; known: {', '.join(GROUPS)}")
    settings = dict(QUICK if args.quick else FULL)
    if args.ops is not None:
        settings["ops"] = args.ops
    if args.probe_ops is not None:
        settings["probe_ops"] = args.probe_ops
    if settings["ops"] <= WARMUP_OPS:
        parser.error(f"--ops must be above the {WARMUP_OPS:,} warm-up operations")
    return args, settings


def print_header(args, settings):
    print("backend comparison, diskcache's method: python3 benchmarks/compare.py " + " ".join(sys.argv[1:]))
    print(time.strftime("date      : %Y-%m-%d %H:%M:%S %Z"))
    for line in ib.machine_report():
        print(line)
    memcached = server_version(["memcached", "-V"]) if shutil.which("memcached") else "not found"
    print(f"memcached : {memcached}; pymemcache {ib.version_of('pymemcache') or 'not installed'}")
    print(f"diskcache : {ib.version_of('diskcache') or 'not installed'}")
    print(f"settings  : {settings['ops']:,} ops per process ({WARMUP_OPS:,} warm-up dropped), {KEY_RANGE} keys, "
          f"{VALUE_BYTES} B values, 90% get / 9% set / 1% delete; processes {args.procs}; ferricd {args.shards} shards; "
          f"CPU probe {settings['probe_ops']:,} SETs then GETs")


def main():
    args, settings = parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the servers like Ctrl-C
    started = time.time()
    print_header(args, settings)
    skipped = {group: reason for group, reason in skip_reasons().items() if group in args.backends}
    for group in GROUPS:
        if group not in args.backends:
            skipped[group] = "not in --backends"
    for group, reason in skipped.items():
        print(f"{group:10}: SKIPPED: {reason}")
    base = tempfile.mkdtemp(prefix="fcmp-", dir="/tmp")
    print(f"temp dir  : {base}", flush=True)
    results, cpu, servers = {}, {}, []
    try:
        if "ferric" not in skipped:
            run_ferric(args, settings, base, results, cpu, servers)
        if "redis" not in skipped:
            run_redis(args, settings, base, results, cpu, servers)
        if "memcached" not in skipped:
            run_memcached(args, settings, base, results, cpu, servers)
        if "diskcache" not in skipped:
            run_diskcache(args, settings, base, results)
    finally:
        exits = {}
        for server in servers:  # each is stopped after its runs; this catches an error or Ctrl-C midway
            name = f"ferricd {server.name}" if isinstance(server, FerricServer) else os.path.basename(server.log_path)[:-4]
            status = server.stop()
            exits[name] = (status, server.log_problems() if isinstance(server, FerricServer) else [])
        if any(problems for _, problems in exits.values()):
            print(f"\nlogs with problems: kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    labels = ([ferric_label(local, fsync) for local in (True, False) for fsync in FSYNC_MODES]
              + [REDIS_LABEL, REDIS_AOF_LABEL, *MEMCACHED_LABELS.values(), *DISKCACHE_LABELS.values(), READ_ONLY_LABEL])
    skipped_rows = [(label, skipped[group]) for group, group_labels in (
        ("redis", [REDIS_LABEL, REDIS_AOF_LABEL]), ("memcached", MEMCACHED_LABELS.values()),
        ("diskcache", DISKCACHE_LABELS.values())) if group in skipped for label in group_labels]
    print("\nsummary (the last row, 100% get, is not a backend: it is the baseline of the local GET target)")
    for procs in args.procs:
        print_summary(procs, results, labels, skipped_rows)
    if cpu:
        print_cpu(cpu)
    print_targets(args, results, cpu, skipped)
    print("\nservers")
    ib.print_exits(exits, None, started)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the servers were stopped and the temp dir removed on the way out
        print("\ninterrupted: every server this run started is stopped", file=sys.stderr)
        sys.exit(130)
