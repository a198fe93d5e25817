"""ferricctl compact: merge shards one after another, with a progress bar (bytes copied of total) and a summary."""

import sys
import time

POLL_S = 0.1
BAR_WIDTH = 30


class MergeLost(Exception):
    """The shard stopped knowing about the merge it was asked for (it restarted meanwhile)."""


def compact(client, shard=None, out=sys.stdout):
    """Merge ``shard`` (default: every shard, in turn); returns the exit code (0, or 1 if a merge failed)."""
    shards = range(client.shard_count) if shard is None else [shard]
    if shard is not None and not 0 <= shard < client.shard_count:
        print(f"ferricctl: there is no shard {shard}; this daemon has shards 0 to {client.shard_count - 1}",
              file=sys.stderr)
        return 2
    live = out.isatty()
    summaries, failed = [], False
    for shard_id in shards:
        try:
            summary = _merge_one(client, shard_id, out if live else None)
        except MergeLost as exc:
            print(f"shard {shard_id}: {exc}", file=out)
            failed = True
            continue
        summaries.append(summary)
        print(f"shard {shard_id}: {format_summary(summary)}", file=out)
        failed |= summary["state"] != "done"
    if len(summaries) > 1:
        total = {name: sum(s[name] for s in summaries)
                 for name in ("files_before", "files_after", "bytes_before", "bytes_after", "elapsed_ms")}
        total["state"], total["error"] = "done", None
        print(f"all:     {format_summary(total)}", file=out)
    return 1 if failed else 0


def _merge_one(client, shard_id, bar_out):
    """Start a merge on ``shard_id`` and follow it to its end; returns its summary."""
    status = client._call(shard_id, "merge", [])
    merge_id = status["merge_id"]
    while True:
        last = status.get("last")
        if last is not None and last["merge_id"] >= merge_id:
            if bar_out is not None:
                _draw(bar_out, shard_id, 1, 1)
                bar_out.write("\n")
            return last
        if status["state"] == "idle":
            raise MergeLost("the shard restarted during the merge; run ferricctl compact again")
        if bar_out is not None and status["state"] == "merging":
            _draw(bar_out, shard_id, status["bytes_copied"], status["bytes_total"])
        time.sleep(POLL_S)
        status = client._call(shard_id, "merge_status", [])


def _draw(out, shard_id, done, total):
    share = min(1.0, done / total) if total else 1.0
    filled = int(share * BAR_WIDTH)
    out.write(f"\rshard {shard_id} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:4.0%} "
              f"{_mib(min(done, total))}/{_mib(total)}")
    out.flush()


def format_summary(summary):
    """``12 files, 41.6 MiB -> 1 file, 1.0 MiB (40.6 MiB freed) in 0.8 s``, plus the state if not done."""
    freed = summary["bytes_before"] - summary["bytes_after"]
    text = (f"{_files(summary['files_before'])}, {_mib(summary['bytes_before'])} -> "
            f"{_files(summary['files_after'])}, {_mib(summary['bytes_after'])} "
            f"({_mib(max(freed, 0))} freed) in {summary['elapsed_ms'] / 1000:.1f} s")
    if summary["state"] != "done":
        text += f"; {summary['state']}: {summary['error']}"
    return text


def _files(count):
    return f"{count} file" if count == 1 else f"{count} files"


def _mib(nbytes):
    return f"{nbytes / 2**20:.1f} MiB"
