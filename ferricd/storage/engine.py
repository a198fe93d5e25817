"""BitcaskStore: one shard's storage engine (put, get, delete, expiry, group-commit batches, fsync policy, merge)."""

import logging
import os
import shutil
from contextlib import contextmanager
from typing import NamedTuple

from ferric_ipc.errors import StorageError, StorageFullError
from ferric_ipc.keys import as_key, as_value, key_hash64
from ferric_ipc.protocol import MAX_EXPIRE_AT_MS
from ferricd.clock import monotonic_ms, wall_clock_ms
from ferricd.storage.access_clock import AccessClock
from ferricd.storage.datafiles import DataFiles, hint_path
from ferricd.storage.errors import RotationPostponed
from ferricd.storage.eviction import SampledEviction
from ferricd.storage.expiry import ExpirySweep
from ferricd.storage.hints import HintBuilder
from ferricd.storage.index_file import MemoryTables
from ferricd.storage.keyspaces import FSYNC_STRICTNESS, KeyspaceAccounts, KeyspaceTable
from ferricd.storage.lock import DirectoryLock
from ferricd.storage.merge import DONE, Merge
from ferricd.storage.records import FLAG_BATCH_MORE, FLAG_TOMBSTONE, FLAG_TTL_ONLY, HEADER_BYTES, encode
from ferricd.storage.recovery import recover
from ferricd.storage.settings import StoreSettings
from ferricd.storage.snapshot import write_snapshot

log = logging.getLogger(__name__)

_ALWAYS, _INTERVAL = FSYNC_STRICTNESS["always"], FSYNC_STRICTNESS["interval"]
#: Slots the eviction hand may look at per write (each live one costs a read of its key's start).
EVICTION_SLOTS_PER_CALL = 4096


class Put(NamedTuple):
    """A write for ``write_batch``: set ``key`` to ``value``, expiring at ``expire_at_ms`` (0 = never)."""

    key: object
    value: object
    expire_at_ms: int = 0


class Delete(NamedTuple):
    """A delete for ``write_batch``."""

    key: object


class Expire(NamedTuple):
    """A TTL change for ``write_batch``: ``key`` keeps its value and expires at ``expire_at_ms`` (0 = never)."""

    key: object
    expire_at_ms: int


