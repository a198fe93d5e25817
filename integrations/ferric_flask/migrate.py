"""Copy the sessions Flask-Session 0.6-0.8 stored in Redis into ferricd (``ferricctl import-flask-session``).

Flask-Session 0.7-0.8 stores ``dict(session)`` under ``<key prefix><sid>``
(default prefix ``session:``) as msgspec msgpack (or JSON with
SESSION_SERIALIZATION_FORMAT = "json"), with the session lifetime as the
Redis TTL. Versions before 0.7 stored pickles: those are skipped and counted,
never unpickled (unpickling runs code chosen by whoever wrote the bytes).

Each session keeps its id, so the browser's cookie keeps working once the app
uses FerricSessionInterface with the same cookie name, and its remaining TTL.
A session already in ferricd is left alone, so the import can run again (for
instance right before the switch, to pick up sessions created meanwhile).
"""

import collections
import json
import sys

import msgpack
import redis

from ferric_flask.defaults import Defaults
from ferric_flask.serializer import SessionSerializer
from ferric_flask.session_ids import ID_PATTERN
from ferric_ipc import Client, FerricError

FLASK_SESSION_KEY_PREFIX = "session:"  # Flask-Session's SESSION_KEY_PREFIX default
BATCH = 500  # sessions read from Redis and written to ferricd per round trip
SCAN_COUNT = 1000

# Reasons a session is skipped, as the summary prints them.
SKIP_PICKLE = "pickled (written by Flask-Session < 0.7; never unpickled)"
SKIP_UNREADABLE = "neither msgpack nor JSON"
SKIP_NOT_A_MAP = "not a map with str keys"
SKIP_UNSUPPORTED = "holds a value ferric_flask cannot store"
SKIP_BAD_ID = "id not usable as a ferric_flask session id (URL-safe, 22-256 characters)"
SKIP_EXPIRED = "expired during the import"
SKIP_EXISTS = "already in ferricd"
SKIP_REFUSED = "refused by ferricd"


class ImportSummary:
    """What an import did: sessions ``copied`` and ``skipped`` (a Counter of reasons)."""

    def __init__(self):
        self.copied = 0
        self.skipped = collections.Counter()

    def __str__(self):
        lines = [f"copied {self.copied} sessions, skipped {sum(self.skipped.values())}"]
        lines += [f"  {count} {reason}" for reason, count in self.skipped.most_common()]
        return "\n".join(lines)


def decode_flask_session(data):
    """``(fields, None)`` for a session Flask-Session 0.6-0.8 stored, or ``(None, reason)`` to skip it."""
    if len(data) > 1 and data[0] == 0x80 and 2 <= data[1] <= 5:  # pickle protocol 2-5 opcode: PROTO n
        return None, SKIP_PICKLE
    try:
        # msgspec writes aware datetimes as the msgpack timestamp extension; timestamp=3: aware UTC datetimes.
        fields = msgpack.unpackb(data, raw=False, timestamp=3, strict_map_key=False)
    except (ValueError, msgpack.UnpackException):
        try:
            fields = json.loads(data)
        except ValueError:
            return None, SKIP_UNREADABLE
    if not (isinstance(fields, dict) and all(isinstance(field, str) for field in fields)):
        return None, SKIP_NOT_A_MAP
    return fields, None


def import_flask_sessions(source, client, key_prefix=FLASK_SESSION_KEY_PREFIX, prefix=Defaults.prefix,
                          progress=None):
    """Copy every session under ``key_prefix`` in Redis ``source`` to ``prefix + sid`` through ``client``.

    ``progress(done, total)`` is called as batches complete. Returns an ImportSummary.
    """
    serializer = SessionSerializer()
    summary = ImportSummary()
    keys = sorted(source.scan_iter(match=_glob_escape(key_prefix) + "*", count=SCAN_COUNT))
    total = len(keys)
    if progress:
        progress(0, total)
    for start in range(0, total, BATCH):
        batch = keys[start:start + BATCH]
        reads = source.pipeline(transaction=False)
        for key in batch:
            reads.get(key)
            reads.pttl(key)
        answers = reads.execute()
        writes = client.pipeline()
        for key, data, ttl_ms in zip(batch, answers[::2], answers[1::2]):
            reason = _queue_copy(writes, serializer, key[len(key_prefix.encode()):], data, ttl_ms, prefix)
            if reason:
                summary.skipped[reason] += 1
        for written in writes.execute(raise_on_error=False):
            if isinstance(written, FerricError):
                summary.skipped[f"{SKIP_REFUSED}: {written}"] += 1
            elif written:
                summary.copied += 1
            else:
                summary.skipped[SKIP_EXISTS] += 1
        if progress:
            progress(min(start + BATCH, total), total)
    return summary


def _queue_copy(writes, serializer, sid_bytes, data, ttl_ms, prefix):
    """Queue the copy of one session on ``writes``; the reason it is skipped, or None."""
    if data is None or ttl_ms == -2:
        return SKIP_EXPIRED
    sid = sid_bytes.decode("ascii", "replace")
    if not ID_PATTERN.fullmatch(sid):
        return SKIP_BAD_ID
    fields, reason = decode_flask_session(data)
    if reason:
        return reason
    try:
        value = serializer.dumps(fields)
    except TypeError:
        return SKIP_UNSUPPORTED
    # -1: no expiry in Redis (Flask-Session always sets one, but someone may have persisted it).
    writes.set(prefix + sid, value, ttl_ms=None if ttl_ms == -1 else ttl_ms, nx=True)
    return None


def _glob_escape(text):
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


class ProgressBar:
    """``[#####.....] done/total`` on a terminal (redrawn in place); a line per tenth elsewhere."""

    WIDTH = 40

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.last_tenth = -1

    def __call__(self, done, total):
        if self.tty:
            filled = self.WIDTH * done // total if total else self.WIDTH
            self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total}")
            if done == total:
                self.stream.write("\n")
        else:
            tenth = 10 * done // total if total else 10
            if tenth != self.last_tenth:
                self.stream.write(f"{done}/{total} sessions\n")
                self.last_tenth = tenth
        self.stream.flush()


def main(args):
    """``ferricctl import-flask-session``: run the import with the parsed ``args``; returns the exit code."""
    source = redis.Redis.from_url(args.redis_url)
    try:
        source.ping()
    except redis.RedisError as exc:
        print(f"ferricctl: cannot reach Redis at {args.redis_url}: {exc}", file=sys.stderr)
        return 1
    key_prefix = FLASK_SESSION_KEY_PREFIX if args.key_prefix is None else args.key_prefix
    prefix = Defaults.prefix if args.prefix is None else args.prefix
    with Client(args.run_dir, timeout_ms=args.timeout_ms) as client:
        summary = import_flask_sessions(source, client, key_prefix, prefix, ProgressBar())
    print(summary)
    return 0
