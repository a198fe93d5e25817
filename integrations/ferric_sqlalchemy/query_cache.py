"""QueryCache: a Session's selects served from ferricd, and invalidated by every committed write.

``cache.attach(session_factory)`` registers the listeners (nothing happens at
import). From then on each select the Session runs is looked up by its shape,
its parameters, its tenant and the generations of everything it reads; a hit
returns ordinary persistent objects without touching the database, a miss runs
the statement and stores the rows. docs/sqlalchemy.md describes the protocol.
"""

import datetime
import threading
from hashlib import blake2b

import msgpack
from sqlalchemy import event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapper, Session, scoped_session, sessionmaker

from ferric_ipc import FerricError

from ferric_sqlalchemy import entries, orm_internals
from ferric_sqlalchemy.cache_store import CacheStore, being_written
from ferric_sqlalchemy.cacheable import DEFAULT_REGION, STRATEGIES, STRICTNESS
from ferric_sqlalchemy.catalog import Catalog, canonical_pk
from ferric_sqlalchemy.codec import ValueCodec
from ferric_sqlalchemy.errors import NotCacheableError, NotEncodable
from ferric_sqlalchemy.invalidation import Invalidation
from ferric_sqlalchemy.key_layout import KeyLayout
from ferric_sqlalchemy.recording import Recorder
from ferric_sqlalchemy.shapes import ShapeCache
from ferric_sqlalchemy.stats import CacheStats
from ferric_sqlalchemy.tenant import TenantCache
from ferric_sqlalchemy.throttled_log import RateLimitedWarnings, logger
from ferric_sqlalchemy.tuple_keys import pack
from ferric_sqlalchemy.write_tracking import WriteTracker, table_names

#: The execution option, and its modes besides True (use the cache) and False (bypass it).
OPTION = "ferric_cache"
REFRESH, CACHE_ONLY = "refresh", "cache_only"
_READ = "read"
_FRESH_LEVELS = frozenset({"READ COMMITTED", "READ UNCOMMITTED", "AUTOCOMMIT"})


class _Plan:
    """How one execution is looked up: its generation keys, its entry, and the strategy that applies.

    ``dependencies``: the generations the entry depends on; ``keys``: those and, for a get, the stamps a
    cached "no such row" carries; ``read_keys``: the dependencies and the entry, read by one local mget.
    """

    __slots__ = ("tenant", "shape", "kind", "selector", "keys", "tags", "dependencies", "read_keys", "entry",
                 "signature", "strategy", "ttl_ms", "tables")


