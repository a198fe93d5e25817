"""Supervisor: one process per shard, restarted with backoff when it dies, stopped in order, reported to systemd.

The main loop reads top to bottom: handle queued signals, reap exited shards,
start the ones that are due, check health (READY=1 / WATCHDOG=1), sleep.
Signal handlers only enqueue; everything happens in the loop.
"""

import argparse
import json
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from importlib import metadata

from ferric_ipc import native
from ferric_ipc.file_layout import DAEMON_FILE, socket_path, stream_path
from ferric_ipc.protocol import PROTOCOL_VERSION, TRANSPORT_UNIX, TRANSPORT_ZMQ
from ferricd import systemd
from ferricd.config import ConfigError, load_config
from ferricd.heartbeat import beat_age_ms, clear_heartbeat
from ferricd.exit_codes import EXIT_BOOT_ERROR, EXIT_CONFIG_ERROR, EXIT_DATA_ERROR, EXIT_IN_USE
from ferricd.storage.atomic_files import write_atomically
from ferricd.storage.errors import DirectoryLockedError
from ferricd.storage.lock import DirectoryLock

log = logging.getLogger("ferricd")

META_FILE = "ferricd.meta"  # in data_dir: {"format": 1, "shards": N}, written when the directory is created
LOCK_NAME = "ferricd.lock"  # in data_dir and run_dir: one daemon per directory


class ShardProcess:
    """What the supervisor knows about shard ``shard_id``: its process, health and restart history."""

    def __init__(self, shard_id):
        self.shard_id = shard_id
        self.process = None
        self.started_at_s = 0.0  # monotonic
        self.failures = 0
        self.next_start_at_s = 0.0  # monotonic
        self.healthy = False  # beating: its loop runs and serves
        self.signalled = None  # the last signal sent to stop this process

    @property
    def running(self):
        return self.process is not None


