"""Benchmark of ferricd (Unix stream and ZeroMQ ipc:// transports) against redis-server over a Unix socket, from Python.

Starts its own daemons in a short temporary directory under /tmp and stops
them at the end (SIGTERM, bounded wait, SIGKILL past it):

* ferricd (``python -m ferricd``), once per configuration: one shard with
  ``[storage] fsync = "always"`` (the default), one shard with
  ``fsync = "never"``, and two shards (``fsync = "never"``, optional);
* redis-server with ``--save "" --appendonly no`` on a Unix socket, so it
  never touches the disk; compared with ferricd's ``fsync = "never"``
  configuration that is apples to apples.

Measures, in one run on one machine:

1. sequential GET and SET latency, p50 / p99 / mean in microseconds, one
   operation at a time (``time.perf_counter_ns`` around each call), 100 B and
   4 KiB values: ``ferric_ipc.Client`` over its default Unix stream transport
   and over ZeroMQ (``transport="zmq"``) versus redis-py
   (``redis.Redis(unix_socket_path=...)``; the parser in use is printed).
   The three are sampled in rotating rounds so that drift in the machine hits
   all alike. GETs are answered from the mapped index by both ferric clients;
   SETs make the round trip;
2. ferricd SET latency under each fsync policy (always, never);
3. pipelined throughput, ops/s: ``Client.pipeline()`` with --batch sets (and
   gets) per ``execute()`` against redis-py ``pipeline(transaction=False)``
   with the same batch, over both ferric transports; one shard, and optionally
   two shards driven by one client process per shard (stream transport);
4. ratios ferric/redis and the targets with PASS/MISS:
   sequential SET p50 <= 1.5x redis-py SET p50 (default transport), and
   pipelined >= 50k ops/s per shard.

By default nothing is pinned: processes run where the scheduler puts them.
``--pin CPU`` puts the benchmark, redis-server and ferricd (supervisor, shards
and their ZeroMQ I/O threads) all on that one CPU, the "same-core" layout of
the research notes; the two-shard run is then skipped.

    python3 benchmarks/ipc_bench.py            # full run, a few minutes
    python3 benchmarks/ipc_bench.py --quick    # smoke run, under ~30 s

redis-py comes with the project's "bench" extra: pip install -e '.[bench]'.
Without redis-server or redis-py the comparison is skipped and says why.
"""

import argparse
import gc
import importlib.metadata
import multiprocessing
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgpack  # noqa: E402
import psutil  # noqa: E402
import zmq  # noqa: E402

from ferric_ipc import Client, native  # noqa: E402
from ferric_ipc.routing import shard_for  # noqa: E402

try:
    import redis
except ImportError:  # the project's "bench" extra: pip install -e '.[bench]'
    redis = None

KEY_FORMAT = b"bench:%08d"
KEYSPACE = 10_000  # distinct keys per value size
VALUE_SIZES = (100, 4096)
WARMUP_OPS = 500
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0  # ferricd's own stop_timeout_ms is 10 s
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
SEED = 1234

FULL = {"ops": 20_000, "always_ops": 3_000, "pipe_ops": 200_000, "rounds": 4, "repeats": 3}
QUICK = {"ops": 2_000, "always_ops": 300, "pipe_ops": 20_000, "rounds": 2, "repeats": 1}

PIN = None  # --pin: the one CPU every process runs on


def _pin_child():
    if PIN is not None:
        os.sched_setaffinity(0, {PIN})


TARGET_SET_P50_RATIO = 1.5  # ferric SET p50 / redis-py SET p50, at most
TARGET_PIPELINE_OPS_PER_SHARD = 50_000  # pipelined ops/s per shard, at least


# -- helpers --------------------------------------------------------------------