class QueryCache:
    """A second-level cache for SQLAlchemy Sessions, kept in ferricd.

    ``client``: a ``ferric_ipc.Client`` (default: one for $FERRIC_RUN_DIR, made
    on first use); ``prefix``: the start of every key (the keyspace to configure
    in ferricd); ``default_ttl_ms``: entry lifetime for classes that set no
    ``ttl``. ``lease_ttl_ms`` bounds how long a process that died while
    computing a missing entry holds the others off; ``lease_wait_ms`` is how long
    the others wait for it before they query the database themselves.
    """

    def __init__(self, client=None, prefix="sa:", default_ttl_ms=300_000, lease_ttl_ms=10_000, lease_wait_ms=2_000):
        for name, value in (("default_ttl_ms", default_ttl_ms), ("lease_ttl_ms", lease_ttl_ms),
                            ("lease_wait_ms", lease_wait_ms)):
            if type(value) is not int or value <= 0:
                raise TypeError(f"{name} must be a positive int (milliseconds), not {value!r}")
        self.default_ttl_ms = default_ttl_ms
        self.lease_ttl_ms = lease_ttl_ms
        self.lease_wait_ms = lease_wait_ms
        self.catalog = Catalog()
        self.codec = ValueCodec(self.catalog.enum_classes)
        self.layout = KeyLayout(prefix, self.codec)
        self.tenants = TenantCache()
        self.shapes = ShapeCache()
        self._stats = CacheStats()
        self._warn = RateLimitedWarnings()
        self.store = CacheStore(client, self.layout, self._stats, self._warn, self._regions)
        self.recorder = Recorder(self.shapes)
        self.tracker = WriteTracker(self.catalog, self.tenants, self.store, self._warn,
                                    ("ferric_sqlalchemy", id(self), object()))
        self.tracker.recorder = self.recorder
        self._targets: list = []
        self._lock = threading.Lock()
        self.row_plans: dict = {}  # (_ShapeLayout, primary key) -> (epoch, its keys): see _ShapeLayout.row_plan

    # -- attaching ------------------------------------------------------------------------------

    def attach(self, target) -> None:
        """Cache the selects of ``target`` (a sessionmaker, scoped_session, Session subclass or Session)
        and track the writes of every connection in this process; attaching twice does nothing."""
        if not (isinstance(target, (sessionmaker, scoped_session, Session))
                or (isinstance(target, type) and issubclass(target, Session))):
            raise TypeError(f"attach takes a sessionmaker, scoped_session, Session subclass or Session, "
                            f"not {target!r}")
        with self._lock:
            if any(target is attached for attached in self._targets):
                return
            if not self._targets:
                self.tracker.listen_engines()
                event.listen(Mapper, "load", self.recorder.loaded, raw=True)  # raw: given the InstanceState
                event.listen(Mapper, "refresh", self.recorder.loaded, raw=True)
                event.listen(Mapper, "after_configured", self.catalog.mappers_changed)
            event.listen(target, "do_orm_execute", self._do_orm_execute)
            self.tracker.listen_sessions(target)
            self._targets.append(target)

    def detach(self, target) -> None:
        """Undo ``attach(target)``; when nothing is attached any more, stop tracking writes too."""
        with self._lock:
            if not any(target is attached for attached in self._targets):
                return
            self._targets = [attached for attached in self._targets if attached is not target]
            if event.contains(target, "do_orm_execute", self._do_orm_execute):
                event.remove(target, "do_orm_execute", self._do_orm_execute)
            self.tracker.unlisten_sessions(target)
            if not self._targets:
                self.tracker.unlisten_engines()
                for name, fn in (("load", self.recorder.loaded), ("refresh", self.recorder.loaded),
                                 ("after_configured", self.catalog.mappers_changed)):
                    if event.contains(Mapper, name, fn):
                        event.remove(Mapper, name, fn)

    # -- explicit invalidation and statistics -----------------------------------------------------

    def invalidate(self, model, pk=None, *, bind=None) -> None:
        """Drop what is cached of ``model`` (a mapped class): one row's get if ``pk`` is given, and its queries.

        For writes the cache cannot see (another program, raw DBAPI calls). The
        tenant is ``bind``'s (an Engine, Connection or Session), or, without
        one, every database this process has used.
        """
        mapper = sa_inspect(model, raiseerr=False)
        if not isinstance(mapper, Mapper):
            raise TypeError(f"invalidate takes a mapped class, not {model!r}")
        invalidation = Invalidation()
        for tenant in self._tenants_for(bind):
            if pk is None:
                for table in mapper.tables:
                    invalidation.add_bulk(tenant, table.fullname)
                continue
            values = tuple(pk) if isinstance(pk, (tuple, list)) else (pk,)
            row = canonical_pk(mapper.primary_key, values)
            for table in mapper.tables:
                if row is None:
                    invalidation.add_bulk(tenant, table.fullname)
                else:
                    invalidation.add_table(tenant, table.fullname)
            if row is not None:
                invalidation.add_row(tenant, mapper.base_mapper.local_table.fullname, row)  # type: ignore[attr-defined]
        self.store.publish(invalidation)

    def invalidate_tables(self, tables, *, bind=None) -> None:
        """Drop everything cached that reads ``tables`` (mapped classes, Tables or table names)."""
        invalidation = Invalidation()
        names = table_names(tables)
        for tenant in self._tenants_for(bind):
            for name in names:
                invalidation.add_bulk(tenant, name)
        self.store.publish(invalidation)

    def invalidate_region(self, name: str) -> None:
        """Drop every entry that reads a table of a class in region ``name``, in every database."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a region is a non-empty str, not {name!r}")
        if not self.store.available():
            return  # the first contact after the outage replaces every region's generation anyway
        try:
            self.store.bump_regions([name])
        except FerricError as exc:
            self.store.failed(exc)

    def stats(self) -> dict:
        """This process's counts: hits, misses, stores, invalidations, bypasses, errors, and per table."""
        return self._stats.snapshot()

    def _tenants_for(self, bind):
        if bind is not None:
            if isinstance(bind, Session):
                bind = bind.get_bind()
            return [self.tenants.of(bind, None)]
        known = self.tenants.known()
        if not known:
            raise ValueError("this process has not used a database through the cache yet: pass bind=engine")
        return known

    def _regions(self):
        self.catalog.refresh()
        return sorted({DEFAULT_REGION} | {region for info in self.catalog.tables.values() for region in info.regions})

    # -- the select hook ----------------------------------------------------------------------------

    def _do_orm_execute(self, state):
        options = state.execution_options
        mode, ttl_ms = _mode(options.get(OPTION, True))
        if mode is None:
            return None
        if not state.is_select or state.is_column_load:
            if mode == CACHE_ONLY:
                raise NotCacheableError("ferric_cache='cache_only' applies to SELECTs of mapped classes and their "
                                        "columns, not to this statement")
            return None
        if options.get("yield_per") or options.get("stream_results") or options.get("populate_existing"):
            return self._not_cached(mode, "streamed results and populate_existing go to the database")
        if any(getattr(listener, "__self__", None) is not self for listener in orm_internals.listeners_after(state)):
            self._warn("listener-order", "a do_orm_execute listener registered after cache.attach() runs after the "
                                         "cache and may rewrite statements, so the cache is bypassed for them: "
                                         "register it before attaching the cache")
            return self._not_cached(mode, "a do_orm_execute listener registered after the cache would run after it")
        plan = self._plan(state, ttl_ms)
        if isinstance(plan, str):
            return self._not_cached(mode, plan)
        if mode != CACHE_ONLY and self._transaction_wrote(state.session, plan):
            self._stats.count("bypasses", plan.tables)
            return None
        if plan.entry is None or not self.store.available():
            return self._empty(state, plan) if mode == CACHE_ONLY else None
        try:
            values = self.store.read(plan.read_keys)  # the generations and the entry: one local mget
            data = values.pop()
            if data is not None and mode != REFRESH and None not in values:
                start = entries.header(plan.signature, values)
                if data.startswith(start):
                    result = self._hit(state, plan, data, len(start))
                    if result is not None:
                        return result
        except FerricError as exc:
            self.store.failed(exc)
            return self._empty(state, plan) if mode == CACHE_ONLY else None
        self._stats.count("misses", plan.tables)
        if mode == CACHE_ONLY:
            return self._empty(state, plan)
        return self._miss(state, plan, values, lease=mode != REFRESH and plan.strategy.lease)

    def _miss(self, state, plan, values, lease):
        """Run the statement and store its rows; with ``lease``, unless another process already is."""
        if not plan.strategy.generations_before_query:
            return self._compute(state, plan, None)  # nonstrict: generations read after the query
        try:
            # Read again, with the stamps a cached "no such row" will carry: all of them before the query.
            values = self.store.generations(plan.keys, plan.tags)
            if None in values[:len(plan.dependencies)] or being_written(values):
                return self._compute(state, plan, None, store=False)  # a commit is under way: do not store
            entry = plan.entry
            if not lease:
                return self._compute(state, plan, values)
            start = entries.header(plan.signature, values[:len(plan.dependencies)])
            taken = self.store.lease(entry.lease_key, self.lease_ttl_ms)
            if not taken.acquired:
                data = self.store.wait_for(entry.key, entry.lease_key, self.lease_wait_ms, start)
                result = self._hit(state, plan, data, len(start)) if data is not None else None
                return result if result is not None else self._compute(state, plan, values)
            data = self.store.get(entry.key)  # stored between our lookup and our lease
            if data is not None and data.startswith(start):
                result = self._hit(state, plan, data, len(start))
                if result is not None:
                    self.store.release(entry.lease_key, taken.token)
                    return result
        except FerricError as exc:
            self.store.failed(exc)
            return None
        return self._compute(state, plan, values, lease_key=entry.lease_key, token=taken.token)

    def _compute(self, state, plan, values, store=True, lease_key=None, token=None):
        """Run the statement; store the rows if every rule allows it. Returns the result either way."""
        stored = False
        try:
            with self.recorder.record() as recording:
                result = state.invoke_statement()
                if orm_internals.requires_unique(result):
                    result = result.unique()  # joined eager collections: cached results come back unique
                keys = list(result.keys())
                attributes = {key: result._attributes[key] for key in ("filtered", "is_single_entity")
                              if key in result._attributes}
                rows = [tuple(row) for row in result.all()]
            if store:
                stored = self._store(state, plan, values, keys, attributes, rows, recording, lease_key, token)
        finally:
            if token is not None and not stored:
                try:
                    self.store.release(lease_key, token)
                except FerricError as exc:
                    self.store.failed(exc)
        return orm_internals.build_result(_metadata(plan, keys), attributes, rows)

    def _store(self, state, plan, values, keys, attributes, rows, recording, lease_key, token) -> bool:
        reason = self._unstorable(state, plan, recording)
        if reason is None:
            try:
                if values is None:  # nonstrict_read_write: the generations as they are now, after the query
                    values = self.store.generations(plan.keys, plan.tags)
                    if None in values[:len(plan.dependencies)] or being_written(values):
                        return False
                stamp = _stamp(values[len(plan.dependencies):]) if plan.kind == "get" and not rows else None
                if plan.kind == "get" and rows:
                    self._check_identity(plan, rows)
                data = entries.header(plan.signature, values[:len(plan.dependencies)]) + \
                    entries.encode(self.codec, self.catalog, keys, attributes, rows, recording.fresh, stamp)
                entry = plan.entry
                done = self.store.store(entry.key, data, plan.ttl_ms, entry.tag, lease_key, token)
                if done:
                    self._stats.count("stores", plan.tables)
                return done
            except (entries.NotStorable, NotEncodable) as exc:
                reason = str(exc)
            except FerricError as exc:
                self.store.failed(exc)
                return False
        logger.debug("not cached: %s", reason)
        self._stats.count("bypasses", plan.tables)
        return False

    def _unstorable(self, state, plan, recording) -> str | None:
        """Why the rows just computed must not be stored, or None."""
        if recording.reason is not None:
            return recording.reason
        if not recording.statements:
            return "no statement ran"
        shape = plan.shape
        known, was_lookup = shape.tables, shape.row_lookup is not None
        shape.learn(recording.statements[0], recording.later_tables)
        if not recording.tables <= known or (plan.kind == "get" and was_lookup and shape.row_lookup is None):
            return "the load read tables whose generations were not read first (learned for next time)"
        if self._transaction_wrote(state.session, plan, recording.tables):
            return "the transaction wrote a table this result reads"
        connection = state.session.connection(bind_arguments=state.bind_arguments)
        writes = self.tracker.connection_writes(connection)
        if not _snapshot_is_fresh(connection, writes.statements - recording.executed,
                                  bool(self.tracker.written_in_transaction(state.session))):
            return "the transaction's snapshot may be older than the generations read"
        return None

    def _check_identity(self, plan, rows) -> None:
        """A get's entry is named by the key asked for, and invalidated by the row generation of the key the
        database returned: they must be the same key, byte for byte. A database may match another (a
        case-insensitive collation, CHAR padding, Decimal("1.0") for 1.00): such a result is not stored."""
        row = rows[0][0]
        try:
            identity = sa_inspect(row).identity
        except Exception:  # not a mapped object: nothing to compare
            return
        if identity is None or self.layout.pk_part(tuple(identity)) != plan.selector:
            raise entries.NotStorable(f"the database returned key {identity!r} for key {plan.selector!r}")

    def _hit(self, state, plan, data, offset):
        """The result an entry holds (its value past the ``offset`` bytes of header), in ``state``'s Session;
        None if the entry cannot be used."""
        try:
            keys, attributes, entity_columns, rows, objects, stamp = entries.decode(self.codec, data, offset)
            if stamp is not None and stamp != _stamp(self.store.read(plan.keys[len(plan.dependencies):])):
                return None  # a cached "no such row", and a row has been inserted since
            # The recorder's load listener is left out: an instance built here is recorded by served() below.
            rows, objects = entries.rebuild(state.session, self.catalog, entity_columns, rows, objects,
                                            self.recorder.loaded)
        except entries.CorruptEntry:
            return None
        if self.recorder.current() is not None:  # an eager load served inside a load being computed
            self.recorder.served(plan.tables, objects)
        self._stats.count("hits", plan.tables)
        return orm_internals.build_result(_metadata(plan, keys), attributes, rows)

    def _empty(self, state, plan):
        try:
            keys, extras, attributes = orm_internals.result_shape(state.statement)
        except Exception:
            keys, extras, attributes = list(state.statement.selected_columns.keys()), None, {}
        return orm_internals.build_result(orm_internals.result_metadata(keys, extras), attributes, [])

    def _not_cached(self, mode, reason):
        if mode == CACHE_ONLY:
            raise NotCacheableError(f"ferric_cache='cache_only' on a statement the cache never holds: {reason}")
        logger.debug("not cached: %s", reason)
        self._stats.count("bypasses")
        return None

    def _transaction_wrote(self, session, plan, tables=None) -> bool:
        """True if the session's transaction wrote (or would autoflush) a table the statement reads."""
        tables = plan.tables if tables is None else tables
        written = self.tracker.written_in_transaction(session)
        if written and any((plan.tenant, table) in written for table in tables):
            return True
        if session.autoflush and orm_internals.has_pending_changes(session):
            pending = {table.fullname for obj in (*session.new, *session.dirty, *session.deleted)
                       for table in sa_inspect(obj).mapper.tables}
            return bool(pending & set(tables))
        return False

    # -- plans and keys ----------------------------------------------------------------------------------

    def _plan(self, state, ttl_ms):
        """A _Plan for this execution, or a str saying why it is not cached."""
        statement = state.statement
        cache_key = statement._generate_cache_key()
        if cache_key is None:
            return "SQLAlchemy gives this statement no cache key"
        bind = state.session.get_bind(**state.bind_arguments)
        shape = self.shapes.shape_of(statement, cache_key, bind.dialect)
        if shape.reason is not None:
            return shape.reason
        tenant = self.tenants.of(bind, state.execution_options.get("schema_translate_map"))
        layout = shape.layouts.get(tenant)
        if layout is None or layout.catalog_version != self.catalog.version():
            layout = shape.layouts[tenant] = _ShapeLayout(self, shape, tenant)
        if layout.reason is not None:
            return layout.reason
        try:
            epoch = self.store.epoch()
        except FerricError as exc:
            self.store.failed(exc)  # the caller sees ferricd unavailable and steps aside
            epoch = None
        plan = _Plan()
        plan.tenant, plan.shape, plan.tables, plan.strategy = tenant, shape, shape.tables, layout.strategy
        plan.ttl_ms = ttl_ms or layout.ttl_ms or self.default_ttl_ms
        plan.entry = plan.read_keys = None
        if epoch is None:
            return plan
        lookup = shape.row_lookup
        parameters = state.parameters or {}
        bindparams = cache_key.bindparams
        if lookup is not None and layout.get_head is not None and len(bindparams) == len(lookup.positions):
            # Only the primary key is a parameter (a filter added by an option would be another one).
            pk = tuple([parameters[bind.key] if bind.key in parameters else bind.effective_value
                        for bind in [bindparams[i] for i in lookup.positions]])
            if lookup.python_types is not None and tuple(map(type, pk)) == lookup.python_types:
                row = layout.row_plan(self, pk, epoch, lookup.exact_types)
                if row is not None:
                    plan.kind = "get"
                    plan.selector, plan.dependencies, plan.keys, plan.read_keys, plan.entry = row
                    plan.tags = layout.get_tags
                    plan.signature = layout.get_signature
                    return plan
        values = _parameter_values(cache_key, parameters)
        try:
            selector = blake2b(self.codec.dumps(values), digest_size=16).digest()
        except NotEncodable as exc:
            return f"a parameter has no exact form in the cache: {exc}"
        plan.kind, plan.selector = "query", selector
        plan.dependencies = plan.keys = layout.query_keys
        plan.entry = self.layout.entry(layout.query_head, pack((selector,)), epoch)
        plan.read_keys = layout.query_keys + [plan.entry.key]
        plan.tags = layout.query_tags
        plan.signature = layout.query_signature
        return plan


