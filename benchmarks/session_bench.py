"""Benchmark of ferric_flask sessions against Flask-Session 0.8 on Redis and Flask's signed-cookie sessions.

Starts its own ferricd and redis-server in a short temporary directory
under /tmp (the helpers of benchmarks/ipc_bench.py: redis-server on a Unix
socket with no persistence, ferricd with ``fsync = "never"``, so neither
touches the disk per write; the durable pair, ferricd ``fsync = "always"``
against redis ``appendfsync always``, is measured for the modifying request).
The sessions go under the prefix ``bench-sess:``, in ferricd's default
keyspace, whose fsync policy those helpers set; under ferric_flask's default
prefix ``sess:`` they would be in the ``sessions`` keyspace, always fsynced.
It measures, in one run on one machine:

1. the per-request cost of ``open_session`` + ``save_session`` in
   microseconds (p50 and mean, ``time.perf_counter_ns`` around the pair,
   request and response objects built outside the timing), for a read-only
   request (the session is read, nothing changes) and a modifying one
   (``session["visits"] += 1``), with Flask's defaults
   (SESSION_REFRESH_EACH_REQUEST = True, a permanent session of five
   fields). The three interfaces are sampled in rotating rounds;
2. requests/s of the example app (examples/flask_app) under gunicorn with 4
   sync workers for each interface: ``GET /me`` (read-only) and ``GET /``
   (the visit counter), driven by load-generator processes, each one browser
   with its own session, sending one request at a time over http.client;
3. ratios ferric/Flask-Session and the targets with PASS/MISS: read-only
   cost <= 1/10 of Flask-Session on Redis, modifying <= 1/2, requests/s higher.

    python3 benchmarks/session_bench.py            # full run, a few minutes
    python3 benchmarks/session_bench.py --quick    # smoke run, under a minute

Needs Flask-Session, redis-py, gunicorn and redis-server (the project's test extra).
"""

import argparse
import gc
import http.client
import importlib.util
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import flask  # noqa: E402
from flask.sessions import SecureCookieSessionInterface  # noqa: E402

import ferric_flask  # noqa: E402
from ferric_ipc import Client  # noqa: E402
from ipc_bench import Ferricd, RedisServer, machine_report, percentile, terminate, version_of  # noqa: E402
from tests.gunicorn_process import control_socket_flags, free_port  # noqa: E402  (the tests start gunicorn alike)

try:
    import redis
    from flask_session.redis import RedisSessionInterface
except ImportError:  # the project's test extra: pip install -e '.[test]'
    redis = RedisSessionInterface = None

EXAMPLE = os.path.join(ROOT, "examples", "flask_app", "app.py")
LIFETIME_S = 3600
#: In ferricd's default keyspace, whose fsync the ipc_bench helpers set (the ``sessions`` keyspace is ``sess:``).
PREFIX = "bench-sess:"
WORKERS = 4
START_TIMEOUT_S = 30
FULL = {"requests": 20_000, "rounds": 4, "load_s": 8.0, "load_rounds": 2, "clients": 4}
QUICK = {"requests": 2_000, "rounds": 2, "load_s": 2.0, "load_rounds": 1, "clients": 4}
BACKENDS = ("ferric", "redis", "cookie")
LABELS = {"ferric": "ferric_flask", "redis": "Flask-Session 0.8 + Redis", "cookie": "Flask signed cookie"}
TARGET_READ_RATIO = 0.10  # ferric read-only cost / Flask-Session's, at most
TARGET_WRITE_RATIO = 0.50  # ferric modifying cost / Flask-Session's, at most


def seed_fields():
    """A typical logged-in session: five fields, one of them a nested list."""
    return {"user_id": 42, "csrf_token": "x" * 40, "cart": [1, 2, 3], "visits": 0, "locale": "en"}


# -- the apps ---------------------------------------------------------------------------------


def make_interface(backend, app, ferric_run_dir=None, redis_socket=None):
    """The session interface under test on ``app``."""
    if backend == "ferric":
        return ferric_flask.FerricSessionInterface(client=Client(ferric_run_dir), prefix=PREFIX)
    if backend == "redis":
        return RedisSessionInterface(app, client=redis.Redis(unix_socket_path=redis_socket))
    return SecureCookieSessionInterface()


