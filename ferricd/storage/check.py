"""Read-only verification of a stopped shard directory: every record's CRC, every hint, the snapshot."""

import os
from dataclasses import dataclass, field, fields

from ferricd.storage.datafiles import data_path, hint_path, list_data_file_ids
from ferricd.storage.errors import CorruptDataError
from ferricd.storage.hints import read_hint
from ferricd.storage.lock import DirectoryLock
from ferricd.storage.records import FLAG_TOMBSTONE, RecordScanner
from ferricd.storage.snapshot import read_snapshot


@dataclass
class CheckReport:
    """What ``check_shard`` found; ``ok`` when nothing is damaged."""

    directory: str
    files: int = 0
    records: int = 0
    tombstones: int = 0
    keys: int = 0  # distinct keys seen in the records (live or not)
    corrupt_records: int = 0
    corrupt_bytes: int = 0
    torn_tail_bytes: int = 0  # in the last file: what the next start truncates
    hints_valid: int = 0
    hints_missing: int = 0
    hints_invalid: int = 0
    snapshot: str = "absent"  # absent | valid | invalid: <reason>
    problems: list = field(default_factory=list)

    @property
    def ok(self):
        return not self.problems

    def __str__(self):
        lines = [f"{self.directory}: {'ok' if self.ok else 'DAMAGED'}"]
        lines += [
            f"  {f.name:<16} {getattr(self, f.name)}" for f in fields(self) if f.name not in ("directory", "problems")
        ]
        lines += [f"  problem: {problem}" for problem in self.problems]
        return "\n".join(lines)


def check_shard(directory) -> CheckReport:
    """Verify ``directory`` without changing it. Raises DirectoryLockedError if a shard has it open."""
    report = CheckReport(directory)
    lock = DirectoryLock(directory)
    try:
        ids = list_data_file_ids(directory)
        keys = set()
        for position, file_id in enumerate(ids):
            _check_file(directory, file_id, position == len(ids) - 1, keys, report)
        report.files = len(ids)
        report.keys = len(keys)
        _check_snapshot(directory, report)
    finally:
        lock.release()
    return report


def _check_file(directory, file_id, is_last, keys, report):
    path = data_path(directory, file_id)
    with open(path, "rb") as f:
        data = f.read()
    scanner = RecordScanner(data, path)
    for record in scanner:
        report.records += 1
        report.tombstones += bool(record.flags & FLAG_TOMBSTONE)
        keys.add(record.key)
    report.corrupt_records += scanner.corrupt_records
    report.corrupt_bytes += scanner.corrupt_bytes
    if scanner.corrupt_records:
        report.problems.append(f"{path}: {scanner.corrupt_records} damaged span(s), {scanner.corrupt_bytes} bytes")
    tail = len(data) - scanner.valid_end
    if tail and is_last:
        report.torn_tail_bytes = tail  # an interrupted write: the next start cuts it off, nothing acknowledged is lost
    elif tail:
        report.corrupt_records += 1
        report.corrupt_bytes += tail
        report.problems.append(f"{path}: {tail} damaged bytes at the end of a closed file")
    try:
        read_hint(hint_path(directory, file_id), len(data))
        report.hints_valid += 1
    except FileNotFoundError:
        report.hints_missing += 1  # normal for the file that was being written; the next start writes it
    except (CorruptDataError, OSError) as exc:
        report.hints_invalid += 1
        report.problems.append(f"hint: {exc} (the next start rescans the data file and rewrites it)")


def _check_snapshot(directory, report):
    try:
        read_snapshot(directory)
        report.snapshot = "valid"
    except FileNotFoundError:
        pass
    except (CorruptDataError, OSError) as exc:
        report.snapshot = f"invalid: {exc}"


def shard_directories(data_dir):
    """The ``shard-K`` directories of a data directory, in shard order."""
    names = [n for n in os.listdir(data_dir) if n.startswith("shard-") and n[6:].isdigit()]
    return [os.path.join(data_dir, n) for n in sorted(names, key=lambda n: int(n[6:]))]