def version_of(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def size_label(size):
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def percentile(sorted_values, fraction):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * fraction // 1))  # ceil(n * fraction), at least 1
    return sorted_values[int(rank) - 1]


class Latency:
    """Per-operation latencies in ns, summarised in µs."""

    def __init__(self):
        self.samples = []
        self.errors = 0

    def extend(self, other):
        self.samples.extend(other.samples)
        self.errors += other.errors

    def summary(self):
        ordered = sorted(self.samples)
        return {
            "n": len(ordered),
            "p50": percentile(ordered, 0.50) / 1000,
            "p99": percentile(ordered, 0.99) / 1000,
            "mean": (statistics.fmean(ordered) / 1000) if ordered else float("nan"),
            "errors": self.errors,
        }


def keys_for(size):
    return [KEY_FORMAT % i + b":%d" % size for i in range(KEYSPACE)]


def value_for(size):
    return random.Random(size).randbytes(size)


# -- daemons --------------------------------------------------------------------


class Ferricd:
    """One ferricd (supervisor plus shard processes) in its own data and run directories."""

    def __init__(self, base, name, shards, fsync):
        self.name = name
        self.shards = shards
        self.fsync = fsync
        self.data_dir = os.path.join(base, f"{name}-d")
        self.run_dir = os.path.join(base, f"{name}-r")
        self.config_path = os.path.join(base, f"{name}.toml")
        self.log_path = os.path.join(base, f"{name}.log")
        self.process = None
        self.children = []
        self.exit_status = None
        longest = os.path.join(self.run_dir, f"shard-{shards - 1}.sock")
        if len(longest.encode()) > SOCKET_PATH_MAX:
            raise SystemExit(f"ipc path too long ({len(longest.encode())} > {SOCKET_PATH_MAX} bytes): {longest}")

    def start(self):
        with open(self.config_path, "w") as f:
            f.write(f'[storage]\nfsync = "{self.fsync}"\n')
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ferricd", "--config", self.config_path, "--data-dir", self.data_dir,
             "--run-dir", self.run_dir, "--shards", str(self.shards)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_pin_child,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        last_error = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ferricd ({self.name}) exited with {self.process.returncode} during start-up\n"
                                   + self.log_tail())
            try:
                probe = Client(self.run_dir, timeout_ms=500)
                try:
                    if probe.ping() and probe.shard_count == self.shards:
                        break
                finally:
                    probe.close()
            except Exception as exc:  # not up yet
                last_error = exc
            time.sleep(0.05)
        else:
            raise RuntimeError(f"ferricd ({self.name}) did not answer ping within {START_TIMEOUT_S:.0f} s "
                               f"(last error: {last_error!r})\n" + self.log_tail())
        self.children = self._child_pids()
        return self

    def _child_pids(self):
        try:
            import psutil
            return [child.pid for child in psutil.Process(self.process.pid).children(recursive=True)]
        except Exception:
            return []

    def stop(self):
        """SIGTERM, wait at most STOP_TIMEOUT_S, then SIGKILL; returns a description of how it ended."""
        if self.process is None:
            return "not started"
        self.exit_status = terminate(self.process, self.exit_status)
        # Shard processes die with the supervisor; make sure of it, by pid.
        for pid in self.children:
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.05)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.exit_status += f"; shard pid {pid} outlived the supervisor and was killed"
                except ProcessLookupError:
                    pass
        self._log.close()
        return self.exit_status

    def log_problems(self):
        """Log lines at WARNING or above, and tracebacks."""
        try:
            with open(self.log_path, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        return [line for line in lines if any(word in line for word in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback"))]

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of someone else still answers kill(0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class RedisServer:
    """redis-server on a Unix socket in ``base``: no persistence, or with ``durable`` an append-only file
    fsynced before every reply (``appendfsync always``), the like of ferricd's ``fsync = "always"``."""

    def __init__(self, base, durable=False):
        name = "redis-aof" if durable else "redis"
        self.socket_path = os.path.join(base, f"{name}.sock")
        self.log_path = os.path.join(base, f"{name}.log")
        self.dir = os.path.join(base, name)
        os.makedirs(self.dir, exist_ok=True)
        self.persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
        self.process = None
        self.exit_status = None

    def start(self):
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700",
             "--save", "", *self.persistence, "--daemonize", "no", "--dir", self.dir],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_pin_child,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        last_error = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode} during start-up")
            try:
                probe = redis.Redis(unix_socket_path=self.socket_path, socket_timeout=1)
                try:
                    if probe.ping():
                        break
                finally:
                    probe.close()
            except Exception as exc:
                last_error = exc
            time.sleep(0.05)
        else:
            raise RuntimeError(f"redis-server did not answer PING within {START_TIMEOUT_S:.0f} s ({last_error!r})")
        return self

    def client(self):
        return redis.Redis(unix_socket_path=self.socket_path, socket_timeout=10)

    def stop(self):
        if self.process is None:
            return "not started"
        self.exit_status = terminate(self.process, self.exit_status)
        self._log.close()
        return self.exit_status


def terminate(process, exit_status=None):
    """SIGTERM, wait at most STOP_TIMEOUT_S, then SIGKILL; returns how the process ended."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
            return f"exit {process.returncode} after SIGTERM"
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return f"did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM; killed"
    return exit_status or f"had already exited with {process.returncode}"


# -- measurements ----------------------------------------------------------------


def preload(kind, client, keys, value, batch=100):
    for start in range(0, len(keys), batch):
        if kind == "ferric":
            pipe = client.pipeline()
        else:
            pipe = client.pipeline(transaction=False)
        for key in keys[start:start + batch]:
            pipe.set(key, value)
        results = pipe.execute()
        if results.count(True) != len(results):
            raise RuntimeError(f"{kind}: preload set returned {results[:5]}...")


def sequential(op, client, keys, value, ops, order_seed):
    """``ops`` GETs or SETs, one at a time, each timed; GET results are checked outside the timing."""
    order = list(range(len(keys)))
    random.Random(order_seed).shuffle(order)
    sequence = [keys[order[i % len(order)]] for i in range(ops)]
    result = Latency()
    samples = result.samples
    clock = time.perf_counter_ns
    get, set_ = client.get, client.set
    for key in sequence[:WARMUP_OPS]:
        get(key) if op == "get" else set_(key, value)
    gc.disable()
    try:
        if op == "get":
            for key in sequence:
                t0 = clock()
                got = get(key)
                t1 = clock()
                samples.append(t1 - t0)
                if got != value:
                    result.errors += 1
        else:
            for key in sequence:
                t0 = clock()
                ok = set_(key, value)
                t1 = clock()
                samples.append(t1 - t0)
                if ok is not True:
                    result.errors += 1
    finally:
        gc.enable()
    return result


def cpu_seconds(pids):
    """User plus system CPU seconds used so far by the processes ``pids`` (all their threads)."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def pipelined(kind, op, client, keys, value, ops, batch, server_pids=()):
    """``ops`` operations sent ``batch`` per execute().

    Returns ``(ops_per_s, errors, server_cpu_us_per_op, client_cpu_us_per_op)``;
    server CPU is that of the processes ``server_pids`` over the timed part.
    """
    errors = 0
    batches = [keys[(i % len(keys)):(i % len(keys)) + batch] for i in range(0, ops, batch)]
    batches = [b if len(b) == batch else (b + keys[:batch - len(b)]) for b in batches]
    new_pipe = client.pipeline if kind == "ferric" else (lambda: client.pipeline(transaction=False))
    for chunk in batches[:max(1, WARMUP_OPS // batch)]:  # warm-up
        pipe = new_pipe()
        for key in chunk:
            pipe.get(key) if op == "get" else pipe.set(key, value)
        pipe.execute()
    gc.disable()
    try:
        server0, client0 = cpu_seconds(server_pids), time.process_time()
        t0 = time.perf_counter()
        for chunk in batches:
            pipe = new_pipe()
            if op == "get":
                for key in chunk:
                    pipe.get(key)
                results = pipe.execute()
                if results.count(value) != len(results):
                    errors += 1
            else:
                for key in chunk:
                    pipe.set(key, value)
                results = pipe.execute()
                if results.count(True) != len(results):
                    errors += 1
        elapsed = time.perf_counter() - t0
        server_cpu, client_cpu = cpu_seconds(server_pids) - server0, time.process_time() - client0
    finally:
        gc.enable()
    done = len(batches) * batch
    return done / elapsed, errors, server_cpu / done * 1e6, client_cpu / done * 1e6


def transport_floor(base, ops):
    """Round trips with no ferricd code in them: the floor under any IPC design on this machine.

    A forked echo server answers each request with a 100 B value: (1) raw
    AF_UNIX stream ping-pong; (2) pyzmq DEALER to ROUTER over ipc:// with
    msgpack, the server looping like a shard (Poller, then drain with NOBLOCK).
    Returns ``{name: Latency summary}``.
    """
    results = {}
    value = b"v" * 100

    def timed(roundtrip):
        for i in range(WARMUP_OPS):
            roundtrip(i)
        latency, clock = Latency(), time.perf_counter_ns
        gc.disable()
        try:
            for i in range(ops):
                t0 = clock()
                roundtrip(i)
                latency.samples.append(clock() - t0)
        finally:
            gc.enable()
        return latency.summary()

    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # echo server
        ours.close()
        try:
            while True:
                data = theirs.recv(256)
                if not data:
                    break
                theirs.sendall(value)
        finally:
            os._exit(0)
    theirs.close()
    request = b"k" * 20

    def unix_roundtrip(_):
        ours.sendall(request)
        got = 0
        while got < len(value):
            got += len(ours.recv(256))

    try:
        results["raw AF_UNIX ping-pong"] = timed(unix_roundtrip)
    finally:
        ours.close()
        os.waitpid(pid, 0)

    endpoint = f"ipc://{os.path.join(base, 'echo.sock')}"
    pid = os.fork()
    if pid == 0:  # echo server shaped like a shard's loop
        try:
            context = zmq.Context()
            router = context.socket(zmq.ROUTER)
            router.linger = 0
            router.bind(endpoint)
            poller = zmq.Poller()
            poller.register(router, zmq.POLLIN)
            running = True
            while running:
                if poller.poll(100):
                    while True:
                        try:
                            identity, frame = router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if frame == b"stop":
                            running = False
                            break
                        request_id, _op, _args = msgpack.unpackb(frame)
                        router.send_multipart([identity, msgpack.packb([request_id, 0, value])])
        finally:
            os._exit(0)
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(endpoint)

    def zmq_roundtrip(i):
        dealer.send(msgpack.packb([i, "get", [b"key:%08d" % (i % 1000)]]))
        if not dealer.poll(5_000):
            raise RuntimeError("echo server did not answer")
        msgpack.unpackb(dealer.recv())

    try:
        results["pyzmq DEALER/ROUTER ipc:// + msgpack echo"] = timed(zmq_roundtrip)
    finally:
        dealer.send(b"stop")
        time.sleep(0.05)
        dealer.close()
        context.term()
        os.waitpid(pid, 0)
    return results


def _pipeline_worker(kind, target, op, keys, value, ops, batch, start_event, queue):
    try:
        client = Client(target, timeout_ms=10_000) if kind == "ferric" else redis.Redis(unix_socket_path=target)
        preload(kind, client, keys, value)
        queue.put(("ready", None))
        start_event.wait()
        queue.put(("done", pipelined(kind, op, client, keys, value, ops, batch)))
    except Exception as exc:  # reported by the parent
        queue.put(("error", repr(exc)))


def pipelined_parallel(kind, target, op, key_groups, value, ops_each, batch):
    """One client process per key group, all started together; returns (aggregate ops/s, errors)."""
    ctx = multiprocessing.get_context("fork")
    start_event = ctx.Event()
    queue = ctx.Queue()
    workers = [ctx.Process(target=_pipeline_worker, args=(kind, target, op, keys, value, ops_each, batch, start_event, queue))
               for keys in key_groups]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            status, payload = queue.get(timeout=120)
            if status == "error":
                raise RuntimeError(f"{kind} worker failed: {payload}")
        start_event.set()
        rates, errors = [], 0
        for _ in workers:
            status, payload = queue.get(timeout=300)
            if status == "error":
                raise RuntimeError(f"{kind} worker failed: {payload}")
            rates.append(payload[0])
            errors += payload[1]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
                worker.join()
    # Each worker times its own run; the aggregate assumes they overlapped (they start together).
    return sum(rates), errors


# -- reporting ----------------------------------------------------------------------


def fmt_lat(s):
    extra = f"  ERRORS={s['errors']}" if s["errors"] else ""
    return f"p50 {s['p50']:8.1f}  p99 {s['p99']:8.1f}  mean {s['mean']:8.1f}  (n={s['n']}){extra}"


def cpu_note(runs):
    server = statistics.median(r[2] for r in runs)
    client = statistics.median(r[3] for r in runs)
    return f"   CPU per op: server {server:5.1f} µs, client {client:5.1f} µs"


def ratio(a, b):
    return a / b if b else float("nan")


def machine_report():
    lines = []
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    lines.append(f"machine   : {platform.machine()} {model}; nproc {affinity} (os.cpu_count {os.cpu_count()})")
    lines.append(f"kernel    : {platform.system()} {platform.release()}")
    lines.append("load avg  : %.2f %.2f %.2f (1, 5, 15 min) at start" % os.getloadavg())
    lines.append(f"python    : {platform.python_implementation()} {platform.python_version()} ({sys.executable})")
    lines.append(f"pyzmq     : {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}; msgpack {version_of('msgpack')}")
    extension = "C extension ferric_ipc._localread" if native.extension is not None else (
        f"pure Python (no ferric_ipc._localread, or {native.DISABLE_VARIABLE} set)")
    lines.append(f"ferricstore: {version_of('ferricstore')}; key hash and local reads in {extension}")
    server = shutil.which("redis-server")
    server_version = None
    if server:
        try:
            out = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
            server_version = out
        except Exception as exc:
            server_version = f"(redis-server --version failed: {exc})"
    lines.append(f"redis     : server {server_version or 'not found'}; redis-py {redis.__version__ if redis else 'not installed'}")
    if redis is not None:
        lines.append(f"redis-py parser: {redis_parser()}")
    return lines


def redis_parser():
    try:
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:
        HIREDIS_AVAILABLE = False
    if HIREDIS_AVAILABLE:
        return f"hiredis {version_of('hiredis')}"
    return "pure-Python (_RESP2Parser; hiredis not installed)"


# -- main ---------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (under ~30 s)")
    parser.add_argument("--ops", type=int, default=None, help="sequential ops per latency point (fsync=never, redis)")
    parser.add_argument("--always-ops", type=int, default=None, help="sequential SETs per point with fsync=always")
    parser.add_argument("--pipe-ops", type=int, default=None, help="ops per pipelined throughput run")
    parser.add_argument("--batch", type=int, default=100, help="ops per pipeline execute() (default 100)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating ferric/redis rounds per latency point")
    parser.add_argument("--repeats", type=int, default=None, help="runs per throughput figure (the median is reported)")
    parser.add_argument("--no-two-shards", action="store_true", help="skip the optional 2-shard throughput run")
    parser.add_argument("--pin", type=int, default=None, metavar="CPU",
                        help="run the benchmark and both servers on this one CPU (skips the 2-shard run)")
    args = parser.parse_args()
    global PIN
    if args.pin is not None:
        PIN = args.pin
        os.sched_setaffinity(0, {PIN})
        args.no_two_shards = True
    settings = dict(QUICK if args.quick else FULL)
    for name in ("ops", "always_ops", "pipe_ops", "rounds", "repeats"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    batch = args.batch
    rounds = max(1, settings["rounds"])

    started = time.time()
    print("ferricd IPC benchmark: python3 benchmarks/ipc_bench.py " + " ".join(sys.argv[1:]))
    print(time.strftime("date      : %Y-%m-%d %H:%M:%S %Z"))
    for line in machine_report():
        print(line)
    print(f"settings  : {settings['ops']} sequential ops per point in {rounds} alternating rounds "
          f"({settings['always_ops']} with fsync=always), {WARMUP_OPS} warm-up ops; "
          f"{settings['pipe_ops']} pipelined ops per run, batch {batch}, median of {settings['repeats']}; "
          f"{KEYSPACE} keys per value size; "
          + (f"everything pinned to CPU {PIN}" if PIN is not None else "no CPU pinning"))

    skip_reason = None
    if redis is None:
        skip_reason = "redis-py is not installed (pip install -e '.[bench]')"
    elif shutil.which("redis-server") is None:
        skip_reason = "redis-server is not on PATH (e.g. apt-get install redis-server)"
    if skip_reason:
        print(f"\nredis comparison SKIPPED: {skip_reason}")

    base = tempfile.mkdtemp(prefix="fib-", dir="/tmp")
    print(f"temp dir  : {base}")
    daemons = []
    redis_server = redis_aof = aof_exit = None
    seq = {}  # (system, op, size) -> Latency summary; system in ferric-never, ferric-always, redis
    thr = {}  # (system, op, shards) -> (ops/s, errors)
    exits = {}
    problems = {}
    try:
        print("\n[1/5] transport floor: echo servers with no ferricd or redis code, 100 B replies", flush=True)
        floor = transport_floor(base, settings["ops"])
        for name, summary in floor.items():
            print(f"  {name:42} {fmt_lat(summary)}")
        rclient = None
        if not skip_reason:
            redis_server = RedisServer(base).start()
            rclient = redis_server.client()

        def run_daemon(name, shards, fsync):
            daemon = Ferricd(base, name, shards, fsync)
            daemons.append(daemon)
            daemon.start()
            return daemon

        def stop_daemon(daemon):
            exits[daemon.name] = daemon.stop()
            problems[daemon.name] = daemon.log_problems()

        # 1. one shard, fsync = "never": sequential get/set against redis, alternating rounds; pipelined.
        print("\n[2/5] ferricd 1 shard, fsync=never  vs  redis-server (no persistence)", flush=True)
        daemon = run_daemon("never1", 1, "never")
        # label -> (kind, client): ferric over each transport, and redis.
        systems = {
            "ferric-never": ("ferric", Client(daemon.run_dir, timeout_ms=10_000, transport="unix")),
            "ferric-never-zmq": ("ferric", Client(daemon.run_dir, timeout_ms=10_000, transport="zmq")),
        }
        if rclient is not None:
            systems["redis"] = ("redis", rclient)
        names = {"ferric-never": "ferric unix (never)", "ferric-never-zmq": "ferric zmq (never) ",
                 "redis": "redis-py           "}
        for size in VALUE_SIZES:
            keys, value = keys_for(size), value_for(size)
            preload("ferric", systems["ferric-never"][1], keys, value)
            if rclient is not None:
                preload("redis", rclient, keys, value)
            for op in ("get", "set"):
                pooled = {label: Latency() for label in systems}
                per_round = max(1, settings["ops"] // rounds)
                labels = list(systems)
                for r in range(rounds):
                    for label in labels[r % len(labels):] + labels[:r % len(labels)]:  # rotate who goes first
                        pooled[label].extend(sequential(op, systems[label][1], keys, value, per_round, SEED + r))
                for label in systems:
                    seq[(label, op, size)] = pooled[label].summary()
                    print(f"  {op.upper():3} {size_label(size):>6}  {names[label]} {fmt_lat(seq[(label, op, size)])}")
        keys, value = keys_for(100), value_for(100)
        for op in ("set", "get"):
            for label, (kind, client) in systems.items():
                server_pids = daemon.children if kind == "ferric" else [redis_server.process.pid]
                runs = [pipelined(kind, op, client, keys, value, settings["pipe_ops"], batch, server_pids)
                        for _ in range(settings["repeats"])]
                thr[(label, op, 1)] = (statistics.median(r[0] for r in runs), sum(r[1] for r in runs))
                print(f"  pipelined {op.upper()} 100 B x{batch}  {label:16} {thr[(label, op, 1)][0]:10,.0f} ops/s"
                      + cpu_note(runs) + (f"  ERRORS={thr[(label, op, 1)][1]}" if thr[(label, op, 1)][1] else ""),
                      flush=True)
        for kind, client in systems.values():
            if kind == "ferric":
                client.close()
        stop_daemon(daemon)

        # 2. one shard, fsync = "always" (the default): sequential sets, pipelined sets.
        print("\n[3/5] ferricd 1 shard, fsync=always (default)  vs  redis-server with appendfsync always", flush=True)
        daemon = run_daemon("always1", 1, "always")
        fclient = Client(daemon.run_dir, timeout_ms=10_000)
        aof_client = None
        if not skip_reason:
            redis_aof = RedisServer(base, durable=True).start()
            aof_client = redis_aof.client()
        for size in VALUE_SIZES:
            keys, value = keys_for(size), value_for(size)
            preload("ferric", fclient, keys, value)
            pooled = {"ferric-always": Latency(), "redis-aof": Latency()}
            for r in range(rounds):
                for label in (("ferric-always", "redis-aof") if r % 2 == 0 else ("redis-aof", "ferric-always")):
                    client = fclient if label == "ferric-always" else aof_client
                    if client is not None:
                        per_round = max(1, settings["always_ops"] // rounds)
                        pooled[label].extend(sequential("set", client, keys, value, per_round, SEED + r))
            seq[("ferric-always", "set", size)] = pooled["ferric-always"].summary()
            print(f"  SET {size_label(size):>6}  ferric (always)          {fmt_lat(seq[('ferric-always', 'set', size)])}",
                  flush=True)
            if aof_client is not None:
                seq[("redis-aof", "set", size)] = pooled["redis-aof"].summary()
                print(f"  SET {size_label(size):>6}  redis-py (fsync always)  {fmt_lat(seq[('redis-aof', 'set', size)])}",
                      flush=True)
        if aof_client is not None:
            aof_client.close()
            aof_exit = redis_aof.stop()
        keys, value = keys_for(100), value_for(100)
        runs = [pipelined("ferric", "set", fclient, keys, value, settings["pipe_ops"], batch, daemon.children)
                for _ in range(settings["repeats"])]
        thr[("ferric-always", "set", 1)] = (statistics.median(r[0] for r in runs), sum(r[1] for r in runs))
        print(f"  pipelined SET 100 B x{batch}  ferric-always {thr[('ferric-always', 'set', 1)][0]:10,.0f} ops/s"
              + cpu_note(runs) + (f"  ERRORS={thr[('ferric-always', 'set', 1)][1]}" if thr[("ferric-always", "set", 1)][1] else ""))
        fclient.close()
        stop_daemon(daemon)

        # 3. two shards, one client process per shard (optional).
        if not args.no_two_shards:
            print("\n[4/5] ferricd 2 shards, fsync=never, one client process per shard "
                  "(redis: 2 client processes on the one server)", flush=True)
            daemon = run_daemon("never2", 2, "never")
            value = value_for(100)
            pool = [KEY_FORMAT % i + b":2s" for i in range(4 * KEYSPACE)]
            groups = [[k for k in pool if shard_for(k, 2) == shard][:KEYSPACE] for shard in range(2)]
            ops_each = settings["pipe_ops"] // 2
            for system, target in (("ferric", daemon.run_dir), ("redis", redis_server.socket_path if redis_server else None)):
                if target is None:
                    continue
                runs = [pipelined_parallel(system, target, "set", groups, value, ops_each, batch)
                        for _ in range(settings["repeats"])]
                label = "ferric-never" if system == "ferric" else "redis"
                thr[(label, "set", 2)] = (statistics.median(r[0] for r in runs), sum(r[1] for r in runs))
                per = f" ({thr[(label, 'set', 2)][0] / 2:,.0f} per shard)" if system == "ferric" else ""
                print(f"  pipelined SET 100 B x{batch}, 2 clients  {label:13} {thr[(label, 'set', 2)][0]:10,.0f} ops/s{per}"
                      + (f"  ERRORS={thr[(label, 'set', 2)][1]}" if thr[(label, "set", 2)][1] else ""), flush=True)
            stop_daemon(daemon)
    finally:
        for daemon in daemons:
            if daemon.name not in exits:
                exits[daemon.name] = daemon.stop()
                problems[daemon.name] = daemon.log_problems()
        redis_exit = redis_server.stop() if redis_server else None
        if redis_aof is not None and aof_exit is None:
            aof_exit = redis_aof.stop()
        shutil.rmtree(base, ignore_errors=True)

    # 4. summary
    print("\n[5/5] summary (latencies in µs; ratio = ferric / redis, lower is better for latency)")
    if skip_reason:
        print(f"  redis comparison SKIPPED: {skip_reason}")
    for size in VALUE_SIZES:
        for op in ("get", "set"):
            r = seq.get(("redis", op, size))
            rows = [("ferric-never", "unix fsync=never "), ("ferric-never-zmq", "zmq  fsync=never ")]
            if op == "set":
                rows.append(("ferric-always", "unix fsync=always"))
            for label, text in rows:
                f = seq.get((label, op, size))
                if f is None:
                    continue
                r = seq.get(("redis-aof" if label == "ferric-always" else "redis", op, size))
                line = f"  {op.upper()} {size_label(size):>6} {text}: p50 {f['p50']:7.1f}  p99 {f['p99']:8.1f}"
                if r:
                    peer = "redis+aof" if label == "ferric-always" else "redis    "
                    line += (f"   {peer} p50 {r['p50']:6.1f}  p99 {r['p99']:7.1f}   ratio p50 {ratio(f['p50'], r['p50']):5.2f}x"
                             f"  p99 {ratio(f['p99'], r['p99']):5.2f}x")
                print(line)
    for key, (rate, _) in thr.items():  # in the order measured
        label, op, shards = key
        if label == "redis":
            continue
        r = thr.get(("redis", op, shards))
        line = f"  pipelined {op.upper()} {shards} shard{'s' if shards > 1 else ' '} {label:16} {rate:10,.0f} ops/s"
        if r:
            line += f"   redis {r[0]:10,.0f} ops/s   ratio {ratio(rate, r[0]):5.2f}x"
        print(line)

    print("\ntargets")
    for label, peer, text in (
        ("ferric-never", "redis", "unix, fsync=never vs redis without persistence"),
        ("ferric-always", "redis-aof", "unix, fsync=always (default) vs redis appendfsync always"),
        ("ferric-always", "redis", "unix, fsync=always (default) vs redis without persistence"),
        ("ferric-never-zmq", "redis", "zmq, fsync=never vs redis without persistence"),
    ):
        f, redis_set = seq.get((label, "set", 100)), seq.get((peer, "set", 100))
        if f is None:
            continue
        if redis_set is None:
            print(f"  sequential SET p50 <= {TARGET_SET_P50_RATIO}x redis-py, 100 B, {text}: not measured ({skip_reason})")
            continue
        r = ratio(f["p50"], redis_set["p50"])
        verdict = "PASS" if r <= TARGET_SET_P50_RATIO else "MISS"
        print(f"  {verdict}  sequential SET p50 <= {TARGET_SET_P50_RATIO}x redis-py, 100 B, {text}: "
              f"{f['p50']:.1f} vs {redis_set['p50']:.1f} µs = {r:.2f}x")
    for label, text in (("ferric-never", "fsync=never"), ("ferric-always", "fsync=always (default)")):
        entry = thr.get((label, "set", 1))
        if entry is None:
            continue
        verdict = "PASS" if entry[0] >= TARGET_PIPELINE_OPS_PER_SHARD else "MISS"
        print(f"  {verdict}  pipelined SET >= {TARGET_PIPELINE_OPS_PER_SHARD:,} ops/s per shard, 1 shard, batch {batch}, "
              f"{text}: {entry[0]:,.0f} ops/s ({entry[0] / TARGET_PIPELINE_OPS_PER_SHARD:.2f}x the target)")
    entry = thr.get(("ferric-never-zmq", "set", 1))
    if entry is not None:
        verdict = "PASS" if entry[0] >= TARGET_PIPELINE_OPS_PER_SHARD else "MISS"
        print(f"  {verdict}  pipelined SET >= {TARGET_PIPELINE_OPS_PER_SHARD:,} ops/s per shard, 1 shard, batch {batch}, "
              f"zmq, fsync=never: {entry[0]:,.0f} ops/s ({entry[0] / TARGET_PIPELINE_OPS_PER_SHARD:.2f}x the target)")
    entry = thr.get(("ferric-never", "get", 1))
    if entry is not None:
        verdict = "PASS" if entry[0] >= TARGET_PIPELINE_OPS_PER_SHARD else "MISS"
        print(f"  {verdict}  pipelined GET >= {TARGET_PIPELINE_OPS_PER_SHARD:,} ops/s per shard, 1 shard, batch {batch}: "
              f"{entry[0]:,.0f} ops/s ({entry[0] / TARGET_PIPELINE_OPS_PER_SHARD:.2f}x the target)")
    entry = thr.get(("ferric-never", "set", 2))
    if entry is not None:
        per_shard = entry[0] / 2
        verdict = "PASS" if per_shard >= TARGET_PIPELINE_OPS_PER_SHARD else "MISS"
        print(f"  {verdict}  pipelined SET >= {TARGET_PIPELINE_OPS_PER_SHARD:,} ops/s per shard, 2 shards, "
              f"fsync=never: {per_shard:,.0f} ops/s per shard ({entry[0]:,.0f} total)")

    print("\ndaemons")
    errors = sum(s["errors"] for s in seq.values()) + sum(e for _, e in thr.values())
    print(f"  wrong or failed replies: {errors}")
    if aof_exit:
        print(f"  redis-server (appendfsync always): {aof_exit}")
    print_exits({f"ferricd {name}": (status, problems.get(name, [])) for name, status in exits.items()},
                redis_exit, started)


def print_exits(daemons, redis_exit, started):
    """How each server ended, with its warnings; then the load average and the run's duration."""
    for name, (status, problems) in daemons.items():
        print(f"  {name}: {status}; log lines at WARNING or above: {len(problems)}")
        for line in problems[:10]:
            print(f"    {line}")
    if redis_exit:
        print(f"  redis-server: {redis_exit}")
    print("\nload avg %.2f %.2f %.2f (1, 5, 15 min) at the end" % os.getloadavg())
    print(f"total time {time.time() - started:.1f} s")


if __name__ == "__main__":
    main()
