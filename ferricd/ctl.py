"""ferricctl: talk to a running ferricd (ping, get, set, del, ttl, keys, delete-prefix, info, monitor, compact) or check a stopped data directory."""

import argparse
import json
import os
import signal
import sys
import time
from importlib import metadata

from ferric_ipc import native
from ferric_ipc.client import RUN_DIR_ENV, Client
from ferric_ipc.errors import FerricConnectionError, FerricError, FerricTimeoutError
from ferric_ipc.protocol import MAX_TTL_MS
from ferricd.commands import INFO_CLASSIFIED, INFO_EXPIRY_SLOTS
from ferricd.compact import compact
from ferricd.key_text import KeyTextError, parse_key, render_key
from ferricd.storage.check import check_shard, shard_directories

#: Exit codes, as scripts see them (also in --help).
EXIT_OK = 0
EXIT_NOT_FOUND = 1  # get: no such key; check: damage found
EXIT_USAGE = 2  # bad arguments (argparse's own code too)
EXIT_UNREACHABLE = 3  # no ferricd at the run directory, or it did not answer in time
EXIT_REFUSED = 4  # ferricd answered with an error (bad request, limit, storage failure)

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}  success
  {EXIT_NOT_FOUND}  get: the key does not exist (nothing is printed); check: damage was found
  {EXIT_USAGE}  bad arguments
  {EXIT_UNREACHABLE}  ferricd is not running at the run directory, or did not answer within --timeout-ms
  {EXIT_REFUSED}  ferricd refused the request (the message says why)