class _ShapeLayout:
    """The keys of one statement shape for one tenant that do not depend on its parameters (made once)."""

    def __init__(self, cache, shape, tenant):
        self.catalog_version = cache.catalog.version()
        self.reason = None
        self.get_head = None
        infos = []
        for table in sorted(shape.tables):
            info = cache.catalog.table(table)
            if info is None:
                self.reason = f"it reads {table}, which no @cacheable class maps"
                return
            infos.append(info)
        strategies = {info.strategy for info in infos}
        self.strategy = STRATEGIES[next(name for name in STRICTNESS if name in strategies)]
        ttls = [info.ttl_ms for info in infos if info.ttl_ms is not None]
        self.ttl_ms = min(ttls) if ttls else None
        keys = cache.layout
        self.tenant_tag = keys.tenant_tag(tenant)
        regions = [keys.region_generation(region) for region in sorted({r for i in infos for r in i.regions})]
        self.query_keys = regions + [keys.table_generation(tenant, table) for table in sorted(shape.tables)]
        self.query_tags = [_tag_of(key) for key in self.query_keys]
        self.query_signature = blake2b(b"".join(self.query_keys), digest_size=16).digest()
        self.query_head = keys.entry_head(tenant, shape.primary_table, "query", shape.digest)
        lookup = shape.row_lookup
        if lookup is None:
            return
        own = lookup.own_tables
        self.get_head = keys.entry_head(tenant, lookup.table, "get", shape.digest)
        self.get_before_row = regions + [keys.bulk_generation(tenant, table) for table in own]
        self.row_head = keys.row_generation_head(tenant, lookup.table) if self.strategy.row_generations else None
        self.get_after_row = [keys.table_generation(tenant, table) for table in sorted(shape.tables - set(own))]
        self.stamps = [keys.table_generation(tenant, table) for table in own]
        row = [self.tenant_tag] if self.row_head is not None else []  # row generations carry the tenant's tag
        self.get_tags = [_tag_of(key) for key in self.get_before_row] + row + \
            [_tag_of(key) for key in self.get_after_row + self.stamps]
        row_marker = b"row" if self.row_head is not None else b""
        self.get_signature = blake2b(b"".join(self.get_before_row + [row_marker] + self.get_after_row),
                                     digest_size=16).digest()

    def row_plan(self, cache, pk, epoch, remember):
        """``(selector, dependencies, keys, read_keys, entry)`` of a get of ``pk`` (its values of exactly
        their columns' types); None if a value has no exact form. With ``remember`` (the key's types are
        ints, strs, bytes or UUIDs, whose equal values are encoded alike) it is kept per primary key."""
        remembered = cache.row_plans
        if remember:
            found = remembered.get((self, pk))
            if found is not None and found[0] == epoch:
                return found[1]
        layout = cache.layout
        try:
            selector = layout.pk_part(pk)
        except NotEncodable:
            return None
        selector_bytes = pack((selector,))
        if self.row_head is None:
            dependencies = self.get_before_row + self.get_after_row
        else:
            dependencies = self.get_before_row + [self.row_head + selector_bytes] + self.get_after_row
        entry = layout.entry(self.get_head, selector_bytes, epoch)
        row = (selector, dependencies, dependencies + self.stamps, dependencies + [entry.key], entry)
        if remember:
            if len(remembered) >= ROW_PLANS:
                remembered.clear()
            remembered[self, pk] = (epoch, row)
        return row