class Supervisor:
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)

    def __init__(self, config):
        """Only records settings: locks, signals and sockets are set up by ``start``."""
        self.config = config
        self.slots = []
        self.signal_queue = []
        self.stopping = False
        self.ready = False
        self._locks = []
        self._wakeup = None
        self._next_health_at = 0.0
        self._next_watchdog_at = 0.0
        self._watchdog_s = systemd.watchdog_interval_s()

    # -- the loop --------------------------------------------------------------

    def run(self):
        """Start, supervise until SIGTERM/SIGINT, stop. Returns the process exit code."""
        code = self.start()
        if code:
            return code
        try:
            while not self.stopping:
                self.handle_signals()
                if self.stopping:
                    break
                self.reap_shards()
                self.manage_shards()
                self.check_health()
                self.sleep()
        finally:
            self.stop()
        return 0

    def start(self):
        config = self.config
        created = [path for path in (config.data_dir, config.run_dir) if not os.path.exists(path)]
        os.makedirs(config.data_dir, mode=0o750, exist_ok=True)
        os.makedirs(config.run_dir, mode=0o750, exist_ok=True)
        problem = _unsafe_directory(config.data_dir, "data directory") or _unsafe_directory(config.run_dir,
                                                                                            "run directory")
        if problem:
            _remove_created(created)
            log.error("%s", problem)
            return EXIT_CONFIG_ERROR
        try:
            self._locks = [DirectoryLock(config.data_dir, LOCK_NAME, "data directory"),
                           DirectoryLock(config.run_dir, LOCK_NAME, "run directory")]
        except DirectoryLockedError as exc:
            self._release_locks()
            _remove_created(created)
            log.error("another ferricd is running: %s", exc)
            return EXIT_IN_USE
        try:
            self.shard_count = resolve_shard_count(config.data_dir, config.shards)
        except ConfigError as exc:
            self._release_locks()
            _remove_created(created)
            log.error("%s", exc)
            return EXIT_CONFIG_ERROR
        self.slots = [ShardProcess(shard_id) for shard_id in range(self.shard_count)]
        self._install_signals()
        write_atomically(
            os.path.join(config.run_dir, DAEMON_FILE),
            [json.dumps({
                "shards": self.shard_count, "protocol": PROTOCOL_VERSION, "pid": os.getpid(),
                "transports": [TRANSPORT_UNIX, TRANSPORT_ZMQ],
                "data_dir": os.path.abspath(config.data_dir),  # clients map the shards' data files from here
                "max_value_bytes": config.storage.max_value_bytes,  # clients refuse longer values before sending
                "max_request_bytes": config.max_request_bytes,  # and longer request frames (pipelines)
            }).encode()],
            file_mode=config.storage.file_mode,  # readable by whoever may use the sockets, like the tables
        )
        if native.extension is None and not native.disabled():
            # pip hides a build's output unless -v, so this is where an operator learns it.
            log.warning("clients read through pure Python, 3-4x slower per read: %s", native.absent_reason())
        log.info(
            "starting %d %s; data in %s; sockets in %s",
            self.shard_count, _plural(self.shard_count, "shard"), os.path.abspath(config.data_dir), os.path.abspath(config.run_dir),
        )
        return 0

    # -- signals ---------------------------------------------------------------

    def _install_signals(self):
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup = read_fd
        signal.set_wakeup_fd(write_fd)
        for signum in self.SIGNALS:
            signal.signal(signum, self._enqueue_signal)

    def _enqueue_signal(self, signum, _frame):
        self.signal_queue.append(signum)

    def handle_signals(self):
        while self.signal_queue:
            signum = self.signal_queue.pop(0)
            handler = getattr(self, f"handle_{signal.Signals(signum).name.lower()}", None)
            if handler:
                handler()

    def handle_sigterm(self):
        log.info("SIGTERM: stopping")
        self.stopping = True

    def handle_sigint(self):
        log.info("SIGINT: stopping")
        self.stopping = True

    def handle_sighup(self):
        log.warning("SIGHUP: configuration reload is not supported; restart ferricd to apply changes")

    def handle_sigchld(self):
        pass  # reap_shards runs right after

    # -- children --------------------------------------------------------------

    def reap_shards(self):
        """Collect shards that exited and schedule their restart with exponential backoff."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.process is None or slot.process.poll() is None:
                continue
            returncode = slot.process.returncode
            status = describe_exit(returncode)
            if now - slot.started_at_s >= self.config.healthy_after_ms / 1000:
                slot.failures = 0  # it ran well for a while: start the backoff over
            slot.failures += 1
            delay_ms = min(
                self.config.restart_backoff_initial_ms * 2 ** (slot.failures - 1), self.config.restart_backoff_max_ms
            )
            slot.next_start_at_s = now + delay_ms / 1000
            slot.process, slot.healthy = None, False
            self._remove_stale_sockets(slot.shard_id)
            if returncode in (EXIT_BOOT_ERROR, EXIT_DATA_ERROR):
                log.error("shard %d cannot start (%s, see its log); retrying in %d ms", slot.shard_id, status, delay_ms)
            else:
                log.error("shard %d died (%s); restarting in %d ms", slot.shard_id, status, delay_ms)
            systemd.notify(f"STATUS=shard {slot.shard_id} down ({status}); restarting")

    def _remove_stale_sockets(self, shard_id):
        # A killed shard leaves its socket files: without them clients see at once that the shard
        # is starting (nothing to connect to) and connect when its successor binds.
        for path in (stream_path(self.config.run_dir, shard_id), socket_path(self.config.run_dir, shard_id)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def manage_shards(self):
        """Start every shard that is not running and whose backoff has passed."""
        now = time.monotonic()
        for slot in self.slots:
            if not slot.running and now >= slot.next_start_at_s:
                self.spawn_shard(slot)

    def spawn_shard(self, slot):
        clear_heartbeat(self.config.run_dir, slot.shard_id)  # its first beat says it recovered and serves
        settings = self.config.to_dict()
        settings["daemon"]["shards"] = self.shard_count
        # A fresh interpreter (fork + exec): ZeroMQ state must never cross a fork.
        slot.process = subprocess.Popen(
            [sys.executable, "-m", "ferricd.shard", "--shard", str(slot.shard_id),
             "--settings", json.dumps(settings), "--parent-pid", str(os.getpid())],
            stdin=subprocess.DEVNULL, close_fds=True,
        )
        slot.started_at_s = time.monotonic()
        slot.signalled = None
        log.info("shard %d started as pid %d", slot.shard_id, slot.process.pid)

    def kill_shard(self, slot, signum):
        slot.signalled = signum
        if slot.process is not None and slot.process.poll() is None:
            try:
                slot.process.send_signal(signum)
            except ProcessLookupError:
                pass

    # -- health and systemd ------------------------------------------------------

    def check_health(self):
        """Read the shards' heartbeats; READY=1 once all beat, WATCHDOG=1 while all do; stop hung ones."""
        now = time.monotonic()
        if now < self._next_health_at:
            return
        interval_s = self.config.health_interval_ms / 1000 if self.ready else 0.05
        if self._watchdog_s:  # systemd wants WATCHDOG=1 every half period, whatever the health interval
            interval_s = min(interval_s, self._watchdog_s)
        self._next_health_at = now + interval_s
        for slot in self.slots:
            self._check_heartbeat(slot)
        healthy = sum(slot.healthy for slot in self.slots)
        if healthy == len(self.slots):
            if not self.ready:
                self.ready = True
                log.info("ready: %d %s serving in %s", healthy, _plural(healthy, "shard"),
                         os.path.abspath(self.config.run_dir))
                systemd.notify(f"READY=1\nSTATUS={healthy}/{len(self.slots)} shards up")
            if self._watchdog_s and now >= self._next_watchdog_at:
                systemd.notify("WATCHDOG=1")
                self._next_watchdog_at = now + self._watchdog_s
        elif self.ready:
            systemd.notify(f"STATUS={healthy}/{len(self.slots)} shards up")

    def _check_heartbeat(self, slot):
        """A shard whose loop has not beaten for heartbeat_timeout_ms gets SIGTERM, and SIGKILL at twice that;
        reap_shards then restarts it. A shard that has not beaten yet is recovering its data, not hung."""
        age_ms = beat_age_ms(self.config.run_dir, slot.shard_id) if slot.running else None
        timeout_ms = self.config.heartbeat_timeout_ms
        slot.healthy = age_ms is not None and age_ms < timeout_ms
        if age_ms is None or slot.healthy:
            return
        if age_ms >= 2 * timeout_ms and slot.signalled != signal.SIGKILL:
            log.error("shard %d ignored SIGTERM; sending SIGKILL", slot.shard_id)
            self.kill_shard(slot, signal.SIGKILL)
        elif slot.signalled is None:
            log.error("shard %d has not beaten for %d ms (its loop is stuck); sending SIGTERM", slot.shard_id, age_ms)
            self.kill_shard(slot, signal.SIGTERM)

    def sleep(self):
        """Wait for a signal, the next due restart, or the next health check, whichever is first."""
        now = time.monotonic()
        wake_at = [self._next_health_at] + [s.next_start_at_s for s in self.slots if not s.running]
        timeout = max(0.0, min(min(wake_at) - now, 1.0))
        if select.select([self._wakeup], [], [], timeout)[0]:
            try:
                while os.read(self._wakeup, 512):
                    pass
            except BlockingIOError:
                pass

    # -- stopping --------------------------------------------------------------

    def stop(self):
        """SIGTERM every shard, wait up to stop_timeout_ms, SIGKILL what is left, clean up."""
        systemd.notify("STOPPING=1")
        for slot in self.slots:
            self.kill_shard(slot, signal.SIGTERM)
        deadline = time.monotonic() + self.config.stop_timeout_ms / 1000
        for slot in self.slots:
            if slot.process is None:
                continue
            try:
                slot.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("shard %d did not stop within %d ms; killing it", slot.shard_id, self.config.stop_timeout_ms)
                self.kill_shard(slot, signal.SIGKILL)
                slot.process.wait()
            slot.process = None
            clear_heartbeat(self.config.run_dir, slot.shard_id)
        if self._locks:  # only the daemon holding the run directory removes its daemon file
            try:
                os.unlink(os.path.join(self.config.run_dir, DAEMON_FILE))
            except FileNotFoundError:
                pass
        self._release_locks()
        log.info("stopped")

    def _release_locks(self):
        for lock in self._locks:
            lock.release()
        self._locks = []


