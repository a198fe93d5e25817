"""Everything the query cache asks of ferricd: generations, entries, leases, and what to do when it is away.

Generations are random 8-byte tokens, not counters: a bump writes a fresh
token, and a missing generation is created with a fresh one (``set nx``). A
token is never reused, so an entry stored under an old token stays
unreachable even after its generation expired or was evicted and came back.
Reads (generations, entries, a lease being held) are local reads of the mapped
index; writes are one round trip each (a store and its lease release share
one transaction; a commit's bumps are one ``mset`` per shard they live on: the
generations of one database share a shard, so a commit is one round trip).

When ferricd cannot be reached the cache steps aside: statements go to the
database, a warning is logged (at most once a minute), invalidations that
could not be published are kept. Every RETRY_INTERVAL_S a call probes
ferricd; the first one that succeeds first replaces every region generation,
so nothing stored before the outage is served again (a writer that could not
publish may have died meanwhile), then publishes what was kept.
"""

import os
import threading
import time

from ferric_ipc import Client, CommandError, FerricError, LimitError

from ferric_sqlalchemy.invalidation import Invalidation

#: A generation outlives its last change by this long (then it is replaced by a fresh one, which is safe).
GENERATION_TTL_MS = 86_400_000
RETRY_INTERVAL_S = 1.0
_TOKEN_BYTES = 8
_KEYS_PER_MSET = 2_000  # bumps per request, so that a huge invalidation is several bounded frames
_POLL_FIRST_S, _POLL_MAX_S = 0.001, 0.02


def new_token() -> bytes:
    return os.urandom(_TOKEN_BYTES)