#: Keys of gets remembered per process (about 1 KB each), by statement shape, tenant and primary key.
ROW_PLANS = 10_000


def _stamp(table_generations) -> bytes:
    """What a cached "no such row" holds for: its tables' generations (any insert into them ends it)."""
    return blake2b(msgpack.packb(table_generations), digest_size=16).digest()


def _tag_of(key: bytes) -> bytes:
    """The hash tag of one of our keys (the text between the first braces)."""
    start = key.index(b"{") + 1
    return key[start:key.index(b"}", start)]


def _metadata(plan, keys):
    """Result metadata for ``keys`` of the plan's shape, made once per shape and column names."""
    shape = plan.shape
    key = tuple(keys)
    metadata = shape.metadata.get(key)
    if metadata is None:
        extras = shape.extras if shape.extras is not None and len(shape.extras) == len(keys) else None
        metadata = shape.metadata[key] = orm_internals.result_metadata(keys, extras)
    return metadata


def _parameter_values(cache_key, parameters) -> list:
    """The statement's parameter values in the order of its cache key's bound parameters."""
    parameters = parameters or {}
    if not cache_key.bindparams:
        return [(key, parameters[key]) for key in sorted(parameters)] if parameters else []
    return [parameters[bind.key] if bind.key in parameters else bind.effective_value
            for bind in cache_key.bindparams]


