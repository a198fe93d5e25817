"""A shard's background work between requests: the active expiry sweep, and merges (one shard of a daemon at a time)."""

import fcntl
import logging
import os
import time

from ferric_ipc.errors import StorageFullError

log = logging.getLogger("ferricd.housekeeping")

MERGE_LOCK_NAME = "merge.lock"  # in the run directory: held by the one shard that merges
SWEEP_INTERVAL_S = 0.1  # one expiry sweep slice this often (Redis runs its cycle 10 times a second)
SWEEP_BUDGET_S = 0.002  # a slice may repeat while many keys expire, up to this long
MERGE_CHECK_INTERVAL_S = 1.0  # how often the merge thresholds are compared with the shard's dead bytes
MERGE_RETRY_S = 60.0  # after a merge failed or was refused, automatic merges wait this long
MERGE_PAUSE_MS = 1  # between two merge slices, the longest a shard waits for requests (the poll's unit is 1 ms)
MAPPED_FILES_RETRY_S = 10.0  # how often tables kept in memory for want of room in the run directory try it again


class Housekeeping:
    """Runs a slice of background work each time the shard has served a round of requests.

    The merge lock is an ``flock`` on ``run_dir/merge.lock``: the kernel drops
    it when its holder dies, so a shard killed mid-merge never blocks the
    others. A shard that wants to merge while another holds it waits, retrying
    on later rounds.
    """

    def __init__(self, store, run_dir, monotonic=time.monotonic):
        self.store = store
        self._monotonic = monotonic
        self._lock_fd = os.open(os.path.join(run_dir, MERGE_LOCK_NAME),
                                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        self._next_merge_id = 1
        self._requested = None  # merge id a client asked for, not started yet
        self._current = None  # {"merge_id", "before": stats, ...} of the running merge
        self.last = None  # summary of the last merge that ended (or was refused)
        self._next_sweep_s = 0.0
        self._next_check_s = 0.0
        self._auto_after_s = 0.0  # no automatic merge before this (after a failure)
        self._next_mapped_files_retry_s = 0.0

    # -- the shard loop's side ---------------------------------------------------

    def poll_timeout_ms(self, idle_ms):
        """How long the shard may wait for requests before its next slice of work.

        While a merge runs, MERGE_PAUSE_MS: a merging shard with nothing else to
        do takes a fraction of a core, not a whole one, from the processes it
        shares the machine with. Requests end the wait at once. (A merge waiting
        for another shard's lock is retried once a tick.)
        """
        return min(idle_ms, MERGE_PAUSE_MS) if self.store.merging else idle_ms

    def run(self):
        """One slice: a sweep and an eviction slice when due, the run directory's files tried again when due
        (storage/index_file.py), then a merge slice, or a merge started if one is due."""
        now = self._monotonic()
        store = self.store
        if now >= self._next_sweep_s:
            self._next_sweep_s = now + SWEEP_INTERVAL_S
            store.sweep_expired(SWEEP_BUDGET_S)
            store.evict_over_limit()  # what writes left over their keyspace's bound (a lowered bound, at start)
        if now >= self._next_mapped_files_retry_s:
            self._next_mapped_files_retry_s = now + MAPPED_FILES_RETRY_S
            store.retry_mapped_files()
        if store.merging:
            store.merge_step(store.settings.merge_slice_us / 1e6)
            if not store.merging:
                self._merge_ended()
            return
        if self._requested is None and (now < self._next_check_s or now < self._auto_after_s):
            return
        self._next_check_s = now + MERGE_CHECK_INTERVAL_S
        if self._requested is not None or store.merge_wanted():
            self._start_merge()

    def close(self):
        """Release the merge lock (the store aborts a running merge when it closes)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the protocol's side -------------------------------------------------------

    def request_merge(self):
        """Ask for a merge now, whatever the thresholds; returns ``status()`` naming its merge_id."""
        if self._current is None and self._requested is None:
            self._requested = self._take_merge_id()
        return self.status()

    def status(self):
        """``{"state": "idle" | "waiting" | "merging", "merge_id", progress..., "last": summary | None}``."""
        if self._current is not None:
            return {"state": "merging", "merge_id": self._current["merge_id"], **self.store.merge.progress(),
                    "last": self.last}
        if self._requested is not None:
            return {"state": "waiting", "merge_id": self._requested, "last": self.last}
        return {"state": "idle", "merge_id": None, "last": self.last}

    # -- starting and ending a merge -------------------------------------------------

    def _take_merge_id(self):
        merge_id = self._next_merge_id
        self._next_merge_id += 1
        return merge_id

    def _start_merge(self):
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if self._requested is None:
                self._requested = self._take_merge_id()  # wanted: wait for the other shard's merge
            return
        merge_id = self._requested or self._take_merge_id()
        self._requested = None
        before = self.store.stats()
        try:
            merge = self.store.start_merge()
        except StorageFullError as exc:
            log.warning("merge not started: %s", exc)
            self._unlock()
            self._auto_after_s = self._monotonic() + MERGE_RETRY_S
            self.last = _summary(merge_id, "refused", before, before, None, str(exc))
            return
        if merge is None:  # no data file at all
            self._unlock()
            self.last = _summary(merge_id, "done", before, before, None, None)
            return
        log.info("merge %d started: %d files, %d bytes, %d live", merge_id, len(merge.inputs),
                 before["data_bytes"], before["live_bytes"])
        self._current = {"merge_id": merge_id, "before": before}

    def _merge_ended(self):
        merge, current = self.store.merge, self._current
        self._current = None
        self._unlock()
        after = self.store.stats()
        self.last = _summary(current["merge_id"], merge.state, current["before"], after, merge, merge.error)
        if merge.error is not None:
            self._auto_after_s = self._monotonic() + MERGE_RETRY_S
        log.info("merge %d %s: %d -> %d files, %d -> %d bytes, %d records copied in %.0f ms%s",
                 current["merge_id"], merge.state, current["before"]["files"], after["files"],
                 current["before"]["data_bytes"], after["data_bytes"], merge.records_copied, merge.elapsed_ms,
                 f" ({merge.error})" if merge.error else "")

    def _unlock(self):
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)


def _summary(merge_id, state, before, after, merge, error):
    """What ``ferricctl compact`` prints about a merge that ended."""
    return {
        "merge_id": merge_id,
        "state": state,  # done | aborted | refused
        "error": error,
        "files_before": before["files"],
        "files_after": after["files"],
        "bytes_before": before["data_bytes"],
        "bytes_after": after["data_bytes"],
        "live_bytes": after["live_bytes"],
        "bytes_copied": merge.bytes_copied if merge else 0,
        "records_copied": merge.records_copied if merge else 0,
        "records_dropped": merge.records_dropped if merge else 0,
        "elapsed_ms": round(merge.elapsed_ms, 1) if merge else 0.0,
    }