def bench_app():
    """The example app with the session interface named by $BENCH_BACKEND (gunicorn loads this)."""
    spec = importlib.util.spec_from_file_location("flask_app_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    app = example.create_app({"PERMANENT_SESSION_LIFETIME": LIFETIME_S})
    app.session_interface = make_interface(os.environ["BENCH_BACKEND"], app, os.environ.get("FERRIC_RUN_DIR"),
                                           os.environ.get("BENCH_REDIS_SOCKET"))
    return app


# -- 1: open_session + save_session ---------------------------------------------------------------


class InterfaceBench:
    """One interface on a bare app, with a stored session and the cookie that names it."""

    def __init__(self, backend, ferric_run_dir, redis_socket):
        self.app = flask.Flask(f"bench-{backend}")
        self.app.config.update(SECRET_KEY="bench", PERMANENT_SESSION_LIFETIME=LIFETIME_S)
        self.interface = self.app.session_interface = make_interface(backend, self.app, ferric_run_dir,
                                                                     redis_socket)
        with self.app.test_request_context("/"):
            session = self.interface.open_session(self.app, flask.request)
            session.update(seed_fields())
            session.permanent = True
            response = self.app.response_class()
            self.interface.save_session(self.app, session, response)
        self.cookie = response.headers["Set-Cookie"].split(";", 1)[0]
        self.context = self.app.test_request_context("/", headers={"Cookie": self.cookie})
        self.request = self.context.request
        self.request.cookies  # noqa: B018 - parsed once here, for every contender alike

    def run(self, modify, count):
        """``count`` requests' open+save, each timed in ns; checks the session outside the timing."""
        app, interface, request, new_response = self.app, self.interface, self.request, self.app.response_class
        clock = time.perf_counter_ns
        samples = []
        responses = [new_response() for _ in range(count)]
        gc.disable()
        try:
            for response in responses:
                t0 = clock()
                session = interface.open_session(app, request)
                if modify:
                    session["visits"] = session["visits"] + 1
                else:
                    session.get("user_id")
                interface.save_session(app, session, response)
                samples.append(clock() - t0)
        finally:
            gc.enable()
        session = interface.open_session(app, request)
        if session.get("user_id") != 42:
            raise RuntimeError(f"{type(interface).__name__} lost the session: {dict(session)}")
        return samples


def measure_interfaces(benches, settings):
    """``{(backend, kind): samples}`` with kind read-only / modifying, in rotating rounds."""
    samples = {}
    per_round = max(1, settings["requests"] // settings["rounds"])
    for round_number in range(settings["rounds"]):
        order = BACKENDS[round_number % 3:] + BACKENDS[:round_number % 3]
        for kind in ("read-only", "modifying"):
            for backend in order:
                bench = benches.get(backend)
                if bench is None:
                    continue
                bench.run(kind == "modifying", min(500, per_round))  # warm-up
                samples.setdefault((backend, kind), []).extend(bench.run(kind == "modifying", per_round))
    return samples


def summary_us(samples):
    ordered = sorted(samples)
    return percentile(ordered, 0.5) / 1000, statistics.fmean(ordered) / 1000


# -- 2: requests/s under gunicorn ------------------------------------------------------------------


class Gunicorn:
    """gunicorn with WORKERS sync workers serving bench_app() for one backend."""

    def __init__(self, base, backend, ferric_run_dir, redis_socket):
        self.port = free_port()
        env = dict(os.environ, BENCH_BACKEND=backend, FERRIC_RUN_DIR=ferric_run_dir or "",
                   BENCH_REDIS_SOCKET=redis_socket or "", PYTHONPATH=os.pathsep.join([HERE, ROOT]))
        self.log = open(os.path.join(base, f"gunicorn-{backend}.log"), "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS), "--worker-class", "sync",
             "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning", *control_socket_flags(),
             "session_bench:bench_app()"],
            cwd=HERE, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn ({backend}) exited with {self.process.returncode}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gunicorn ({backend}) did not answer within {START_TIMEOUT_S} s")

    def stop(self):
        terminate(self.process)
        self.log.close()


def browse(port, path, duration_s, start_at, results):
    """One browser: get a session, then request ``path`` one at a time until ``duration_s`` is up."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/")
    response = connection.getresponse()
    response.read()
    cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    headers = {"Cookie": cookie}
    while time.time() < start_at:
        time.sleep(0.001)
    done = errors = 0
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        connection.request("GET", path, headers=headers)  # reconnects itself after gunicorn's Connection: close
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            done += 1
        else:
            errors += 1
    results.put((done, errors))


def requests_per_s(port, path, settings):
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start_at = time.time() + 1.0  # every browser has its session before the clock starts
    browsers = [context.Process(target=browse, args=(port, path, settings["load_s"], start_at, results))
                for _ in range(settings["clients"])]
    for browser in browsers:
        browser.start()
    answers = [results.get(timeout=settings["load_s"] + 60) for _ in browsers]
    for browser in browsers:
        browser.join()
    done = sum(count for count, _ in answers)
    errors = sum(failed for _, failed in answers)
    return done / settings["load_s"], errors


# -- report ------------------------------------------------------------------------------------------


def verdict(ok):
    return "PASS" if ok else "MISS"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (under a minute)")
    parser.add_argument("--no-gunicorn", action="store_true", help="skip the requests/s part")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    if redis is None or shutil.which("redis-server") is None:
        raise SystemExit("session_bench needs redis-py, Flask-Session and redis-server: pip install -e '.[test]'")

    print("ferric_flask session benchmark: python3 benchmarks/session_bench.py " + " ".join(sys.argv[1:]))
    print(time.strftime("date      : %Y-%m-%d %H:%M:%S %Z"))
    for line in machine_report():
        print(line)
    print(f"versions  : Flask {version_of('flask')}, Flask-Session {version_of('flask-session')}, "
          f"redis-py {version_of('redis')}, gunicorn {version_of('gunicorn')}")
    print(f"settings  : {settings['requests']} requests per interface and kind in {settings['rounds']} rotating "
          f"rounds; gunicorn {WORKERS} sync workers, {settings['clients']} browsers, "
          f"{settings['load_s']:.0f} s per figure x {settings['load_rounds']} rounds")

    base = tempfile.mkdtemp(prefix="fsb-", dir="/tmp")
    servers = []
    try:
        ferricd = Ferricd(base, "never", shards=1, fsync="never").start()
        servers.append(ferricd)
        redis_server = RedisServer(base).start()
        servers.append(redis_server)

        print("\n[1/3] open_session + save_session per request, µs (ferricd fsync=never, redis no persistence)")
        benches = {backend: InterfaceBench(backend, ferricd.run_dir, redis_server.socket_path)
                   for backend in BACKENDS}
        cost = {key: summary_us(samples) for key, samples in measure_interfaces(benches, settings).items()}
        print(f"  {'':12} {'interface':28} {'p50':>8} {'mean':>8}")
        for kind in ("read-only", "modifying"):
            for backend in BACKENDS:
                p50, mean = cost[(backend, kind)]
                print(f"  {kind:12} {LABELS[backend]:28} {p50:8.1f} {mean:8.1f}")

        print("\n[2/3] modifying request with durable writes: ferricd fsync=always vs redis appendfsync always")
        ferricd_always = Ferricd(base, "always", shards=1, fsync="always").start()
        servers.append(ferricd_always)
        redis_aof = RedisServer(base, durable=True).start()
        servers.append(redis_aof)
        durable = {"ferric": InterfaceBench("ferric", ferricd_always.run_dir, None),
                   "redis": InterfaceBench("redis", None, redis_aof.socket_path)}
        durable_cost = {}
        for round_number in range(settings["rounds"]):
            for backend in (("ferric", "redis") if round_number % 2 == 0 else ("redis", "ferric")):
                count = max(1, settings["requests"] // settings["rounds"] // 4)
                durable_cost.setdefault(backend, []).extend(durable[backend].run(True, count))
        for backend in ("ferric", "redis"):
            p50, mean = summary_us(durable_cost[backend])
            print(f"  {'modifying':12} {LABELS[backend]:28} {p50:8.1f} {mean:8.1f}")

        rates = {}
        if not args.no_gunicorn:
            print(f"\n[3/3] example app under gunicorn, {WORKERS} sync workers, requests/s "
                  "(ferricd fsync=never, redis no persistence)")
            for round_number in range(settings["load_rounds"]):
                for backend in BACKENDS[round_number % 3:] + BACKENDS[:round_number % 3]:
                    server = Gunicorn(base, backend, ferricd.run_dir, redis_server.socket_path)
                    try:
                        for path, kind in (("/me", "read-only"), ("/", "modifying")):
                            rate, errors = requests_per_s(server.port, path, settings)
                            if errors:
                                raise RuntimeError(f"{backend} {path}: {errors} requests failed")
                            rates.setdefault((backend, kind), []).append(rate)
                    finally:
                        server.stop()
            for kind in ("read-only", "modifying"):
                for backend in BACKENDS:
                    print(f"  {kind:12} {LABELS[backend]:28} {statistics.median(rates[(backend, kind)]):8.0f}")

        print("\nratios (ferric_flask / Flask-Session on Redis; lower cost and higher requests/s are better)")
        read_ratio = cost[("ferric", "read-only")][0] / cost[("redis", "read-only")][0]
        write_ratio = cost[("ferric", "modifying")][0] / cost[("redis", "modifying")][0]
        print(f"  read-only cost p50     {read_ratio:6.3f}x  (target <= {TARGET_READ_RATIO})  "
              f"{verdict(read_ratio <= TARGET_READ_RATIO)}")
        print(f"  modifying cost p50     {write_ratio:6.3f}x  (target <= {TARGET_WRITE_RATIO})  "
              f"{verdict(write_ratio <= TARGET_WRITE_RATIO)}")
        durable_ratio = summary_us(durable_cost["ferric"])[0] / summary_us(durable_cost["redis"])[0]
        print(f"  modifying, durable p50 {durable_ratio:6.3f}x")
        for kind in ("read-only", "modifying"):
            cookie_ratio = cost[("ferric", kind)][0] / cost[("cookie", kind)][0]
            print(f"  {kind} cost vs Flask's signed cookie: {cookie_ratio:.2f}x")
        for kind in ("read-only", "modifying"):
            if (("ferric", kind)) in rates:
                ratio = statistics.median(rates[("ferric", kind)]) / statistics.median(rates[("redis", kind)])
                print(f"  requests/s {kind:10}  {ratio:6.3f}x  (target > 1)  {verdict(ratio > 1)}")
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
