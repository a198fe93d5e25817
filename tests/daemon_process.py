"""Real ferricd process trees for tests: a real ``ferricd`` (supervisor + shard processes) in a short temporary
directory, talking over its real Unix stream sockets and real ZeroMQ ipc:// sockets.

Every daemon is started in its own session (process group) and the whole group is
SIGKILLed at teardown, whatever the test did, so no supervisor or shard outlives a test.
Socket paths are limited to ~107 bytes, so daemons live in ``/tmp/fd-XXXXXX`` rather
than under pytest's (long) ``tmp_path``.
"""

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from ferric_ipc.client import Client
from ferric_ipc.errors import FerricError
from ferric_ipc.routing import shard_for

READY_TIMEOUT_S = 20
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
#: Both ways a Client reaches a shard; tests of client behaviour run over each.
TRANSPORTS = ["unix", "zmq"]
STOP_TIMEOUT_S = 10


def short_tempdir():
    return tempfile.mkdtemp(prefix="fd-", dir="/tmp")


class Daemon:
    """One ``python -m ferricd`` process tree on ``data_dir`` / ``run_dir``, stderr logged to a file."""

    def __init__(self, base, shards=2, config=None, env=None, data_dir=None, run_dir=None, name="ferricd",
                 max_open_files=None):
        self.base = base
        self.shards = shards
        self.data_dir = data_dir or os.path.join(base, "data")
        self.run_dir = run_dir or os.path.join(base, "run")
        self.config_path = None
        if config is not None:
            self.config_path = os.path.join(base, f"{name}.toml")
            with open(self.config_path, "w") as f:
                f.write(config)
        self.env = env
        self.max_open_files = max_open_files  # RLIMIT_NOFILE for the daemon and its shards
        self.name = name
        self.stderr_path = os.path.join(base, f"{name}.stderr")
        self.stdout_path = os.path.join(base, f"{name}.stdout")
        self.process = None
        self._starts = 0
        self._clients = []

    # -- process control ------------------------------------------------------------

    def argv(self):
        argv = [sys.executable, "-m", "ferricd", "--data-dir", self.data_dir, "--run-dir", self.run_dir]
        if self.shards is not None:
            argv += ["--shards", str(self.shards)]
        if self.config_path:
            argv += ["--config", self.config_path]
        return argv

    def start(self, wait=True):
        """Start the daemon (again); with ``wait``, return once every shard answers a ping."""
        assert self.process is None or self.process.poll() is not None, "already running"
        env = dict(os.environ) if self.env is None else self.env
        self._starts += 1
        # Each start appends to the same log files, so a restart's output follows the first run's.
        with open(self.stderr_path, "ab") as err, open(self.stdout_path, "ab") as out:
            self.process = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                cwd=self.base, start_new_session=True, preexec_fn=self._prepare_child,
            )
        if wait:
            self.wait_ready()
        return self

    def _prepare_child(self):
        # If pytest itself is killed (a hard timeout, Ctrl-C twice), no teardown runs: let the kernel
        # SIGKILL the supervisor then, and its shards follow it (they ask for that themselves).
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if self.max_open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.max_open_files, self.max_open_files))

    @property
    def pid(self):
        return self.process.pid

    def wait_ready(self, timeout_s=READY_TIMEOUT_S, shards=None):
        """Poll ``ping`` (every shard, or the ``shards`` given) until it answers; fail with the log if not."""
        deadline = time.monotonic() + timeout_s
        client = Client(self.run_dir, timeout_ms=500)
        last = None
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"ferricd exited with {self.process.returncode} before it was ready:\n{self.stderr()}")
                try:
                    if shards is None:
                        client.ping()  # every shard, as many as ferricd.json says
                    else:
                        for shard in shards:
                            client.ping(shard=shard)
                    return
                except FerricError as exc:
                    # Keep text, not the exception: its traceback would tie this frame (and the
                    # caller's clients) into a reference cycle; see ``Daemon.client``.
                    last = f"{type(exc).__name__}: {exc}"
                    time.sleep(0.05)
        finally:
            client.close()
        pytest.fail(f"ferricd not ready within {timeout_s} s ({last}):\n{self.stderr()}")

    def send_signal(self, signum):
        self.process.send_signal(signum)

    def stop(self, timeout_s=STOP_TIMEOUT_S):
        """SIGTERM the supervisor and wait for it; returns its exit code (fails the test if it hangs)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"ferricd did not exit within {timeout_s} s of SIGTERM:\n{self.stderr()}")

    def kill(self):
        """SIGKILL the whole process group (supervisor and shards) and reap the supervisor."""
        self.close_clients()
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def client(self, timeout_ms=2000, **kwargs):
        """A Client for this daemon, closed at teardown.

        Closing matters: a Client that is garbage-collected as part of a reference cycle
        (a failed test's traceback makes one) with a socket still open hangs the process in
        ``zmq.Context.__del__`` (see test_client.py::test_client_in_reference_cycle_does_not_hang_gc).
        """
        c = Client(self.run_dir, timeout_ms=timeout_ms, **kwargs)
        self._clients.append(c)
        return c

    def close_clients(self):
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass


class DaemonFactory:
    """Creates daemons in short temporary directories and kills every one of them at ``cleanup``."""

    def __init__(self):
        self.daemons = []
        self.dirs = []

    def tempdir(self):
        path = short_tempdir()
        self.dirs.append(path)
        return path

    def __call__(self, shards=2, config=None, env=None, start=True, wait=True, base=None, **kwargs):
        daemon = Daemon(base or self.tempdir(), shards=shards, config=config, env=env, **kwargs)
        self.daemons.append(daemon)
        if start:
            daemon.start(wait=wait)
        return daemon

    def cleanup(self):
        for daemon in self.daemons:
            daemon.kill()
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)


def keys_on_shard(shard, count, prefix, shards=2):
    """``count`` distinct keys (bytes) starting with ``prefix`` that route to ``shard``."""
    found, i = [], 0
    while len(found) < count:
        key = f"{prefix}{i}".encode()
        if shard_for(key, shards) == shard:
            found.append(key)
        i += 1
    return found
