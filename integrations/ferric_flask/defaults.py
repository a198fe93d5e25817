"""Defaults: every option of FerricSessionInterface, its app.config key and its default, stated once."""

from datetime import timedelta


class Defaults:
    """Option defaults. ``init_app`` reads each from ``app.config[CONFIG_KEYS[option]]`` when set there."""

    #: ferricd's run directory; None: $FERRIC_RUN_DIR, else ./ferric-run (as ``ferric_ipc.Client``).
    run_dir = None
    #: Key prefix of session entries: a ferricd keyspace prefix (``[keyspaces.sessions] prefix = "sess:"``).
    prefix = "sess:"
    #: Longest wait for ferricd in one call; a web worker never waits longer than this per call.
    timeout_ms = 1_000
    #: New sessions are permanent (cookie with an expiry) unless the app sets ``session.permanent = False``.
    permanent = True
    #: An unmodified session's TTL is refreshed when it has dropped this much below PERMANENT_SESSION_LIFETIME.
    refresh_interval_ms = 60_000
    #: Largest encoded session; a save past it raises SessionTooLarge and writes nothing.
    max_bytes = 256 * 1024
    #: Sign the id in the cookie with SECRET_KEY (itsdangerous), so forged ids never reach the store.
    sign_ids = False
    #: When ferricd is unreachable: "raise" (SessionStoreUnavailable, 503) or "empty" (a fresh session, not saved).
    on_unavailable = "raise"
    #: Random bytes in a session id (32 bytes = 256 bits, 43 URL-safe characters).
    id_bytes = 32


#: option -> app.config key read by ``init_app``.
CONFIG_KEYS = {
    "run_dir": "FERRIC_RUN_DIR",
    "prefix": "FERRIC_SESSION_PREFIX",
    "timeout_ms": "FERRIC_SESSION_TIMEOUT_MS",
    "permanent": "FERRIC_SESSION_PERMANENT",
    "refresh_interval_ms": "FERRIC_SESSION_REFRESH_INTERVAL_MS",
    "max_bytes": "FERRIC_SESSION_MAX_BYTES",
    "sign_ids": "FERRIC_SESSION_SIGN_IDS",
    "on_unavailable": "FERRIC_SESSION_ON_UNAVAILABLE",
    "id_bytes": "FERRIC_SESSION_ID_BYTES",
}

ON_UNAVAILABLE_CHOICES = ("raise", "empty")


def milliseconds(value, name):
    """``value`` (int ms or timedelta) as a positive int of ms; a clear TypeError otherwise."""
    if isinstance(value, timedelta):
        value = int(value.total_seconds() * 1000)
    if type(value) is not int or value <= 0:
        raise TypeError(f"{name} must be a positive int of milliseconds or a timedelta, not {value!r}")
    return value