def resolve_shard_count(data_dir, configured):
    """The shard count to run with: the one recorded in ``data_dir``; a new directory records ``configured``.

    ``configured`` 0 means: the recorded count, or one per CPU core for a new
    directory. A different explicit count is refused.
    """
    path = os.path.join(data_dir, META_FILE)
    try:
        with open(path, "rb") as f:
            recorded = int(json.load(f)["shards"])
    except FileNotFoundError:
        count = configured or os.cpu_count() or 1
        write_atomically(path, [json.dumps({"format": 1, "shards": count}).encode()])
        return count
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ConfigError(
            f"{path} is unreadable ({exc}); it records the shard count: restore it, or write "
            '{"format": 1, "shards": N} with N the number of shard-K directories in ' + data_dir
        ) from None
    if configured and configured != recorded:
        raise ConfigError(
            f"{data_dir} was created with {recorded} shards, and keys are placed by shard count: "
            f"start with --shards {recorded} (or shards = {recorded} in the config), or use a new data directory. "
            "Changing the count of an existing directory (resharding) is not supported yet."
        )
    return recorded


def _version():
    try:
        return metadata.version("ferricstore")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _unsafe_directory(path, what):
    """Why ferricd must not use ``path`` (None if it may): another user could plant a file or a symlink in a
    directory they own or may write, and ferricd, often root, would then write through it."""
    status = os.stat(path)
    if status.st_uid != os.geteuid():
        return (f"the {what} {os.path.abspath(path)} belongs to uid {status.st_uid}, not to the user ferricd runs as "
                f"(uid {os.geteuid()}): chown it to that user, or run ferricd as its owner")
    if status.st_mode & stat.S_IWOTH:
        return (f"the {what} {os.path.abspath(path)} may be written by every user (mode {stat.filemode(status.st_mode)}): "
                f"run chmod o-w {os.path.abspath(path)}")
    return None