class CacheStore:
    """The cache's view of ferricd (``client``: a ferric_ipc.Client, made on first use if None)."""

    def __init__(self, client, layout, stats, warn, regions):
        self._client = client
        self.layout = layout
        self.stats = stats
        self.warn = warn
        self.regions = regions  # callable: every region name this process knows
        self._lock = threading.Lock()
        self._down_until = 0.0  # monotonic time before which ferricd is not tried again
        self._outage = False  # ferricd failed since it last answered
        self._unpublished = Invalidation()
        self._epoch = None

    @property
    def client(self) -> Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = Client()
        return self._client

    # -- availability ---------------------------------------------------------------------

    def available(self) -> bool:
        """False while ferricd is away (between failures and the next successful probe)."""
        if not self._outage:
            return True
        if time.monotonic() < self._down_until:
            return False
        with self._lock:
            if not self._outage:
                return True
            if time.monotonic() < self._down_until:
                return False
            self._down_until = time.monotonic() + RETRY_INTERVAL_S
        try:
            self.client.ping()
            self._recover()
        except FerricError as exc:
            self.failed(exc)
            return False
        return True

    def failed(self, exc: Exception) -> None:
        """A call to ferricd failed: step aside until the next probe."""
        with self._lock:
            self._outage = True
            self._down_until = time.monotonic() + RETRY_INTERVAL_S
        self.stats.count("errors")
        self.warn("unreachable", f"ferricd is unreachable ({type(exc).__name__}: {exc}); queries go to the "
                                 "database until it answers again")

    def _recover(self) -> None:
        with self._lock:
            kept, self._unpublished = self._unpublished, Invalidation()
        kept.everything = True
        try:
            self._bump(kept)
        except FerricError:
            with self._lock:
                self._unpublished.merge(kept)  # away again: all of it waits for the next probe
            raise
        with self._lock:
            self._outage = False
            self._epoch = None  # ferricd may have restarted meanwhile
        self.warn("recovered", "ferricd answers again; entries stored before the outage will not be served")

    def epoch(self) -> bytes:
        """Shard 0's epoch, which changes whenever ferricd restarts: part of every entry's name.

        Entries and generations are written without fsync ("sa:" is a cache
        keyspace). A crash of ferricd alone loses nothing (written data is in
        the page cache), but a crash of the machine can lose a generation
        change and keep an older entry; naming entries by the epoch they were
        computed in leaves everything from before a restart unreachable.
        """
        epoch = self._epoch
        if epoch is None:
            epoch = self._epoch = str(self.client.hello(0)["epoch"]).encode()
        return epoch

    # -- generations ----------------------------------------------------------------------

    def read(self, keys: list[bytes]) -> list:
        """Current values of ``keys`` (None where missing), read locally."""
        return self.client.mget(keys)

    def create_missing(self, keys: list[bytes], values: list, tags: list[bytes]) -> list:
        """Give each missing generation a fresh token (unless another process did first); return all values."""
        missing: dict[bytes, list[bytes]] = {}
        for key, value, tag in zip(keys, values, tags):
            if value is None:
                missing.setdefault(tag, []).append(key)
        if not missing:
            return values
        for tag, tag_keys in missing.items():
            with self.client.transaction(tag) as transaction:
                for key in tag_keys:
                    transaction.set(key, new_token(), ttl_ms=GENERATION_TTL_MS, nx=True)
                transaction.execute()
        return self.client.mget(keys)

    def publish(self, invalidation: Invalidation) -> None:
        """Replace the generations a committed transaction changed; keep them for later if ferricd is away."""
        if not invalidation:
            return
        if not self.available():
            with self._lock:
                self._unpublished.merge(invalidation)
            return
        try:
            self._bump(invalidation)
        except FerricError as exc:
            with self._lock:
                self._unpublished.merge(invalidation)
            self.failed(exc)

    def _bump(self, invalidation: Invalidation) -> None:
        """Give every generation the invalidation names a fresh token: one ``mset`` per shard they live on.

        Generations of one tenant share a hash tag, so a commit writing to one database is one request to
        one shard whatever the number of tables and rows. Nothing needs the bumps to be atomic: a reader
        that sees some of them and not others stores its result under a mix no later reader sees.
        """
        layout = self.layout
        keys: list[bytes] = []
        counted: list[str] = []
        for (tenant, table), pks in invalidation.rows.items():
            keys.extend(layout.row_generation(tenant, table, pk) for pk in pks)
        for tenant, table in invalidation.tables:
            keys.append(layout.table_generation(tenant, table))
            counted.append(table)
        for tenant, table in invalidation.bulk:
            keys.append(layout.bulk_generation(tenant, table))
        if invalidation.everything:
            keys.extend(layout.region_generation(region) for region in self.regions())
        self._replace(keys)
        self.stats.count("invalidations", counted)

    def _replace(self, keys: list[bytes]) -> None:
        for start in range(0, len(keys), _KEYS_PER_MSET):
            self.client.mset({key: new_token() for key in keys[start:start + _KEYS_PER_MSET]},
                             ttl_ms=GENERATION_TTL_MS)

    def bump_regions(self, regions) -> None:
        self._replace([self.layout.region_generation(region) for region in regions])

    # -- entries and leases -------------------------------------------------------------------

    def get(self, key: bytes):
        return self.client.get(key)

    def lease(self, lease_key: bytes, ttl_ms: int):
        return self.client.lease(lease_key, ttl_ms)

    def release(self, lease_key: bytes, token: bytes) -> None:
        self.client.release(lease_key, token)

    def wait_for(self, entry_key: bytes, lease_key: bytes, wait_ms: int, start: bytes):
        """Poll (locally) for ``entry_key`` to hold a value starting with ``start`` (the header of the
        generations this reader read) while someone holds ``lease_key``, for at most ``wait_ms``.

        Returns the entry, or None once the lease is gone without one or the time is up.
        """
        deadline = time.monotonic() + wait_ms / 1000
        pause_s = _POLL_FIRST_S
        client = self.client
        while True:
            value, lease = client.mget([entry_key, lease_key])
            if value is not None and value.startswith(start):
                return value
            if lease is None:
                value = client.get(entry_key)  # stored and released in one transaction: look once more
                return value if value is not None and value.startswith(start) else None
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                return None
            time.sleep(min(pause_s, left_s))
            pause_s = min(pause_s * 2, _POLL_MAX_S)

    def store(self, entry_key: bytes, value: bytes, ttl_ms: int, tag: bytes, lease_key=None, token=None) -> bool:
        """Write an entry (and release our lease with it, atomically); False if ferricd refused its size."""
        try:
            if token is None:
                self.client.set(entry_key, value, ttl_ms=ttl_ms)
            else:
                with self.client.transaction(tag) as transaction:
                    transaction.set(entry_key, value, ttl_ms=ttl_ms)
                    transaction.delete_if(lease_key, token)
                    transaction.execute()
        except (LimitError, CommandError) as exc:
            self.warn("store-refused", f"an entry of {len(value)} bytes was not cached: {exc}")
            if token is not None:
                self.release(lease_key, token)
            return False
        return True
