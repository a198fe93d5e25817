"""End to end: ferricd and gunicorn (4 sync workers, with and without --preload) serving the example app."""

import http.cookiejar
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.gunicorn_process import control_socket_flags, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
APP = "tests.integrations.flask.gunicorn_app:make_app()"
WORKERS = 4
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15
REQUEST_TIMEOUT_S = 60  # generous: the machine may be busy; a hang still ends the test
RETRY_TIMEOUT_S = 60
SESSIONS = 8
REQUESTS_PER_SESSION = 40
PAIRS = 25


class Gunicorn:
    """``python -m gunicorn`` on a loopback port in its own process group, killed whole at ``stop``."""

    def __init__(self, run_dir, log_path, preload):
        self.port = free_port()
        argv = [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS), "--worker-class", "sync",
                "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "5", *control_socket_flags(), APP]
        if preload:
            argv.insert(3, "--preload")
        env = dict(os.environ, FERRIC_RUN_DIR=run_dir)
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=self.log, start_new_session=True)
        self.log_path = log_path

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url("/health"), timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"gunicorn not answering within {START_TIMEOUT_S} s:\n{self.output()}")
        # Every worker booted: WORKERS requests held at once, each by its own sync worker.
        gather = f"/gather/{self.port}-ready/{WORKERS}"
        assert at_once([lambda: Browser(self).request(gather)] * WORKERS) == [{"ok": True}] * WORKERS

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-5000:]

    def stop(self):
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except ProcessLookupError:
            pass
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # any worker left behind
            except ProcessLookupError:
                pass
            self.log.close()


class Browser:
    """One user agent: a cookie jar, one request at a time; records which workers answered it."""

    def __init__(self, server):
        self.server = server
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.workers = set()
        self.failed_attempts = 0

    def request(self, path, form=None, retry_unavailable=False):
        """The JSON answer to ``path`` (a POST of ``form`` if given). With ``retry_unavailable``, a 503
        (ferricd restarting) or a refused connection is retried for up to RETRY_TIMEOUT_S, and counted in
        ``failed_attempts``: a write that timed out may still have landed, so the attempt may have counted."""
        data = None if form is None else urllib.parse.urlencode(form).encode()
        deadline = time.monotonic() + RETRY_TIMEOUT_S
        while True:
            try:
                with self.opener.open(self.server.url(path), data=data, timeout=REQUEST_TIMEOUT_S) as response:
                    self.workers.add(response.headers["X-Worker-Pid"])
                    return json.loads(response.read())
            except (urllib.error.HTTPError, ConnectionError) as exc:
                unavailable = not isinstance(exc, urllib.error.HTTPError) or exc.code == 503
                if not (retry_unavailable and unavailable) or time.monotonic() > deadline:
                    raise
                self.failed_attempts += 1
                time.sleep(0.02)


@pytest.fixture(scope="module")
def ferricd(module_daemon_factory):
    return module_daemon_factory(shards=2)


@pytest.fixture(params=[False, True], ids=["fork-then-import", "preload"])
def server(request, ferricd, tmp_path):
    server = Gunicorn(ferricd.run_dir, str(tmp_path / "gunicorn.log"), preload=request.param)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


class Load:
    """SESSIONS browsers, each counting its visits one request at a time; can be paused between requests."""

    def __init__(self, server):
        self.browsers = [Browser(server) for _ in range(SESSIONS)]
        self.done = [0] * SESSIONS
        self.errors = []
        self.condition = threading.Condition()
        self.paused = False
        self.idle = 0
        # Daemon threads: a failed test must not leave the interpreter waiting for them at exit.
        self.threads = [threading.Thread(target=self._visit, args=(index,), daemon=True) for index in range(SESSIONS)]

    def _visit(self, index):
        browser = self.browsers[index]
        visits = 0
        try:
            for request in range(REQUESTS_PER_SESSION):
                self._wait_while_paused()
                failed_before = browser.failed_attempts
                answer = browser.request("/", retry_unavailable=True)["visits"]
                # Each failed attempt (ferricd restarting) may have counted once, never more.
                ambiguous = browser.failed_attempts - failed_before
                assert visits < answer <= visits + 1 + ambiguous, (visits, answer, ambiguous)
                visits = answer
                self.done[index] = request + 1
            browser.visits = visits
        except BaseException as exc:  # reported by the main thread
            self.errors.append(exc)
        finally:
            with self.condition:
                self.idle += 1  # finished threads count as idle
                self.condition.notify_all()

    def _wait_while_paused(self):
        with self.condition:
            if self.paused:
                self.idle += 1
                self.condition.notify_all()
                self.condition.wait_for(lambda: not self.paused)
                self.idle -= 1

    def start(self):
        for thread in self.threads:
            thread.start()

    def wait_until(self, fraction):
        wait_for(lambda: sum(self.done) >= fraction * SESSIONS * REQUESTS_PER_SESSION or self.errors)

    def pause(self):
        """Returns once no request is in flight."""
        with self.condition:
            self.paused = True
            assert self.condition.wait_for(lambda: self.idle == SESSIONS, timeout=60), "requests did not finish"

    def resume(self):
        with self.condition:
            self.paused = False
            self.condition.notify_all()

    def join(self):
        for thread in self.threads:
            thread.join(timeout=REQUESTS_PER_SESSION * RETRY_TIMEOUT_S)
        assert not any(thread.is_alive() for thread in self.threads), "the load did not finish"


def test_counters_are_exact_across_workers_and_no_session_is_lost_through_restarts_and_a_reload(server, ferricd):
    load = Load(server)
    for number, browser in enumerate(load.browsers):
        browser.request("/login", {"user": f"user{number}"})
        browser.request("/cart", {"item": f"item{number}"})
    load.start()
    load.wait_until(0.25)
    load.pause()  # a restart between requests: every count stays exact
    ferricd.stop()
    ferricd.start()
    load.resume()
    load.wait_until(0.5)
    ferricd.stop()  # a restart under load: requests meanwhile get 503 and are repeated
    ferricd.start()
    load.wait_until(0.75)
    server.process.send_signal(signal.SIGHUP)  # gunicorn replaces every worker
    load.join()
    assert load.errors == [], server.output()
    for number, browser in enumerate(load.browsers):
        assert browser.request("/me") == {"user": f"user{number}", "visits": browser.visits, "cart": [f"item{number}"]}
        assert browser.visits >= REQUESTS_PER_SESSION
    assert len(set().union(*(browser.workers for browser in load.browsers))) > 1  # the sessions crossed workers


def test_simultaneous_requests_of_one_session_keep_both_changes(server):
    for pair in range(PAIRS):
        browser = Browser(server)
        browser.request("/login", {"user": f"pair{pair}"})
        browser.request("/cart", {"item": "seed"})
        tag = f"{server.port}-{pair}"
        assert at_once([lambda key=key: browser.request(f"/meet/{tag}/set/{key}") for key in ("left", "right")]) \
            == [{"ok": True}, {"ok": True}]
        fields = browser.request("/session")
        assert (fields["user"], fields["cart"], fields.get("left"), fields.get("right")) == (
            f"pair{pair}", ["seed"], tag, tag)


def at_once(calls):
    """Run ``calls`` in parallel threads; their results in order, or the first exception raised."""
    results = [None] * len(calls)

    def run(position):
        try:
            results[position] = calls[position]()
        except BaseException as exc:  # raised below, in the test's thread
            results[position] = exc

    threads = [threading.Thread(target=run, args=(position,), daemon=True) for position in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * REQUEST_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads), "requests did not finish"
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def wait_for(condition, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("the load did not progress")
        time.sleep(0.01)