def _mode(option):
    """(mode, ttl_ms) for a ``ferric_cache`` execution option value; (None, None) to bypass."""
    if option is True or option is None:
        return _READ, None
    if option is False:
        return None, None
    if option in (REFRESH, CACHE_ONLY):
        return option, None
    if isinstance(option, dict) and set(option) == {"ttl"}:
        ttl = option["ttl"]
        if isinstance(ttl, datetime.timedelta):
            ttl = ttl // datetime.timedelta(milliseconds=1)
        if type(ttl) is not int or ttl <= 0:
            raise TypeError(f"ferric_cache={{'ttl': ...}} takes positive milliseconds or a timedelta, not {ttl!r}")
        return _READ, ttl
    raise ValueError(f"ferric_cache must be True, False, 'refresh', 'cache_only' or {{'ttl': ms}}, not {option!r}")


def _snapshot_is_fresh(connection, statements_before: int, wrote: bool) -> bool:
    """True if the query just run saw every commit made before it started (so its rows are not older than
    the generations read before it). True for the first statement of a transaction, and for every statement
    at READ COMMITTED; SQLite reads outside a transaction, or inside one holding the write lock, see the latest."""
    if statements_before <= 0:
        return True
    level = connection.get_execution_options().get("isolation_level") or connection.default_isolation_level
    if str(level).upper() in _FRESH_LEVELS:
        return True
    if connection.dialect.name == "sqlite":
        driver = connection.connection.driver_connection
        return not getattr(driver, "in_transaction", True) or wrote
    return False
