"""Startup: rebuild a shard's key directory from its snapshot, hint files, or data files, and repair a torn tail.

Order of preference, cheapest first:
1. ``keydir.snapshot`` left by a clean close, if it matches the files on disk exactly and
   holds a table a shard could have made (index.check_table);
2. per file, a valid hint file (fixed-size entries, no hashing, no CRC per record);
3. a scan of the data file, which also writes the missing hint for next time.

Files are applied oldest first and every entry carries its record's seq, so
the newest write of a key wins whatever order the sources come in.
"""

import logging
import os
import time
from dataclasses import dataclass, fields

from ferric_ipc.keys import key_hash64
from ferricd.storage.atomic_files import fsync_directory
from ferricd.storage.datafiles import DATA_SUFFIX, HINT_SUFFIX, data_path, hint_path, list_data_file_ids
from ferricd.storage.errors import CorruptDataError
from ferricd.storage.hints import HintBuilder, read_hint
from ferricd.storage.index import ShardIndex, capacity_for, check_table
from ferricd.storage.keydir import KeyDirectory
from ferricd.storage.records import RecordScanner
from ferricd.storage.snapshot import discard_snapshot, read_snapshot

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    """What opening a shard directory found and did."""

    directory: str
    files: int = 0  # data files in use after recovery
    records: int = 0  # records (hint entries or scanned records) applied
    keys: int = 0  # live keys in the key directory afterwards
    from_snapshot: bool = False  # the clean-close snapshot was used
    hint_files_used: int = 0
    files_scanned: int = 0
    invalid_hints: int = 0  # hint files rejected (CRC, size) and replaced by a scan
    truncated_bytes: int = 0  # torn tail cut off the last data file
    corrupt_records: int = 0  # damaged spans skipped inside data files
    corrupt_bytes: int = 0
    removed_empty_files: int = 0
    next_seq: int = 1
    elapsed_ms: float = 0.0

    def __str__(self):
        lines = [f"recovery of {self.directory}:"]
        lines += [f"  {f.name:<20} {getattr(self, f.name)}" for f in fields(self) if f.name != "directory"]
        return "\n".join(lines)


def recover(directory, files, now_ms, epoch=0, file_mode=0o640, tables=None):
    """Open every data file of ``directory`` into ``files`` and rebuild the key directory.

    Returns ``(KeyDirectory, RecoveryReport)``; ``report.next_seq`` is the seq
    the next write must use. The caller holds the directory lock. ``tables``
    is where index buffers come from (see ShardIndex).
    """
    started = time.perf_counter()
    report = RecoveryReport(directory)
    _remove_temp_files(directory)
    ids = list_data_file_ids(directory)
    keydir = _from_snapshot(directory, ids, files, epoch, tables, report)
    if keydir is None:
        keydir = _rebuild(directory, ids, files, now_ms, epoch, file_mode, tables, report)
        # Damaged records met while loading (an old version whose seq cannot be trusted, a
        # damaged key) belong to this report, not to the store's read counters.
        report.corrupt_records += keydir.corrupt_dropped
        keydir.corrupt_dropped = 0
    report.files = len(files.closed_ids())
    report.keys = len(keydir)
    report.elapsed_ms = (time.perf_counter() - started) * 1000
    log.info("%s: %d keys from %d files in %.1f ms", directory, report.keys, report.files, report.elapsed_ms)
    return keydir, report


def _from_snapshot(directory, ids, files, epoch, tables, report):
    try:
        snapshot = read_snapshot(directory)
    except FileNotFoundError:
        return None
    except (CorruptDataError, OSError) as exc:
        log.warning("ignoring key directory snapshot: %s", exc)
        discard_snapshot(directory)
        return None
    actual = {file_id: os.path.getsize(data_path(directory, file_id)) for file_id in ids}
    if actual != snapshot.file_sizes:
        log.warning("ignoring key directory snapshot: the data files changed after it was written")
        discard_snapshot(directory)
        return None
    try:
        check_table(snapshot.index_buffer, actual)
    except CorruptDataError as exc:
        log.error("ignoring key directory snapshot, rebuilding from the data files: %s", exc)
        discard_snapshot(directory)
        return None
    for file_id in ids:
        files.open_closed(file_id)
    index = ShardIndex.load(snapshot.index_buffer, epoch, tables)
    # Gone before the first write, so a crash later can never load it as current.
    discard_snapshot(directory)
    report.from_snapshot = True
    report.records = index.count
    report.next_seq = snapshot.next_seq
    return KeyDirectory(index, files, snapshot.live_bytes)


