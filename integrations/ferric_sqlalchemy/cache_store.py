"""Everything the query cache asks of ferricd: generations, entries, leases, and what to do when it is away.

A generation is a msgpack map: ``{"t": 8 random bytes}``, plus one field per
writer whose commit is under way (``"w" + 16 hex digits``: the wall-clock ms
until which it counts). The token is never reused, so an entry stored under an
old value stays unreachable even after its generation expired or was evicted
and came back. A missing generation is created with a fresh token (``set nx``).

A commit publishes in two steps, so that it never waits for ferricd after the
database committed:

1. ``announce``, when the database is about to commit: each generation gets a
   fresh token and this writer's field (one transaction per shard, sent
   without waiting; the database commit runs meanwhile);
2. ``confirm``, once it committed: the reply of step 1 is read (it has
   usually arrived), then each generation gets a fresh token and loses the
   field, sent without waiting.

A reader stores nothing while a generation it read holds a writer's field that
has not run out: a result read from the database in between may be older than
the commit. So between step 1 and step 2 nothing is stored, and after step 2
only results read after the commit. A writer that died leaves its field until
it runs out (PENDING_MS); a writer whose commit took longer than
SLOW_COMMIT_MS (readers may have seen its field run out) does step 2 waiting
for it, before its commit returns.

Reads (generations, entries, a lease being held) are local reads of the mapped
index; other writes are one round trip each (a store and its lease release
share one transaction).

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
from collections import defaultdict

import msgpack

from ferric_ipc import Client, CommandError, FerricError, LimitError

from ferric_sqlalchemy.invalidation import Invalidation

#: A generation outlives its last change by this long (then it is replaced by a fresh one, which is safe).
GENERATION_TTL_MS = 86_400_000
#: How long a writer's field in a generation keeps readers from storing, if the writer never confirms.
PENDING_MS = 30_000
#: A commit that took longer than this after its announce confirms waiting for ferricd: a reader whose clock
#: runs up to PENDING_MS - SLOW_COMMIT_MS ahead of the writer's may have seen its field run out.
SLOW_COMMIT_MS = 10_000
RETRY_INTERVAL_S = 1.0
_TOKEN_BYTES = 8
_KEYS_PER_REQUEST = 1_000  # generations per transaction, so that a huge invalidation is several bounded frames
_CONFIRMS_IN_FLIGHT = 64  # unread confirm replies kept before the oldest is waited for
_POLL_FIRST_S, _POLL_MAX_S = 0.001, 0.02
_TOKEN = "t"
_PLAIN_BYTES = len(msgpack.packb({_TOKEN: bytes(_TOKEN_BYTES)}))  # a generation no writer is changing


def new_token() -> bytes:
    return os.urandom(_TOKEN_BYTES)


def new_generation() -> bytes:
    """A generation value with a fresh token and no writer."""
    return msgpack.packb({_TOKEN: new_token()})


def being_written(values, now_ms: int | None = None) -> bool:
    """True if a generation among ``values`` (None: missing) holds a writer's field that has not run out."""
    for value in values:
        if value is not None and len(value) > _PLAIN_BYTES and _live_writers(value, now_ms):
            return True
    return False


def _live_writers(value: bytes, now_ms: int | None) -> bool:
    try:
        fields = msgpack.unpackb(value)
    except Exception:  # not ours: treated as being written, so nothing is stored under it
        return True
    if not isinstance(fields, dict):
        return True
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return any(field != _TOKEN and (type(until) is not int or until > now_ms) for field, until in fields.items())


