"""ferricctl: talk to a running ferricd (ping, get, set, del, ttl, keys, delete-prefix, info, compact) or check a stopped data directory."""

import argparse
import os
import sys

from ferric_ipc.client import RUN_DIR_ENV, Client
from ferric_ipc.errors import FerricError
from ferricd.compact import compact
from ferricd.storage.check import check_shard, shard_directories

INFO_COLUMNS = [  # (field, heading, format)
    ("shard", "shard", "{}"),
    ("pid", "pid", "{}"),
    ("keys", "keys", "{:,}"),
    ("live_bytes", "live", "{:,}"),
    ("dead_bytes", "dead", "{:,}"),
    ("files", "files", "{}"),
    ("puts", "puts", "{:,}"),
    ("gets", "gets", "{:,}"),
    ("hits", "hits", "{:,}"),
    ("misses", "misses", "{:,}"),
    ("rss_bytes", "rss", "{:,}"),
    ("cpu_seconds", "cpu s", "{:.2f}"),
    ("open_files", "fds", "{}"),
    ("uptime_s", "up s", "{}"),
]


def format_info(shards):
    """A readable table of ``Client.info()``: one row per shard, then totals."""
    rows = [[fmt.format(shard.get(name, "")) for name, _, fmt in INFO_COLUMNS] for shard in shards]
    total = {name: sum(s.get(name, 0) for s in shards) for name, _, _ in INFO_COLUMNS[2:11]}
    rows.append(["all", ""] + [fmt.format(total[name]) for name, _, fmt in INFO_COLUMNS[2:11]] + ["", "", ""])
    header = [heading for _, heading, _ in INFO_COLUMNS]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in [header, *rows])


def _show(value):
    if value is None:
        return "(nil)"
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return repr(value)


def run(args, client):
    command = args.command
    if command == "ping":
        client.ping()
        return f"pong ({client.shard_count} shards)"
    if command == "get":
        return _show(client.get(args.key))
    if command == "set":
        return "OK" if client.set(args.key, args.value, ttl_ms=args.ttl_ms) else "not set"
    if command == "del":
        return str(client.delete(*args.keys))
    if command == "ttl":
        return str(client.ttl(args.key))
    if command == "pttl":
        return str(client.pttl(args.key))
    if command == "keys":
        return "\n".join(_show(key) for key in sorted(client.scan_iter(args.prefix)))
    if command == "delete-prefix":
        return str(client.delete_prefix(args.prefix))
    if command == "info":
        return format_info(client.info())
    raise AssertionError(command)


def check(data_dir):
    """Verify every shard directory of a stopped daemon; returns the exit code (0 clean, 1 damage)."""
    if not os.path.isdir(data_dir):
        print(f"ferricctl: {data_dir} is not a directory", file=sys.stderr)
        return 2
    directories = shard_directories(data_dir) or [data_dir]
    damaged = False
    for directory in directories:
        report = check_shard(directory)
        print(report)
        damaged |= not report.ok
    return 1 if damaged else 0


def import_flask_session(args):
    """Run ferric_flask's importer, loaded only here: no other command needs Flask or redis-py."""
    try:
        from ferric_flask import migrate
    except ImportError as exc:
        print(f"ferricctl: import-flask-session needs Flask and redis-py ({exc}); "
              "install them: pip install 'ferricstore[flask]' redis", file=sys.stderr)
        return 2
    return migrate.main(args)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ferricctl", description="Control and inspect ferricd")
    parser.add_argument("--run-dir", help=f"ferricd's run directory (default ${RUN_DIR_ENV} or ./ferric-run)")
    parser.add_argument("--timeout-ms", type=int, default=2000)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ping", help="check that every shard answers")
    sub.add_parser("get", help="print a value").add_argument("key")
    setter = sub.add_parser("set", help="set a value")
    setter.add_argument("key")
    setter.add_argument("value")
    setter.add_argument("--ttl-ms", type=int)
    sub.add_parser("del", help="delete keys, print how many existed").add_argument("keys", nargs="+")
    sub.add_parser("ttl", help="seconds until a key expires (-1 never, -2 missing)").add_argument("key")
    sub.add_parser("pttl", help="milliseconds until a key expires (-1 never, -2 missing)").add_argument("key")
    sub.add_parser("keys", help="list keys with a prefix").add_argument("prefix")
    sub.add_parser("delete-prefix", help="delete every key with a prefix").add_argument("prefix")
    sub.add_parser("info", help="per-shard statistics")
    compacter = sub.add_parser("compact", help="merge data files now: reclaim overwritten, deleted and expired records")
    compacter.add_argument("--shard", type=int, help="only this shard (default: every shard, one after another)")
    sub.add_parser("check", help="verify a stopped data directory").add_argument("data_dir")
    importer = sub.add_parser("import-flask-session", help="copy Flask-Session 0.6-0.8 sessions from Redis")
    importer.add_argument("--redis-url", required=True, help="where Flask-Session stored them, e.g. redis://localhost")
    importer.add_argument("--key-prefix", help="Flask-Session's SESSION_KEY_PREFIX (default session:)")
    importer.add_argument("--prefix", help="ferric_flask's FERRIC_SESSION_PREFIX (default sess:)")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return check(args.data_dir)
        if args.command == "import-flask-session":
            return import_flask_session(args)
        if args.command == "compact":
            with Client(args.run_dir, timeout_ms=args.timeout_ms) as client:
                return compact(client, args.shard)
        with Client(args.run_dir, timeout_ms=args.timeout_ms) as client:
            print(run(args, client))
        return 0
    except FerricError as exc:
        print(f"ferricctl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