class BitcaskStore:
    """One shard's Bitcask store in ``directory``; the only writer of that directory while open.

    Keys are str (UTF-8 encoded) or bytes of at most 64 KiB; values are bytes
    or str of at most ``settings.max_value_bytes``. Expiry is an absolute
    ``expire_at_ms`` on the wall clock (0 = never); an expired key reads as
    missing. A missing key is ``None``, never an exception.

    Durability follows the fsync policy of each written key's keyspace (one
    keyspace with ``settings.fsync`` unless ``keyspaces`` says otherwise): with
    ``"always"`` every write call (a whole ``write_batch`` included) has reached
    the disk when it returns. A write mixing keyspaces is synced as the strictest
    of them asks.
    """

    def __init__(self, directory, settings=None, clock=wall_clock_ms, epoch=0, tables=None, keyspaces=None,
                 access_path=None, monotonic_clock=monotonic_ms):
        """Lock ``directory`` (created if missing) and recover its contents.

        Raises DirectoryLockedError naming the pid that holds it. The recovery
        report is in ``self.recovery``. ``epoch`` goes into the key
        directory's header; ``tables`` decides where its buffers live
        (default: process memory; ferricd.storage.index_file.IndexFiles: mapped files
        clients can read). ``keyspaces`` is a KeyspaceTable (default: every key
        in one keyspace with ``settings.fsync``); if one of them evicts, the
        access times live in the file ``access_path`` clients mark (default: memory).
        ``clock`` (wall-clock ms) is for expiry only; ``monotonic_clock`` (ms)
        times the fsync interval.
        """
        self.settings = settings = settings or StoreSettings()
        self.directory = directory
        self._clock = clock
        self._monotonic_clock = monotonic_clock
        os.makedirs(directory, mode=0o750, exist_ok=True)
        self._lock = DirectoryLock(directory)
        self._files = None
        try:
            self._files = DataFiles(directory, settings.file_mode)
            self._keydir, self.recovery = recover(
                directory, self._files, clock(), epoch, settings.file_mode, tables
            )
        except BaseException:
            if self._files is not None:
                self._files.close()
            self._lock.release()
            raise
        self._next_seq = self.recovery.next_seq
        ids = self._files.closed_ids()
        self._next_file_id = (ids[-1] + 1) if ids else 1
        self._hint = HintBuilder()  # entries of the active file, written out when it closes
        self._last_sync_ms = monotonic_clock()
        self._unsynced = False  # bytes were written since the last fdatasync
        self._always_pending = False  # ... among them an fsync="always" write, waiting for its group commit
        self._interval_pending = False  # ... among them an fsync="interval" write, waiting for sync_if_due
        self._failed = None  # set when an fsync failed: the disk state is then unknown
        self._grouping = False
        self.counters = dict.fromkeys(("puts", "deletes", "expiry_sets", "gets", "hits", "misses", "expired"), 0)
        self.merge = None  # the running (or last) Merge
        self.merges = 0  # merges that ran to the end
        self._sweep = ExpirySweep()
        self._closed = False
        self.keyspaces = keyspaces or KeyspaceTable.single(settings.fsync)
        self.accounts = KeyspaceAccounts(self.keyspaces, self._files)
        self._access = self._eviction = None
        self._evicting = False
        try:
            self.accounts.count(self._keydir)
            if self.keyspaces.evictable:
                self._access = AccessClock(self._keydir.index.capacity, access_path, settings.file_mode)
                self._eviction = SampledEviction(self._keydir, self.accounts, self._access, self._next_seq)
        except BaseException:
            self._keydir.index.close()
            self._files.close()
            self._lock.release()
            raise
        self._keydir.accounts = self.accounts
        self._tables = tables or MemoryTables

    # -- reads -----------------------------------------------------------------

    def get(self, key):
        """The value of ``key`` as bytes, or None if it is missing or expired."""
        found = self.get_with_expiry(key)
        return None if found is None else found[0]

    def get_with_expiry(self, key):
        """``(value, expire_at_ms)`` of ``key`` (0 = never expires), or None if missing or expired.

        A record that fails its checksum is logged, counted in
        ``stats()["corrupt_reads"]``, dropped from the key directory and read as missing.
        """
        key = as_key(key)
        self.counters["gets"] += 1
        key_hash = key_hash64(key)
        hit = self._keydir.lookup(key_hash, key)
        if hit is not None:
            slot, record, expire_at_ms = hit
            if not expire_at_ms or expire_at_ms > self._clock():
                self.counters["hits"] += 1
                if self._access is not None:
                    self._access.touch(key_hash)
                return record.value, expire_at_ms
            self._keydir.drop(slot)  # lazy expiry; the expired record hides older values on reload
            self.counters["expired"] += 1
        self.counters["misses"] += 1
        return None

    def scan(self, prefix=b"", cursor=0, count=100, max_slots=None):
        """``(next_cursor, keys)``: up to ``count`` live keys starting with ``prefix``.

        Start with cursor 0; a returned cursor of 0 means the scan is complete.
        ``max_slots`` bounds the work of one call (see KeyDirectory.scan).
        """
        prefix = as_key(prefix, "prefix")
        if type(cursor) is not int or cursor < 0:
            raise TypeError("cursor must be a non-negative int returned by a previous scan")
        if type(count) is not int or count <= 0:
            raise TypeError("count must be a positive int")
        return self._keydir.scan(prefix, cursor, count, self._clock(), max_slots)

    @property
    def table_capacity(self):
        """Slots in the key directory's table; it changes when the table is rebuilt, which moves every cursor."""
        return self._keydir.index.capacity

    def __contains__(self, key):
        return self.get_with_expiry(key) is not None

    def __len__(self):
        """Entries in the key directory (keys that expired but were not yet read are included)."""
        return len(self._keydir)

    def keys(self):
        """Yield every live (unexpired) key as bytes, in no particular order."""
        return self._keydir.keys(self._clock())

    # -- writes ----------------------------------------------------------------

    def put(self, key, value, expire_at_ms=0):
        """Set ``key`` to ``value``; ``expire_at_ms`` is absolute wall-clock ms, 0 = never."""
        # The batch path minus its per-batch bookkeeping: the most frequent call of all.
        self._check_writable()
        prepared = self._prepare(Put(key, value, expire_at_ms), "")
        if self.keyspaces.refusing:
            self._check_room([prepared])
        _op, key, key_hash, value, expire_at_ms = prepared
        seq = self._take_seq()
        self._append([(Put, key, key_hash, seq, expire_at_ms, 0, encode(seq, expire_at_ms, 0, key, value))])

    def delete(self, key):
        """Delete ``key``; returns whether it existed (an expired key did not)."""
        return self._write([Delete(key)], single=True)[0]

    def set_expiry(self, key, expire_at_ms):
        """Give ``key`` a new ``expire_at_ms`` (0 = never) and keep its value; returns whether it existed.

        Writes a TTL-only record (header and key, no value), not the value again.
        """
        return self._write([Expire(key, expire_at_ms)], single=True)[0]

    def write_batch(self, ops, atomic=False):
        """Apply ``Put``, ``Delete`` and ``Expire`` ops in order with one write and (fsync="always") one fdatasync.

        Every op is validated before anything is written, so a TypeError or
        LimitError leaves the store untouched. Returns one result per op:
        None for a Put, whether the key existed for a Delete or an Expire.

        On an I/O failure (StorageFullError when the disk is full) the ops
        that had already reached a rotated-out file stay applied and their
        count is in the exception's ``applied`` attribute; the rest are not stored.

        ``atomic``: the batch is all or none, also across a crash. Its records go
        into one file (rotating first if they do not fit; a batch larger than
        ``max_file_bytes`` makes one file that large), every record but the last
        carries FLAG_BATCH_MORE, and recovery keeps the batch only if its last
        record made it to disk.
        """
        return self._write(ops, single=False, atomic=atomic)

    def _write(self, ops, single, atomic=False):
        self._check_writable()
        prepared = [self._prepare(op, "" if single else f"ops[{i}].") for i, op in enumerate(ops)]
        if self.keyspaces.refusing:
            self._check_room(prepared)
        results, pending = [], []
        exists = {}  # key -> exists after the ops so far in this batch
        for op_type, key, key_hash, value, expire_at_ms in prepared:
            if op_type is Delete:
                existed = exists[key] if key in exists else self._exists(key_hash, key)
                exists[key] = False
                results.append(existed)
                if not existed:
                    continue  # nothing to hide: no tombstone needed
                flags, expire_at_ms, value = FLAG_TOMBSTONE, 0, b""
            elif op_type is Expire:
                existed = exists[key] if key in exists else self._exists(key_hash, key)
                results.append(existed)
                if not existed:
                    continue  # nothing to change: nothing written
                exists[key] = not expire_at_ms or expire_at_ms > self._clock()
                flags, value = FLAG_TTL_ONLY, b""
            else:
                exists[key] = not expire_at_ms or expire_at_ms > self._clock()
                results.append(None)
                flags = 0
            pending.append([op_type, key, key_hash, self._take_seq(), expire_at_ms, flags, value])
        if atomic:
            for item in pending[:-1]:
                item[5] |= FLAG_BATCH_MORE
        self._append([(op_type, key, key_hash, seq, expire_at_ms, flags, encode(seq, expire_at_ms, flags, key, value))
                      for op_type, key, key_hash, seq, expire_at_ms, flags, value in pending], atomic)
        return results

    def _prepare(self, op, name):
        """Validate and encode one op's arguments; ``name`` prefixes argument names in errors."""
        if not isinstance(op, (Put, Delete, Expire)):
            raise TypeError(f"{name.rstrip('.') or 'op'} must be Put, Delete or Expire, not {type(op).__name__}")
        key = as_key(op.key, f"{name}key")
        if type(op) is Delete:
            return Delete, key, key_hash64(key), None, 0
        value = None if type(op) is Expire else as_value(op.value, self.settings.max_value_bytes, f"{name}value")
        expire_at_ms = op.expire_at_ms
        if type(expire_at_ms) is not int:
            raise TypeError(f"{name}expire_at_ms must be int milliseconds, not {type(expire_at_ms).__name__}")
        if not 0 <= expire_at_ms <= MAX_EXPIRE_AT_MS:
            raise ValueError(f"{name}expire_at_ms must be between 0 (never) and 2**63-1")
        return type(op), key, key_hash64(key), value, expire_at_ms

    def _check_room(self, prepared):
        """Raise KeyspaceFullError if the prepared puts would take a keyspace that never evicts past its share."""
        keyspaces, growth = self.keyspaces, {}
        for op_type, key, key_hash, value, _expire_at_ms in prepared:
            if op_type is Put:
                number = keyspaces.of(key)
                if number in keyspaces.refusing:
                    found = self._keydir.find(key_hash, key)
                    grown = HEADER_BYTES + len(key) + len(value) - (found[3] if found is not None else 0)
                    growth[number] = growth.get(number, 0) + grown
        if growth:
            self.accounts.check_room(growth)

    def _exists(self, key_hash, key):
        found = self._keydir.find(key_hash, key)
        return found is not None and (not found[4] or found[4] > self._clock())

    def _take_seq(self):
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _append(self, pending, atomic=False):
        """Write pending records, rotating where a file fills, then sync and index them.

        ``atomic``: never split ``pending`` across files (rotate before it instead).
        """
        limit = self.settings.max_file_bytes
        segment, segment_bytes, placed, applied = [], 0, [], 0
        strictness = self._fsync_strictness(pending)
        try:
            if atomic and pending:
                total = sum(len(item[-1]) for item in pending)
                if self._active().size and self._active().size + total > limit:
                    self._close_active()
                limit = max(limit, total)
            for item in pending:
                record_len = len(item[-1])
                used = self._active().size + segment_bytes
                if used and used + record_len > limit:
                    if segment:
                        placed += self._write_segment(segment)
                        segment, segment_bytes = [], 0
                    try:
                        self._close_active()
                    except RotationPostponed:
                        applied = len(placed)  # synced, in the file that stays active
                        raise
                    applied = len(placed)  # these are in a closed, fsynced file now
                segment.append(item)
                segment_bytes += record_len
            if segment:
                placed += self._write_segment(segment)
            if placed:
                self._unsynced = True
                self._sync_for(strictness)
        except StorageError as exc:
            self._index(placed[:applied])
            exc.applied = applied
            raise
        self._index(placed)
        if self._eviction is not None:
            self.evict_over_limit()

    def _fsync_strictness(self, pending):
        """The strictest fsync policy among the keyspaces of ``pending``'s keys (FSYNC_STRICTNESS)."""
        strictness = self.keyspaces.fsync_strictness
        if len(strictness) == 1:
            return strictness[0]
        of = self.keyspaces.of
        if len(pending) == 1:  # the common case, without a generator
            return strictness[of(pending[0][1])]
        return max((strictness[of(item[1])] for item in pending), default=0)

    def _sync_for(self, strictness):
        if strictness == _ALWAYS:
            if self._grouping:
                self._always_pending = True
            else:
                self.sync()
        elif strictness == _INTERVAL:
            self._interval_pending = True
            self.sync_if_due()

    def _write_segment(self, segment):
        """Append one file's worth of records in a single write; returns their placements."""
        active = self._active()
        offset = active.append(b"".join(item[-1] for item in segment))
        placed = []
        for op_type, key, key_hash, seq, expire_at_ms, flags, record in segment:
            self._hint.add(key_hash, seq, expire_at_ms, offset, len(record), flags)
            placed.append((op_type, key, key_hash, expire_at_ms, active.file_id, offset, len(record)))
            offset += len(record)
        return placed

    def _index(self, placed):
        keydir = self._keydir
        for op_type, key, key_hash, expire_at_ms, file_id, offset, record_len in placed:
            if op_type is Delete:
                found = keydir.find(key_hash, key)
                if found is not None:
                    keydir.drop(found[0])
                self.counters["deletes"] += 1
            elif op_type is Expire:
                found = keydir.find(key_hash, key)
                if found is not None:
                    if 0 < expire_at_ms <= self._clock():
                        keydir.drop(found[0])
                    else:
                        keydir.set_expiry(found, expire_at_ms)
                self.counters["expiry_sets"] += 1
            else:
                keydir.set(key_hash, key, file_id, offset, record_len, expire_at_ms)
                self.counters["puts"] += 1
                if self._eviction is not None:
                    self._access.touch(key_hash)  # a write is a use: a key just written is not evicted first
                    self._eviction.written(key, record_len, self._next_seq)

    def _active(self):
        """The active file, created on the first write after open or after a rotation."""
        if self._files.active is None:
            self._files.start_active(self._next_file_id)
            self._next_file_id += 1
        return self._files.active

    def _close_active(self):
        """Close the active file for good (fsync, hint); the next write starts a new one."""
        active = self._files.active
        if active is None:
            return
        if active.size == 0:
            active.close()
            self._files.active = None
            os.unlink(active.path)
            return
        try:
            active.sync()
        except OSError as exc:
            self._fail(f"fsync of {active.path} failed: {exc}")
        self._unsynced = self._always_pending = self._interval_pending = False
        try:
            file_id = self._files.close_active()
        except OSError as exc:
            raise RotationPostponed(
                f"could not close the full data file {active.path} ({exc.strerror}): it stays the active file, "
                "and the next write tries again; if this repeats, raise LimitNOFILE"
            ) from exc
        try:
            self._hint.write(hint_path(self.directory, file_id), self._files.sizes[file_id], self.settings.file_mode)
        except OSError as exc:  # only costs a scan at the next start
            log.warning("could not write hint for %s: %s", active.path, exc)
        self._hint = HintBuilder()

    # -- durability ------------------------------------------------------------

    def sync(self):
        """fdatasync the active file now; every write so far then survives a crash.

        Raises StorageError once the store has failed (``_failure``): after a failed fsync a later
        one succeeding proves nothing about the pages the kernel dropped, and a damaged key directory
        is rebuilt only by reopening, so the store must be reopened (the shard exits and is replaced).
        """
        self._check_not_failed()
        active = self._files.active
        if active is not None and self._unsynced:
            try:
                active.sync()
            except OSError as exc:
                self._fail(f"fdatasync of {active.path} failed: {exc}")
        self._unsynced = self._always_pending = self._interval_pending = False
        self._last_sync_ms = self._monotonic_clock()

    @contextmanager
    def group_commit(self):
        """Within this block, fsync="always" writes share one fdatasync, run when the block ends.

        Writes of keyspaces with a weaker policy in the same block reach the
        disk with that fdatasync too: it syncs the file, not single writes.

        For a server loop: apply every ready request inside the block, leave
        it, then reply. A write is durable once the block has ended.
        """
        self._grouping = True
        try:
            yield self
        finally:
            self._grouping = False
            if (self._failure() or self._always_pending and self._unsynced) and not self._closed:
                self.sync()

    def sync_if_due(self):
        """For fsync="interval": sync if such writes are pending and fsync_interval_ms has passed.

        The shard's loop calls this on its housekeeping tick so that idle
        periods also reach the disk; it raises StorageError once the store has
        failed (see ``sync``), which makes the shard exit.
        """
        waited_ms = self._monotonic_clock() - self._last_sync_ms
        due = self._interval_pending and waited_ms >= self.settings.fsync_interval_ms
        if due or self._failure():
            self.sync()

    def _fail(self, reason):
        # After a failed fsync the kernel may have dropped the dirty pages: what is on disk
        # is unknown, so refuse further writes instead of acknowledging them.
        self._failed = reason
        raise StorageError(
            f"{reason}; this store refuses writes until it is reopened: check the disk (dmesg), "
            "then restart (systemctl restart ferricd)"
        )

    def _check_writable(self):
        if self._closed:
            raise StorageError(f"store {self.directory} is closed")
        self._check_not_failed()

    def _check_not_failed(self):
        failure = self._failure()
        if failure:
            raise StorageError(f"{failure}; this store refuses writes until it is reopened")

    def _failure(self):
        """Why this store must be reopened (an fsync failed, or its key directory is damaged), or None."""
        damage = self._table_damage()
        return self._failed or (damage and f"the key directory is damaged ({damage}); reopening rebuilds it")

    def _table_damage(self):
        """Why the key directory cannot be trusted (a probe found no free slot, or a read it led to no file)."""
        return self._keydir.index.damage or self._files.damage

    # -- merge and active expiry -----------------------------------------------

    @property
    def merging(self):
        return self.merge is not None and self.merge.running

    def merge_wanted(self):
        """Whether a merge should start on its own: ``merge_auto`` and both merge thresholds passed."""
        settings = self.settings
        if not settings.merge_auto or self.merging or self._failure():
            return False
        total, live = self._data_and_live_bytes()
        dead = total - live
        return dead > 0 and dead >= settings.merge_trigger_dead_bytes and (
            dead * 100 >= settings.merge_trigger_dead_percent * total
        )

    def start_merge(self, points=None):
        """Start a merge of every data file written so far; returns it (the running one if there is one), or None.

        Advance it with ``merge_step`` between requests. Raises StorageFullError
        if the disk has less room than the live bytes the merge would copy.
        ``points`` replaces the merge's test hooks (merge_points.MergePoints).
        """
        self._check_writable()
        if self.merging:
            return self.merge
        _total, live = self._data_and_live_bytes()
        free = shutil.disk_usage(self.directory).free
        if free < live:
            raise StorageFullError(
                f"a merge of {self.directory} needs room for up to {live} bytes of live data, "
                f"and {free} bytes are free: free disk space first"
            )
        self._close_active()  # its records are merged too; writes from now on go to newer files
        inputs = self._files.closed_ids()
        if not inputs:
            return None
        self.merge = Merge(self.directory, self._files, self._keydir, inputs, self._merge_output_id, self.sync,
                           self._clock, self.settings, self.counters, points)
        return self.merge

    def merge_step(self, budget_s):
        """Advance the running merge for about ``budget_s`` seconds; returns whether it is still running."""
        merge = self.merge
        if merge is None or not merge.running:
            return False
        running = merge.step(budget_s)
        if merge.state == DONE:
            self.merges += 1
        return running

    def _merge_output_id(self):
        """The id of a new merge output. The active file is closed first, so every write from now on goes
        to a file with a higher id: per key, file order stays write order (see storage/merge.py)."""
        self._close_active()
        file_id = self._next_file_id
        self._next_file_id += 1
        return file_id

    def sweep_expired(self, budget_s):
        """One slice of the active expiry sweep (settings.expiry_sweep_slots slots, more while many expire);
        returns how many expired keys it dropped."""
        dropped = self._sweep.run(self._keydir, self._clock(), self.settings.expiry_sweep_slots, budget_s)
        self.counters["expired"] += dropped
        return dropped

    def evict_over_limit(self, max_slots=EVICTION_SLOTS_PER_CALL):
        """Evict from each ``lru`` keyspace holding more than its share of max_bytes; returns how many keys went.

        Looks at no more than ``max_slots`` slots (storage/eviction.py). Every
        write calls it; so does the shard's housekeeping tick, for what a write
        left. An evicted key is deleted as by ``delete`` (a tombstone, synced as
        its keyspace's policy says), so it stays gone after a crash.
        """
        if self._eviction is None or self._evicting or self._failure() or self._closed:
            return 0
        self._access.fit(self._keydir.index.capacity)
        over = self.accounts.over_limit()
        if not over:
            return 0
        victims, expired = self._eviction.victims(over, max_slots, self._clock())
        for slot in expired:
            self._keydir.drop(slot)
        self.counters["expired"] += len(expired)
        if not victims:
            return 0
        pending = []
        for key, key_hash, _number in victims:
            seq = self._take_seq()
            pending.append((Delete, key, key_hash, seq, 0, FLAG_TOMBSTONE, encode(seq, 0, FLAG_TOMBSTONE, key, b"")))
        self._evicting = True
        try:
            self._append(pending)
        except StorageError as exc:  # the write that called us did succeed: keep the keys until the next try
            log.warning("could not evict %d keys: %s", len(victims), exc)
            return 0
        finally:
            self._evicting = False
        for _key, _key_hash, number in victims:
            self.accounts.evictions[number] += 1
        return len(victims)

    def retry_mapped_files(self):
        """Put the key directory and the access times back in the run directory if they are in the shard's
        memory for want of room there (see stats' index_file_error); a copy of each, no more."""
        if self._tables.error is not None:
            self._keydir.index.move()
        if self._access is not None:
            self._access.retry_file()

    def _data_and_live_bytes(self):
        sizes = dict(self._files.sizes)
        if self._files.active is not None:
            sizes[self._files.active.file_id] = self._files.active.size
        return sum(sizes.values()), sum(self._keydir.live_bytes.get(file_id, 0) for file_id in sizes)

    # -- lifecycle -------------------------------------------------------------

    def close(self):
        """Sync, close the active file with its hint, snapshot the key directory, release the lock."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.merging:
                self.merge.abort()
            if self._access is not None:
                self._access.close()
            if not self._failed:
                self._close_active()
                if self.settings.snapshot_on_close and not self._table_damage():  # a reopen rebuilds it
                    self._write_snapshot()
        finally:
            self._keydir.index.close()
            self._files.close()
            self._lock.release()

    def _write_snapshot(self):
        try:
            write_snapshot(
                self.directory, self._next_seq, self._files.sizes, self._keydir.live_bytes,
                self._keydir.index.buffer, self.settings.file_mode,
            )
        except OSError as exc:  # the next start rebuilds from hint files instead
            log.warning("could not write key directory snapshot: %s", exc)

    @property
    def index_buffer(self):
        """The buffer the key directory lives in (what a shard publishes to clients)."""
        return self._keydir.index.buffer

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- statistics ------------------------------------------------------------

    def stats(self):
        """Counts and sizes: keys, live and dead bytes, files, index bytes, merges, operation counters."""
        total, live = self._data_and_live_bytes()
        index = self._keydir.index
        return {
            "keys": index.count,
            "files": len(self._files.sizes) + (self._files.active is not None),
            "data_bytes": total,
            "live_bytes": live,
            "dead_bytes": total - live,
            "index_bytes": index.nbytes,
            "index_capacity": index.capacity,
            # Why clients cannot read the key directory / mark access times themselves (a full run directory).
            "index_file_error": self._tables.error,
            "access_file_error": self._access.error if self._access is not None else None,
            "next_seq": self._next_seq,
            "corrupt_reads": self._keydir.corrupt_dropped,
            "merging": self.merging,
            "merges": self.merges,
            **self.counters,
            "keyspaces": self.accounts.summary(),
        }
