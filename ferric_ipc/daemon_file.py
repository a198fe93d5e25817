"""ferricd.json, the file a running daemon leaves in its run directory: read it, and tell a stopped daemon at once."""

import json
import os
from typing import Any

from ferric_ipc.errors import FerricConnectionError
from ferric_ipc.file_layout import DAEMON_FILE

RUN_DIR_ENV = "FERRIC_RUN_DIR"
_START_HINT = "start it (systemctl start ferricd, or ferricd in a terminal)"


def read_daemon_file(run_dir: str) -> dict[str, Any]:
    """The daemon's description; FerricConnectionError, saying what to do, when there is no readable one."""
    path = os.path.join(run_dir, DAEMON_FILE)
    try:
        with open(path, "rb") as f:
            daemon = json.load(f)
    except FileNotFoundError:
        raise FerricConnectionError(
            f"no ferricd at {run_dir} ({DAEMON_FILE} is missing): {_START_HINT}, "
            f"or point {RUN_DIR_ENV} / Client(run_dir=...) at its run directory"
        ) from None
    except PermissionError:
        raise FerricConnectionError(
            f"cannot read {path}: permission denied; run as a member of the daemon's group "
            "(ferricd under systemd, see docs/deploy.md)"
        ) from None
    except (OSError, ValueError) as exc:
        raise FerricConnectionError(f"cannot read {path}: {exc}; is ferricd running there?") from None
    if not isinstance(daemon, dict):
        raise FerricConnectionError(f"{path} is not a ferricd description; restart ferricd to rewrite it")
    return daemon


def check_daemon_running(run_dir: str) -> None:
    """Raise FerricConnectionError if the daemon of ``run_dir`` has stopped (its file is gone, or names a dead pid).

    Called when a shard's socket is missing or refuses: while the daemon runs, that is a shard
    restarting and worth waiting for; once it has stopped, nothing will ever answer.
    """
    daemon = read_daemon_file(run_dir)
    pid = daemon.get("pid")
    if type(pid) is not int or pid <= 0:
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise FerricConnectionError(
            f"ferricd (pid {pid}) at {run_dir} is not running: it stopped without cleaning up "
            f"(killed, or its machine restarted); {_START_HINT}"
        ) from None
    except PermissionError:
        pass  # alive, as another user (the service user)