class Announcement:
    """A commit's invalidation while its database commit runs: what step 1 sent, and when."""

    __slots__ = ("invalidation", "keys", "field", "sent", "sent_ns")

    def __init__(self, invalidation: Invalidation, keys: dict[bytes, list[bytes]], field: str):
        self.invalidation = invalidation
        self.keys = keys  # hash tag -> generation keys
        self.field = field
        self.sent: list = []  # Submitted transactions of step 1; empty if it could not be sent
        self.sent_ns = time.monotonic_ns()


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
        self._confirms: list = []  # Submitted step 2 transactions whose replies were not read yet
        self._pid = os.getpid()

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

    def generations(self, keys: list[bytes], tags: list[bytes]) -> list:
        """The values of generation ``keys``, creating missing ones; if one is being written and this process
        has confirms on their way, they are waited for first (a process reads its own commits as done)."""
        values = self.create_missing(keys, self.read(keys), tags)
        if self._confirms and being_written(values):
            self._read_confirms(block=True)
            values = self.create_missing(keys, self.read(keys), tags)
        return values

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
                    transaction.set(key, new_generation(), ttl_ms=GENERATION_TTL_MS, nx=True)
                transaction.execute()
        return self.client.mget(keys)

    def publish(self, invalidation: Invalidation, field: str | None = None) -> None:
        """Replace the generations a committed transaction changed, waiting for ferricd (and drop ``field``, a
        writer's, from them); keep them for later if ferricd is away."""
        if not invalidation:
            return
        if not self.available():
            with self._lock:
                self._unpublished.merge(invalidation)
            return
        try:
            self._bump(invalidation, field)
        except FerricError as exc:
            with self._lock:
                self._unpublished.merge(invalidation)
            self.failed(exc)

    def announce(self, invalidation: Invalidation) -> Announcement:
        """Step 1 of a commit's publication, sent as the database is about to commit; ``confirm`` ends it."""
        keys = self._generation_keys(invalidation)
        announcement = Announcement(invalidation, keys, "w" + os.urandom(8).hex())
        if not keys or not self.available():
            return announcement  # confirm publishes (or keeps) it the usual way
        until_ms = time.time_ns() // 1_000_000 + PENDING_MS
        try:
            announcement.sent = self._patch_generations(keys, add=(announcement.field, until_ms))
        except FerricError as exc:
            self.failed(exc)  # the next commits publish (or keep) without trying ferricd twice each
            announcement.sent = []  # confirm publishes waiting
        return announcement

    def settle(self, announcement: Announcement) -> None:
        """Wait until the announce was applied, for a bare Connection whose database commit no event follows:
        if it failed (or the commit also replaces region generations), publish waiting now, before the
        database commits (then a reader may still store the old rows until the confirm, as nothing marks them
        being written)."""
        if (announcement.keys and not _applied(announcement)) or announcement.invalidation.everything:
            announcement.sent = []
            self.publish(announcement.invalidation)

    def confirm(self, announcement: Announcement) -> None:
        """Step 2, once the database committed (or rolled back): the writer's field goes, the tokens change."""
        self._read_confirms(block=False)
        invalidation, field = announcement.invalidation, announcement.field
        if not announcement.keys:
            self.publish(invalidation)  # "everything": region generations, which no announcement holds
            return
        if not _applied(announcement):
            self.publish(invalidation, field)  # step 1 may not have happened: replace them now, waiting
            return
        slow = time.monotonic_ns() - announcement.sent_ns > SLOW_COMMIT_MS * 1_000_000
        if slow or invalidation.everything or not self._still_marked(announcement):
            self.publish(invalidation, field)
            return
        try:
            confirms = self._patch_generations(announcement.keys, drop=field, create=False)
        except FerricError:
            self.publish(invalidation, field)
            return
        with self._lock:
            self._confirms.extend(confirms)
        self.stats.count("invalidations", [table for _, table in invalidation.tables])

    def _still_marked(self, announcement: Announcement) -> bool:
        """True if every generation announced still holds the writer's field, live by this process's clock.

        If one does not (evicted and created again, or a wall-clock step made the field run out), a reader
        may have stored what it read before the database commit under it: the confirm must then be applied
        before the commit returns. Read locally, after the database commit, so nothing later can be missed.
        """
        now_ms = time.time_ns() // 1_000_000
        keys = [key for tag_keys in announcement.keys.values() for key in tag_keys]
        for value in self.read(keys):
            try:
                until = msgpack.unpackb(value).get(announcement.field) if value is not None else None
            except Exception:
                return False
            if type(until) is not int or until <= now_ms:
                return False
        return True

    def _read_confirms(self, block: bool) -> None:
        """Read the replies of earlier confirms that arrived (all of them with ``block``, else only the oldest
        past _CONFIRMS_IN_FLIGHT): an error is logged, as the fields it left run out by themselves."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the replies are its parent's to read
                self._confirms, self._pid = [], os.getpid()
            confirms = self._confirms
            overflow = len(confirms) - (0 if block else _CONFIRMS_IN_FLIGHT)
            ready = [c for position, c in enumerate(confirms) if position < overflow or c.done()]
            if not ready:
                return
            self._confirms = [c for c in confirms if c not in ready]
        for confirm in ready:
            try:
                confirm.result()
            except FerricError as exc:
                self.warn("confirm-failed", f"a commit's invalidation was published, but clearing its mark failed "
                                            f"({type(exc).__name__}: {exc}); its tables are not cached for up to "
                                            f"{PENDING_MS // 1000} s")

    def _bump(self, invalidation: Invalidation, field: str | None = None) -> None:
        """Give every generation the invalidation names a fresh token, waiting: one transaction per shard.

        Generations of one tenant share a hash tag, so a commit writing to one database is one request to
        one shard whatever the number of tables and rows. Nothing needs the bumps to be atomic: a reader
        that sees some of them and not others stores its result under a mix no later reader sees.
        """
        keys = self._generation_keys(invalidation)
        if invalidation.everything:
            self._add_regions(keys, self.regions())
        _wait_for_all(self._patch_generations(keys, drop=field))
        self.stats.count("invalidations", [table for _, table in invalidation.tables])

    def _generation_keys(self, invalidation: Invalidation) -> dict[bytes, list[bytes]]:
        """The generation keys an invalidation changes (region generations aside), by hash tag."""
        layout = self.layout
        keys: dict[bytes, list[bytes]] = defaultdict(list)
        for (tenant, table), pks in invalidation.rows.items():
            keys[layout.tenant_tag(tenant)].extend(layout.row_generation(tenant, table, pk) for pk in pks)
        for tenant, table in invalidation.tables:
            keys[layout.tenant_tag(tenant)].append(layout.table_generation(tenant, table))
        for tenant, table in invalidation.bulk:
            keys[layout.tenant_tag(tenant)].append(layout.bulk_generation(tenant, table))
        return keys

    def _add_regions(self, keys: dict[bytes, list[bytes]], regions) -> None:
        for region in regions:
            key = self.layout.region_generation(region)
            keys[_tag_of(key)].append(key)

    def _patch_generations(self, keys: dict[bytes, list[bytes]], add: tuple[str, int] | None = None,
                           drop: str | None = None, create: bool = True) -> list:
        """Give each of ``keys`` a fresh token, and the writer field ``add`` (name, until_ms) or not the field
        ``drop``: one transaction per hash tag (and per _KEYS_PER_REQUEST keys), submitted without waiting.
        Without ``create`` a missing generation stays missing."""
        extra = dict([add]) if add is not None else {}
        delete = [drop] if drop is not None else []
        submitted = []
        for tag, tag_keys in keys.items():
            for start in range(0, len(tag_keys), _KEYS_PER_REQUEST):
                with self.client.transaction(tag) as transaction:
                    for key in tag_keys[start:start + _KEYS_PER_REQUEST]:
                        transaction.patch(key, set={_TOKEN: new_token(), **extra}, delete=delete,
                                          ttl_ms=GENERATION_TTL_MS, create=create)
                    submitted.append(transaction.submit())
        return submitted

    def bump_regions(self, regions) -> None:
        keys: dict[bytes, list[bytes]] = defaultdict(list)
        self._add_regions(keys, regions)
        _wait_for_all(self._patch_generations(keys))

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


def _applied(announcement: Announcement) -> bool:
    """True once ferricd applied the whole announce (False if it was not sent, or failed)."""
    try:
        _wait_for_all(announcement.sent)
    except FerricError:
        return False
    return bool(announcement.sent)


def _wait_for_all(submitted: list) -> None:
    """Read every reply; the first error raises."""
    for one in submitted:
        one.result()


def _tag_of(key: bytes) -> bytes:
    """The hash tag of one of our keys (the text between the first braces)."""
    start = key.index(b"{") + 1
    return key[start:key.index(b"}", start)]