keys and values: printable UTF-8 is shown as itself; a backslash is shown as \\\\ and any other byte
as \\xNN. Arguments accept the same escapes, so every key ferricctl prints can be pasted back."""


def human_bytes(count):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def human_seconds(seconds):
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172_800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86_400} d"


def _share(part, whole):
    return f"{100 * part / whole:.0f}%" if whole else "-"


INFO_COLUMNS = [  # (heading, cell of one shard's info dict); totals add the numeric fields
    ("shard", lambda s: str(s["shard"])),
    ("pid", lambda s: str(s.get("pid", ""))),
    ("keys", lambda s: f"{'~' if s.get('keys_estimated') else ''}{s.get('keys', 0):,}"),
    ("live", lambda s: human_bytes(s.get("live_bytes", 0))),
    ("dead", lambda s: human_bytes(s.get("dead_bytes", 0))),
    ("dead %", lambda s: _share(s.get("dead_bytes", 0), s.get("data_bytes", 0))),
    ("files", lambda s: str(s.get("files", 0))),
    ("requests", lambda s: f"{s.get('requests', 0):,}"),
    ("hit %", lambda s: _share(s.get("hits", 0), s.get("gets", 0))),
    ("rss", lambda s: human_bytes(s.get("rss_bytes", 0))),
    ("cpu", lambda s: f"{s.get('cpu_seconds', 0):.1f} s"),
    ("fds", lambda s: str(s.get("open_files", ""))),
    ("up", lambda s: human_seconds(s.get("uptime_s", 0))),
]
_SUMMED = ("keys", "live_bytes", "dead_bytes", "data_bytes", "files", "requests", "hits", "gets", "rss_bytes",
           "cpu_seconds")


def format_table(header, rows):
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in [header, *rows])


KEYSPACE_COLUMNS = [  # (heading, cell of one keyspace's row in a shard's info)
    ("keys", lambda k: f"{k['keys']:,}"),
    ("bytes", lambda k: human_bytes(k["bytes"])),
    ("max", lambda k: human_bytes(k["max_bytes"]) if k["max_bytes"] else "-"),
    ("evictions", lambda k: f"{k['evictions']:,}"),
]


def format_keyspaces(shards):
    """One row per shard and keyspace: what each keyspace holds there, its share of max_bytes, its evictions."""
    rows = [[str(shard["shard"]), name, *(cell(row) for _, cell in KEYSPACE_COLUMNS)]
            for shard in shards for name, row in shard.get("keyspaces", {}).items()]
    for row, estimated in zip(rows, (shard.get("keyspaces_estimated") for shard in shards
                                     for _ in shard.get("keyspaces", {}))):
        if estimated:
            row[2] = "~" + row[2]
    return format_table(["shard", "keyspace", *(heading for heading, _ in KEYSPACE_COLUMNS)], rows)


def format_info(shards, local_reads):
    """A readable table of ``Client.info()``: per shard, totals, per keyspace, then what the numbers count."""
    rows = [[cell(shard) for _, cell in INFO_COLUMNS] for shard in shards]
    total = {name: sum(shard.get(name, 0) for shard in shards) for name in _SUMMED}
    total["keys_estimated"] = any(shard.get("keys_estimated") for shard in shards)
    total_row = [cell({"shard": "all", "pid": "", **total}) for _, cell in INFO_COLUMNS]
    total_row[-2:] = ["", ""]
    rows.append(total_row)
    notes = [
        "keys: live keys; expired keys are left out, also those the expiry sweep has not removed yet "
        "(expired_unswept in --json); ~ marks an estimate, made when a shard's key directory has more than "
        f"{INFO_EXPIRY_SLOTS:,} slots, from a sample of that many; live: bytes of the live keys' records; dead: "
        "bytes of overwritten, deleted and expired records, which a merge reclaims (ferricctl compact).",
        "requests: requests the shard served since it started; hit %: of the gets it served (local reads "
        "never reach it).",
        "keyspace keys and bytes: live keys again, bytes of whole records (header, key, value); ~ marks an "
        f"estimate (also made when over {INFO_CLASSIFIED:,} expired keys wait: that many are sorted into "
        "keyspaces); max: the shard's share of the keyspace's max_bytes.",
        f"local reads in this client: {local_reads}",
    ]
    problems = [f"shard {shard['shard']}: {shard[field]}; free space in the run directory: the shard puts it "
                "back there by itself" for shard in shards for field in ("index_file_error", "access_file_error")
                if shard.get(field)]
    return "\n\n".join([*(["PROBLEMS\n" + "\n".join(problems)] if problems else []),
                        format_table([heading for heading, _ in INFO_COLUMNS], rows), format_keyspaces(shards),
                        "\n".join(notes)])


def local_reads_mode():
    """How a client on this machine reads keys without a round trip."""
    reason = native.absent_reason()
    if reason is None:
        return "C extension (ferric_ipc._localread)"
    return f"pure Python, 3-4x slower per read ({reason})"


def run(args, client, out):
    """Run one client command; returns the exit code."""
    command = args.command
    if command == "ping":
        client.ping()
        print(f"pong ({client.shard_count} {'shard' if client.shard_count == 1 else 'shards'})", file=out)
    elif command == "get":
        value = client.get(args.key)
        if value is None:
            print(f"ferricctl: no such key: {render_key(args.key)}", file=sys.stderr)
            return EXIT_NOT_FOUND
        if args.raw:
            out.flush()
            sys.stdout.buffer.write(value)
        else:
            print(render_key(value), file=out)
    elif command == "set":
        print("OK" if client.set(args.key, args.value, ttl_ms=args.ttl_ms) else "not set", file=out)
    elif command == "del":
        print(client.delete(*args.keys), file=out)
    elif command == "ttl":
        print(client.ttl(args.key), file=out)
    elif command == "pttl":
        print(client.pttl(args.key), file=out)
    elif command == "keys":
        for key in sorted(client.scan_iter(args.prefix)):
            print(render_key(key), file=out)
    elif command == "delete-prefix":
        print(client.delete_prefix(args.prefix), file=out)
    elif command == "info":
        shards = client.info()
        if args.json:
            print(json.dumps({"shards": shards, "local_reads": local_reads_mode()}, indent=2), file=out)
        else:
            print(format_info(shards, local_reads_mode()), file=out)
    elif command == "monitor":
        monitor(client, args.interval, args.count, out)
    else:
        raise AssertionError(command)
    return EXIT_OK


def monitor(client, interval_s, count, out):
    """Refresh per-shard ops/s, hit rate and ping latency (p50/p99) every ``interval_s``, like redis-cli --stat."""
    clear = "\x1b[H\x1b[2J" if out.isatty() else ""
    before, before_at = client.info(), time.monotonic()
    frames = 0
    while count is None or frames < count:
        latencies = {shard: [] for shard in range(client.shard_count)}
        deadline = time.monotonic() + interval_s
        while time.monotonic() < deadline:  # sample each shard's round trip for the whole interval
            for shard in latencies:
                started = time.perf_counter()
                client.ping(shard=shard)
                latencies[shard].append((time.perf_counter() - started) * 1000)
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
        after, after_at = client.info(), time.monotonic()
        elapsed_s = after_at - before_at
        rows = []
        for old, new in zip(before, after):
            shard = new["shard"]
            samples = sorted(latencies[shard])
            restarted = old.get("pid") != new.get("pid")
            served = new["requests"] - (0 if restarted else old["requests"]) - 1  # less our own info request
            gets = new.get("gets", 0) - (0 if restarted else old.get("gets", 0))
            hits = new.get("hits", 0) - (0 if restarted else old.get("hits", 0))
            rows.append([
                str(shard), f"{max(0, served - len(samples)) / elapsed_s:,.0f}", _share(hits, gets),
                f"{samples[len(samples) // 2]:.2f}", f"{samples[min(len(samples) - 1, len(samples) * 99 // 100)]:.2f}",
                f"{new.get('keys', 0):,}", human_bytes(new.get("live_bytes", 0)),
            ])
        header = ["shard", "ops/s", "hit %", "p50 ms", "p99 ms", "keys", "live"]
        stamp = time.strftime("%H:%M:%S")
        print(f"{clear}{stamp}  every {interval_s:g} s; ops/s leaves out this monitor's pings; "
              "latency is a ping's round trip", file=out)
        print(format_table(header, rows), file=out, flush=True)
        before, before_at = after, after_at
        frames += 1


def check(data_dir, out):
    """Verify every shard directory of a stopped daemon; returns the exit code."""
    if not os.path.isdir(data_dir):
        print(f"ferricctl: {data_dir} is not a directory; give the data directory of a stopped ferricd",
              file=sys.stderr)
        return EXIT_USAGE
    directories = shard_directories(data_dir) or [data_dir]
    damaged = False
    for directory in directories:
        report = check_shard(directory)
        print(report, file=out)
        damaged |= not report.ok
    print("\nrecords: records in the data files, tombstones (deletes) included; keys: distinct keys among them, "
          "live or not; corrupt: damaged spans that valid records follow; torn tail: bytes the next start "
          "truncates from the last file.", file=out)
    return EXIT_NOT_FOUND if damaged else EXIT_OK


def import_flask_session(args):
    """Run ferric_flask's importer, loaded only here: no other command needs Flask or redis-py."""
    try:
        from ferric_flask import migrate
    except ImportError as exc:
        print(f"ferricctl: import-flask-session needs Flask and redis-py ({exc}); "
              "install them: pip install 'ferricstore[flask]' redis", file=sys.stderr)
        return EXIT_USAGE
    return migrate.main(args)


