"""Merge: copy a shard's live records into new files, switch the key directory to them, delete the old files.

A merge takes every closed data file as input; the engine closes the active
file first, so everything written before the merge began is covered. Outputs
get file ids above every input, and each time the merge opens an output the
engine closes its active file again, so writes made while the merge runs land
in files with higher ids than any output. Per key, file order therefore stays
write order, which is what recovery relies on (docs/storage.md, "Merge").

Because the inputs are every file older than the outputs (Bitcask calls this a
"prefix" merge), nothing older than an input survives the merge, and so:

- tombstones are dropped: the values they hide are in inputs too, deleted with them;
- expired records and TTL-only records are dropped: a TTL change is folded
  into the copy of its value (the copy carries the key directory's current
  ``expire_at_ms``);
- inputs are deleted oldest first, so a crash part-way through deleting them
  never leaves an old value without the newer record that hid it.

The work runs in slices (``step``) of bounded time between requests; each
64 KiB of output is fdatasynced within a slice. What blocks for longer (the
last fdatasync of an output, its hint, the directory fsyncs, unlinks) runs in
a worker thread that touches only the merge's own files; the GIL is released
inside each of those system calls. A crash at any point leaves either a
``*.tmp`` output (removed at the next start) or complete outputs whose records
duplicate input records with the same ``seq`` (either copy may serve).

Clients map data files, so a file is never truncated or rewritten in place:
outputs are complete before they get their final name, and inputs are only
unlinked once no key directory entry points into them. The hand-over rule for
mapped readers is in docs/storage.md.
"""

import logging
import os
import threading
import time
import zlib
from array import array

from ferric_ipc.keys import key_hash64
from ferricd.storage.atomic_files import fsync_directory
from ferricd.storage.datafiles import data_path, hint_path
from ferricd.storage.errors import CorruptDataError
from ferricd.storage.hints import HintBuilder, read_hint
from ferricd.storage.merge_points import MergePoints
from ferricd.storage.records import (
    FLAG_BATCH_MORE,
    FLAG_TOMBSTONE,
    FLAG_TTL_ONLY,
    HEADER,
    HEADER_BYTES,
    RECORD_CHECKED,
    RECORD_CRC,
    RecordScanner,
    decode,
    encode,
)

log = logging.getLogger(__name__)

COPYING = "copying"
FINISHING = "finishing"  # an output is being fsynced, renamed and hinted in the worker thread
SWITCHING = "switching"
RETIRING = "retiring"  # inputs are being deleted in the worker thread
DONE = "done"
ABORTED = "aborted"

_FLUSH_BYTES = 64 << 10  # write an output's pending bytes once this many are buffered
_SYNC_BYTES = 64 << 10  # fdatasync an output each time this many more bytes were written to it
_PART_BYTES = 64 << 10  # a larger record is copied this much at a time, so one slice stays short
_SKIPPED_FLAGS = FLAG_TOMBSTONE | FLAG_TTL_ONLY
_U32 = 0xFFFFFFFF