def _remove_created(paths):
    """A start that failed leaves nothing behind: remove the directories it created (with its lock files)."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def _plural(count, noun):
    return noun if count == 1 else noun + "s"


def describe_exit(returncode):
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:  # a real-time signal has no name
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ferricd", description="FerricStore cache daemon")
    parser.add_argument("--version", action="version", version=f"ferricd {_version()}")
    parser.add_argument("--config", help="TOML configuration file (see docs/configuration.md)")
    parser.add_argument("--data-dir", help="where shard data lives (default ./ferric-data)")
    parser.add_argument("--run-dir", help="where sockets live (default ./ferric-run)")
    parser.add_argument("--shards", type=int, help="shard count for a new data directory (default: one per core)")
    parser.add_argument("--check-config", action="store_true",
                        help="load the configuration, print what it sets or what is wrong with it, and exit")
    args = parser.parse_args(argv)
    overrides = {"daemon": {"data_dir": args.data_dir, "run_dir": args.run_dir, "shards": args.shards}}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"ferricd: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.check_config:
        keyspaces = ", ".join(f"{k.name} ({k.prefix.decode(errors='backslashreplace')})" if k.prefix else k.name
                              for k in config.keyspaces)
        print(f"configuration OK: data in {os.path.abspath(config.data_dir)}, sockets in "
              f"{os.path.abspath(config.run_dir)}; keyspaces: {keyspaces}")
        return 0
    logging.basicConfig(
        level=config.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s ferricd[%(process)d] %(levelname)s %(message)s",
    )
    return Supervisor(config).run()


if __name__ == "__main__":
    sys.exit(main())