def _rebuild(directory, ids, files, now_ms, epoch, file_mode, tables, report):
    keydir = KeyDirectory(ShardIndex.create(epoch=epoch, tables=tables), files)
    for file_id in ids:
        files.open_closed(file_id)
        if files.sizes[file_id] == 0:  # created by a shard that crashed before its first write
            files.remove(file_id)
            report.removed_empty_files += 1
    ids = files.closed_ids()
    hints = {file_id: _valid_hint(directory, file_id, files.sizes[file_id], report) for file_id in ids}
    # Grow the table once for every hinted entry, not once per file (each growth rehashes it all).
    keydir.index.reserve(sum(hint.count for hint in hints.values() if hint is not None))
    for position, file_id in enumerate(ids):
        hint = hints.pop(file_id)  # release each hint's bytes once applied
        if hint is not None:
            keydir.load_file(file_id, hint.entries(), now_ms)
            report.hint_files_used += 1
            report.records += hint.count
            report.next_seq = max(report.next_seq, hint.max_seq + 1)
        else:
            _scan(directory, file_id, keydir, now_ms, file_mode, report, is_last=position == len(ids) - 1)
    keydir.drop_expired_at_load(now_ms)
    index = keydir.index
    if index.capacity > 2 * capacity_for(index.count):  # many overwrites: give the memory back
        index.rebuild(capacity_for(index.count))
    return keydir


def _valid_hint(directory, file_id, size, report):
    """The file's hint if it can be trusted, else None (the file will be scanned)."""
    try:
        return read_hint(hint_path(directory, file_id), size)
    except FileNotFoundError:
        return None
    except (CorruptDataError, OSError) as exc:
        log.warning("scanning data file instead of its hint: %s", exc)
        report.invalid_hints += 1
        return None


def _scan(directory, file_id, keydir, now_ms, file_mode, report, is_last):
    path = data_path(directory, file_id)
    view = keydir.files.view(file_id)
    scanner = RecordScanner(view, path)
    hint = HintBuilder()

    def entries():
        for rec in scanner:
            entry = (key_hash64(rec.key), rec.seq, rec.expire_at_ms, rec.offset, rec.record_len, rec.flags)
            hint.add(*entry)
            yield entry

    keydir.load_file(file_id, entries(), now_ms)
    view.release()
    report.files_scanned += 1
    report.records += hint.count
    report.corrupt_records += scanner.corrupt_records
    report.corrupt_bytes += scanner.corrupt_bytes
    report.next_seq = max(report.next_seq, hint.max_seq + 1)
    tail = keydir.files.sizes[file_id] - scanner.valid_end
    if tail and is_last:
        # The file a crashed shard was appending to: the tail is a write that never completed.
        log.warning("%s: truncating a torn tail of %d bytes at offset %d", path, tail, scanner.valid_end)
        keydir.files.truncate(file_id, scanner.valid_end)
        report.truncated_bytes += tail
    elif tail:
        log.error("%s: %d damaged bytes at the end of a closed file; left in place", path, tail)
        report.corrupt_records += 1
        report.corrupt_bytes += tail
    try:
        hint.write(hint_path(directory, file_id), keydir.files.sizes[file_id], file_mode)
    except OSError as exc:  # startup still succeeds; the next one scans again
        log.warning("could not write hint for %s: %s", path, exc)


def _remove_temp_files(directory):
    """Remove unfinished atomic writes (``*.tmp``: merge outputs, hints) and hints whose data file is gone."""
    removed = False
    names = set(os.listdir(directory))
    for name in names:
        stem, suffix = os.path.splitext(name)
        # A hint left without its data file (a crash while files were removed) could be taken for a later file's.
        if suffix == ".tmp" or (suffix == HINT_SUFFIX and f"{stem}{DATA_SUFFIX}" not in names):
            os.unlink(os.path.join(directory, name))
            removed = True
    if removed:
        fsync_directory(directory)