class _Output:
    """One output data file being written under its temporary name, with its hint and key directory moves."""

    def __init__(self, directory, file_id, file_mode):
        self.file_id = file_id
        self.path = data_path(directory, file_id)
        self.tmp_path = f"{self.path}.tmp"
        self.hint_path = hint_path(directory, file_id)
        self.fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                          file_mode)
        self.size = 0
        self.pending = bytearray()
        self.hint = HintBuilder()
        # Per record: key_hash, input file_id << 32 | input offset, offset << 32 | record_len (24 bytes a record).
        self.moves = array("Q")
        self.passed_copying_point = False
        self.synced = 0  # bytes of the file already fdatasynced

    def add(self, key_hash, seq, expire_at_ms, record, input_file, input_offset):
        offset = self.size
        self.write(record)
        self.added(key_hash, seq, expire_at_ms, offset, len(record), input_file, input_offset)

    def write(self, data):
        self.pending += data
        self.size += len(data)
        if len(self.pending) >= _FLUSH_BYTES:
            self.flush()

    def added(self, key_hash, seq, expire_at_ms, offset, record_len, input_file, input_offset):
        """Note the record written at ``offset`` in the hint and the moves."""
        self.hint.add(key_hash, seq, expire_at_ms, offset, record_len, 0)
        self.moves.extend((key_hash, input_file << 32 | input_offset, offset << 32 | record_len))

    def write_header(self, offset, header):
        """Put a record's header in place once its key and value are written (the file is only ours yet)."""
        self.flush()
        os.pwrite(self.fd, header, offset)

    def cut_back(self, offset):
        """Forget what was written from ``offset`` on (a record that failed its CRC half-way through)."""
        self.flush()
        os.ftruncate(self.fd, offset)  # a temporary file no reader maps
        os.lseek(self.fd, offset, os.SEEK_SET)
        self.size = offset
        self.synced = min(self.synced, offset)

    def flush(self):
        if self.pending:
            with memoryview(self.pending) as view:
                written = 0
                while written < len(view):
                    written += os.write(self.fd, view[written:])
            self.pending = bytearray()
        if self.size - self.synced >= _SYNC_BYTES:
            # The disk takes the output in small steps as it grows (RocksDB's bytes_per_sync), here in the
            # shard's own thread between requests: a burst of many MB at the end, or a sync running beside
            # the shard's own fdatasyncs, would hold up the writes that wait for those.
            os.fdatasync(self.fd)
            self.synced = self.size

    def discard(self):
        """Close and remove a partly written output (nothing points at it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass


class _PartCopy:
    """A record larger than _PART_BYTES copied a part at a time: key and value first, then its header.

    Two CRCs run along: the input record's (checked at the end, as a small
    record's is before it is copied) and the copy's, whose header may differ
    (no FLAG_BATCH_MORE, the key's current expiry).
    """

    def __init__(self, view, entry, file_id, expire_at_ms, output_offset):
        _key_hash, self.seq, _expire, offset, record_len, _flags = entry
        self.entry, self.file_id, self.expire_at_ms, self.output_offset = entry, file_id, expire_at_ms, output_offset
        self._view = view
        self._crc, _seq, _record_expire, flags, self._key_len, self._value_len = HEADER.unpack_from(view, offset)
        self._flags = flags & ~FLAG_BATCH_MORE
        self._at, self._end = offset + HEADER_BYTES, offset + record_len
        self._old_crc = zlib.crc32(view[offset + RECORD_CRC.size:offset + HEADER_BYTES])
        self._checked = RECORD_CHECKED.pack(self.seq, expire_at_ms, self._flags, self._key_len, self._value_len)
        self._new_crc = zlib.crc32(self._checked)
        self.intact = HEADER_BYTES + self._key_len + self._value_len == record_len

    def copy_next(self, output):
        """Copy one part; True once the whole record is copied."""
        if self.intact and self._at < self._end:
            part = self._view[self._at:min(self._end, self._at + _PART_BYTES)]
            self._old_crc = zlib.crc32(part, self._old_crc)
            self._new_crc = zlib.crc32(part, self._new_crc)
            output.write(part)
            self._at += len(part)
        if self._at < self._end and self.intact:
            return False
        self.intact = self.intact and self._old_crc == self._crc
        return True

    def header(self):
        return RECORD_CRC.pack(self._new_crc) + self._checked


class _Background:
    """One blocking job (fsyncs, renames, unlinks) in a worker thread, so the shard keeps serving meanwhile."""

    def __init__(self, job, name):
        self.error = None
        self._thread = threading.Thread(target=self._run, args=(job,), name=name, daemon=True)
        self._thread.start()

    def _run(self, job):
        try:
            job()
        except BaseException as exc:  # handed to the shard's thread, which aborts the merge
            self.error = exc

    @property
    def done(self):
        return not self._thread.is_alive()

    def wait(self):
        self._thread.join()


class Merge:
    """One merge of a shard's closed files, advanced by ``step`` until it is DONE or ABORTED.

    ``new_file_id()`` is the engine's: it hands out the next file id and closes
    the active file, so later writes go to a higher id. ``sync_writes()``
    fdatasyncs the active file. ``counters`` is the engine's operation
    counters (expired keys dropped by the merge count there).
    """

    def __init__(self, directory, files, keydir, input_ids, new_file_id, sync_writes, clock, settings, counters,
                 points=None):
        self.directory = directory
        self._files = files
        self._keydir = keydir
        self._new_file_id = new_file_id
        self._sync_writes = sync_writes
        self._clock = clock
        self._settings = settings
        self._counters = counters
        self._points = points or MergePoints()
        self.inputs = list(input_ids)  # ascending: the order they are copied and deleted in
        self.outputs = []
        self.state = COPYING
        self.error = None
        self.bytes_total = sum(keydir.live_bytes.get(file_id, 0) for file_id in self.inputs)  # live bytes at start
        self.input_bytes = sum(files.sizes[file_id] for file_id in self.inputs)
        self.bytes_copied = 0
        self.records_copied = 0
        self.records_dropped = 0
        self.corrupt_records = 0
        self.started = time.monotonic()
        self.elapsed_ms = 0.0
        self._input_at = -1  # index in self.inputs of the file being read
        self._view = None
        self._entries = iter(())
        self._held = None  # an entry put back when its output was full
        self._part = None  # a _PartCopy: a record larger than _PART_BYTES being copied across slices
        self._output = None
        self._job = None
        self._switched = 0  # entries of self._output.moves already switched (x3 words)
        self._retired = []

    @property
    def running(self):
        return self.state not in (DONE, ABORTED)

    def progress(self):
        """What ``merge_status`` reports while the merge runs."""
        return {
            "phase": self.state,
            "bytes_total": self.bytes_total,
            "bytes_copied": self.bytes_copied,
            "records_copied": self.records_copied,
            "records_dropped": self.records_dropped,
            "input_files": len(self.inputs),
            "input_bytes": self.input_bytes,
            "output_files": len(self.outputs),
        }

    # -- the slices ------------------------------------------------------------

    def step(self, budget_s):
        """Work for about ``budget_s`` seconds; returns whether the merge is still running.

        Never raises: an I/O failure aborts the merge (its error is kept in
        ``error``), leaving every file consistent.
        """
        deadline = time.perf_counter() + budget_s
        try:
            while self.running:
                if self.state == COPYING:
                    moving = self._copy(deadline)
                elif self.state == FINISHING:
                    moving = self._job.done and self._published()
                elif self.state == SWITCHING:
                    moving = self._switch(deadline)
                else:
                    moving = self._job.done and self._deleted()
                if not moving or time.perf_counter() >= deadline:
                    break
            if self.state == COPYING and self._output is not None:
                self._output.flush()
        except (OSError, CorruptDataError) as exc:
            self.abort(exc)
        except BaseException as exc:  # a bug or a failed fsync of the active file: leave consistent files behind
            self.abort(exc)
            raise
        return self.running

    def _copy(self, deadline):
        """Copy live records until the deadline or until an output is full; whether to go on at once."""
        while time.perf_counter() < deadline:
            if self._part is not None:
                self._copy_part()
                continue
            output = self._output
            if output is not None and output.size and not output.passed_copying_point:
                output.flush()  # so that a crash here leaves a partly written temporary file
                if self._points.paused("copying"):
                    return False
                output.passed_copying_point = True
            entry = self._held or self._next_entry()
            self._held = None
            if entry is None:
                if self._output is not None:
                    return self._finish_output()
                return self._start_retiring()
            if not self._copy_entry(entry):
                self._held = entry
                return self._finish_output()
        return True

    def _next_entry(self):
        """The next ``(key_hash, seq, expire_at_ms, offset, record_len, flags)`` of the inputs, or None at the end."""
        while True:
            entry = next(self._entries, None)
            if entry is not None:
                return entry
            self._release_view()
            self._input_at += 1
            if self._input_at >= len(self.inputs):
                return None
            self._open_input(self.inputs[self._input_at])

    def _open_input(self, file_id):
        self._view = self._files.view(file_id)
        try:
            hint = read_hint(hint_path(self.directory, file_id), self._files.sizes[file_id])
            self._entries = iter(hint.entries())
        except (OSError, CorruptDataError):  # no usable hint: read the records themselves
            self._entries = self._scanned(self._view, data_path(self.directory, file_id))

    @staticmethod
    def _scanned(view, name):
        for rec in RecordScanner(view, name):
            yield key_hash64(rec.key), rec.seq, rec.expire_at_ms, rec.offset, rec.record_len, rec.flags

    def _release_view(self):
        self._entries = iter(())
        if self._view is not None:
            self._view.release()
            self._view = None

    def _copy_entry(self, entry):
        """Copy one record if the key directory still points at it; False if the current output is full."""
        key_hash, seq, _expire, offset, record_len, flags = entry
        file_id = self.inputs[self._input_at]
        if flags & _SKIPPED_FLAGS:
            self.records_dropped += 1  # tombstones and TTL-only records: see the module docstring
            return True
        found = self._keydir.find_at(key_hash, file_id, offset)
        if found is None:  # overwritten or deleted since
            self.records_dropped += 1
            return True
        slot, expire_at_ms = found
        if expire_at_ms and expire_at_ms <= self._clock():
            self._keydir.drop(slot)  # as a read would: the key is gone
            self._counters["expired"] += 1
            self.records_dropped += 1
            return True
        output = self._output
        if output is not None and output.size and output.size + record_len > self._settings.max_file_bytes:
            return False
        if output is None:
            output = self._output = _Output(self.directory, self._new_file_id(), self._settings.file_mode)
        if record_len > _PART_BYTES:
            self._part = _PartCopy(self._view, entry, file_id, expire_at_ms, output.size)
            output.write(bytes(HEADER_BYTES))  # its header goes in place once the rest is copied and checked
            return True
        record = self._view[offset:offset + record_len]
        crc, _seq, record_expire, record_flags, key_len, value_len = HEADER.unpack_from(record, 0)
        if HEADER_BYTES + key_len + value_len != record_len or zlib.crc32(record[4:]) != crc:
            log.error("merge: data file %d offset %d fails its CRC; the key it held now reads as missing",
                      file_id, offset)
            self._keydir.drop(slot)
            self.corrupt_records += 1
            return True
        if record_flags & FLAG_BATCH_MORE or record_expire != expire_at_ms:
            # A copy stands alone (no batch follows it in the output) and carries the key's current expiry.
            parsed = decode(record)
            data = encode(seq, expire_at_ms, record_flags & ~FLAG_BATCH_MORE, parsed.key, parsed.value)
        else:
            data = bytes(record)
        output.add(key_hash, seq, expire_at_ms, data, file_id, offset)
        self.bytes_copied += record_len
        self.records_copied += 1
        return True

    def _copy_part(self):
        """Copy the next part of a large record; at its end, check its CRC and put its header in place."""
        part, output = self._part, self._output
        if not part.copy_next(output):
            return
        self._part = None
        key_hash, seq, _expire, offset, record_len, _flags = part.entry
        if not part.intact:
            log.error("merge: data file %d offset %d fails its CRC; the key it held now reads as missing",
                      part.file_id, offset)
            output.cut_back(part.output_offset)
            found = self._keydir.find_at(key_hash, part.file_id, offset)
            if found is not None:
                self._keydir.drop(found[0])
            self.corrupt_records += 1
            return
        output.write_header(part.output_offset, part.header())
        output.added(key_hash, seq, part.expire_at_ms, part.output_offset, record_len, part.file_id, offset)
        self.bytes_copied += record_len
        self.records_copied += 1

    # -- publishing an output --------------------------------------------------

    def _finish_output(self):
        """Hand the full output to the worker: fdatasync, rename to its final name, directory fsync, hint."""
        output = self._output
        output.flush()
        points = self._points

        def publish():
            points.wait("output_written")
            os.fdatasync(output.fd)
            os.close(output.fd)
            output.fd = None
            os.rename(output.tmp_path, output.path)
            fsync_directory(self.directory)
            points.wait("output_renamed")
            output.hint.write(output.hint_path, output.size, self._settings.file_mode)

        self.state = FINISHING
        self._job = _Background(publish, f"merge-publish-{output.file_id}")
        return False  # the worker runs now; the next slice picks it up

    def _published(self):
        if self._job.error is not None:
            raise self._job.error
        self._job = None
        output = self._output
        output.hint = None  # written; its memory can go
        self._files.open_closed(output.file_id)
        self._keydir.live_bytes.setdefault(output.file_id, 0)
        self.outputs.append(output.file_id)
        self.state = SWITCHING
        self._switched = 0
        return True

    def _switch(self, deadline):
        """Point key directory entries at the output's copies, where they still point at the input record."""
        output = self._output
        moves, move = output.moves, self._keydir.move
        total = len(moves)
        at = self._switched
        halfway = total // 6 * 3
        while at < total:
            if at == halfway and self._points.paused("switching"):
                self._switched = at
                return False
            source, target = moves[at + 1], moves[at + 2]
            move(moves[at], source >> 32, source & _U32, output.file_id, target >> 32, target & _U32)
            at += 3
            if time.perf_counter() >= deadline:
                break
        self._switched = at
        if at < total:
            return True  # out of time: step() ends the slice
        self._output = None
        self.state = COPYING
        return True

    # -- deleting the inputs ---------------------------------------------------

    def _start_retiring(self):
        """Every live record is in an output: delete the inputs, oldest first, in the worker."""
        if self._points.paused("switched"):
            return False
        retired = []
        for file_id in self.inputs:
            live = self._keydir.live_bytes.get(file_id, 0)
            if live:
                # Keep this file and every newer input: deleting a newer one could uncover an older value.
                log.error("merge: data file %d still holds %d live bytes; it and newer inputs are kept",
                          file_id, live)
                break
            retired.append(file_id)
        # Writes that made input records dead must be on disk before those records go: with fsync
        # "never" or "interval" a crash could otherwise lose both the new value and the old one.
        self._sync_writes()
        for file_id in retired:
            self._files.forget(file_id)
        self._retired = retired
        points, directory = self._points, self.directory

        def delete():
            for position, file_id in enumerate(retired):
                # Hint first: a data file left without its hint is scanned at the next start, while
                # a hint left without its data file could be taken for a later file's.
                for path in (hint_path(directory, file_id), data_path(directory, file_id)):
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                fsync_directory(directory)
                if position == 0:
                    points.wait("input_deleted")

        self.state = RETIRING
        self._job = _Background(delete, "merge-delete")
        return False

    def _deleted(self):
        job, self._job = self._job, None
        for file_id in self._retired:
            self._keydir.live_bytes.pop(file_id, None)
        # Readers drop their maps of files when this changes, which frees the deleted files' space.
        self._keydir.index.bump_files_generation()
        self._finish(DONE, job.error)
        if job.error is not None:
            log.error("merge: could not delete every input file: %s", job.error)
        return False

    # -- ending ----------------------------------------------------------------

    def abort(self, error=None):
        """Stop now, leaving consistent files: a partial output is removed, published ones are kept."""
        if not self.running:
            return
        if error is not None:
            log.error("merge aborted: %s", error)
        if self._job is not None:
            self._job.wait()
        output = self._output
        if self.state == FINISHING and output is not None:
            if os.path.exists(output.path):  # published before the stop: a valid file of duplicates
                self._files.open_closed(output.file_id)
                self._keydir.live_bytes.setdefault(output.file_id, 0)
                self.outputs.append(output.file_id)
            else:
                output.discard()
        elif self.state == COPYING and output is not None:
            output.discard()
        if self.state == RETIRING:
            self._deleted()
            return
        self._output = None
        self._release_view()
        self._finish(ABORTED, error)

    def _finish(self, state, error):
        self._release_view()
        self.state = state
        if error is not None:
            self.error = f"{type(error).__name__}: {error}"
        self.elapsed_ms = (time.monotonic() - self.started) * 1000