def _key_argument(text):
    try:
        return parse_key(text)
    except KeyTextError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _number_argument(parse, what, low, high, unit=""):
    """An argparse type: ``parse`` the text (int or float), refusing anything outside [low, high] in one line."""
    def convert(text):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{_plain(value)}{unit} is outside {_plain(low)} to {_plain(high)}{unit}")
        return value
    return convert


def _plain(number):
    return f"{number:g}" if isinstance(number, float) else str(number)


_ttl_ms = _number_argument(lambda text: int(text, 10), "a whole number of milliseconds", 1, MAX_TTL_MS, " ms")
_timeout_ms = _number_argument(lambda text: int(text, 10), "a whole number of milliseconds", 1, 3_600_000, " ms")
_positive_seconds = _number_argument(float, "a number of seconds", 0.05, 3600, " s")
_count = _number_argument(lambda text: int(text, 10), "a whole number", 1, 10**9)


def version():
    try:
        return metadata.version("ferricstore")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="ferricctl", description="Control and inspect ferricd.", epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ferricctl {version()}")
    parser.add_argument("--run-dir", help=f"ferricd's run directory (default ${RUN_DIR_ENV}, else ./ferric-run)")
    parser.add_argument("--timeout-ms", type=_timeout_ms, default=2000,
                        help="longest wait for each shard's answer, in ms (default 2000)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    sub.add_parser("ping", help="check that every shard answers")
    getter = sub.add_parser("get", help="print a value (exit code 1 if the key does not exist)")
    getter.add_argument("key", type=_key_argument, help="the key (escapes as printed by keys)")
    getter.add_argument("--raw", action="store_true", help="write the value's bytes as they are, no newline")
    setter = sub.add_parser("set", help="set a value")
    setter.add_argument("key", type=_key_argument, help="the key")
    setter.add_argument("value", type=_key_argument, help="the value (the same escapes as keys)")
    setter.add_argument("--ttl-ms", type=_ttl_ms, help="expire the key after this many milliseconds")
    deleter = sub.add_parser("del", help="delete keys, print how many existed")
    deleter.add_argument("keys", nargs="+", type=_key_argument, help="the keys")
    sub.add_parser("ttl", help="seconds until a key expires (-1 never, -2 missing)").add_argument(
        "key", type=_key_argument, help="the key")
    sub.add_parser("pttl", help="milliseconds until a key expires (-1 never, -2 missing)").add_argument(
        "key", type=_key_argument, help="the key")
    sub.add_parser("keys", help="list keys, sorted (all of them, or those with a prefix)").add_argument(
        "prefix", nargs="?", default=b"", type=_key_argument, help="only keys starting with this")
    sub.add_parser("delete-prefix", help="delete every key with a prefix, print how many").add_argument(
        "prefix", type=_key_argument, help="the prefix (an empty one, '', deletes everything)")
    info = sub.add_parser("info", help="per-shard statistics (live keys: expired ones left out), with what "
                                       "each number counts")
    info.add_argument("--json", action="store_true",
                      help="print the statistics as JSON, for scripts: the same counts (keys, live_bytes, "
                           "keyspaces: live keys only; expired_unswept: expired keys not yet removed; "
                           "keys_estimated, keyspaces_estimated: true when those counts come from a sample)")
    watcher = sub.add_parser("monitor", help="refresh per-shard ops/s, hit rate and latency, like redis-cli --stat")
    watcher.add_argument("--interval", type=_positive_seconds, default=1.0, help="seconds between refreshes (default 1)")
    watcher.add_argument("--count", type=_count, help="stop after this many refreshes (default: until Ctrl-C)")
    compacter = sub.add_parser("compact", help="merge data files now: reclaim overwritten, deleted and expired records")
    compacter.add_argument("--shard", type=int, help="only this shard (default: every shard, one after another)")
    sub.add_parser("check", help="verify a stopped data directory (exit code 1 if damaged)").add_argument(
        "data_dir", help="the daemon's data directory")
    importer = sub.add_parser("import-flask-session", help="copy Flask-Session 0.6-0.8 sessions from Redis")
    importer.add_argument("--redis-url", required=True, help="where Flask-Session stored them, e.g. redis://localhost")
    importer.add_argument("--key-prefix", help="Flask-Session's SESSION_KEY_PREFIX (default session:)")
    importer.add_argument("--prefix", help="ferric_flask's FERRIC_SESSION_PREFIX (default sess:)")
    return parser


def main(argv=None):
    # A closed pipe (ferricctl keys | head -1) ends ferricctl quietly, as it ends any Unix tool.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    out = sys.stdout
    try:
        if args.command == "check":
            return check(args.data_dir, out)
        if args.command == "import-flask-session":
            return import_flask_session(args)
        with Client(args.run_dir, timeout_ms=args.timeout_ms) as client:
            if args.command == "compact":
                return compact(client, args.shard)
            return run(args, client, out)
    except (FerricConnectionError, FerricTimeoutError) as exc:
        print(f"ferricctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except FerricError as exc:
        print(f"ferricctl: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
