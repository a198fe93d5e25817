"""Which tables and rows a transaction wrote, announced as its database commits and confirmed once it has.

Writes are collected per database connection, because every write path ends
there: ORM flushes, bulk ORM ``update()``/``delete()``, Core DML through a
Session or straight on a Connection, ``executemany`` inserts, and text SQL.
Each open transaction level (the transaction, then one per savepoint) has its
own Invalidation: a savepoint rolled back drops its own, one released merges
it into its parent, a rollback drops them all, and a commit announces them
(``CacheStore.announce``: from then on no reader stores what it reads of them)
just before the database commits, and confirms them once it has:

- for a Session's connection, in ``after_commit``, before ``Session.commit()``
  returns;
- for a Connection used without a Session (SQLAlchemy has no event after a
  Connection's commit), when it next begins or goes back to the pool, which for
  ``with engine.begin():`` is before the block exits; its announce is waited
  for before the database commits, as nothing runs between that commit and
  ``conn.commit()`` returning;
- for a driver in autocommit mode, right after each statement (published
  waiting, as there is no commit to overlap).

The ORM flush names rows: its own statements on a table are recorded as the
rows the flush wrote (from the unit of work's states) instead of the whole
table, so writing one user invalidates that user's cached get, not every get.
"""

import re
from itertools import chain

from sqlalchemy import event, inspect as sa_inspect
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool
from sqlalchemy.sql import visitors
from sqlalchemy.sql.ddl import ExecutableDDLElement
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import TableClause

from ferric_sqlalchemy.catalog import canonical_pk
from ferric_sqlalchemy.errors import ReadOnlyEntityError
from ferric_sqlalchemy.invalidation import Invalidation

# Text that starts with one of these words reads (or controls a transaction); anything else may write.
_READING_TEXT = re.compile(
    r"\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*(select|show|explain|pragma|values|describe|set|begin|commit|rollback"
    r"|savepoint|release|with)\b", re.IGNORECASE | re.DOTALL)
_WRITING_WORD = re.compile(r"\b(insert|update|delete|merge)\b", re.IGNORECASE)


class ConnectionWrites:
    """Writes of one pooled connection's open transaction, by level, and commits announced but not confirmed yet."""

    __slots__ = ("frames", "savepoints", "announced", "autocommitted", "owner", "statements")

    def __init__(self):
        self.frames: list[Invalidation] = []  # the transaction, then one per open savepoint
        self.savepoints: list[str] = []
        self.announced: list = []  # Announcements of commits not confirmed yet
        self.autocommitted = Invalidation()  # written by a driver in autocommit mode: published after the statement
        self.owner: SessionWrites | None = None
        self.statements = 0  # statements run since the transaction began

    def current(self) -> Invalidation:
        if not self.frames:
            self.frames.append(Invalidation())
        return self.frames[-1]


class SessionWrites:
    """A Session's side of the tracking: its connections, and what its open transaction wrote."""

    __slots__ = ("connections", "only", "flushing", "flushed_tables", "written")

    def __init__(self):
        self.connections: list[ConnectionWrites] = []
        # (writes, tenant) of the transaction's connection while it has just one: every flush wrote there
        self.only: tuple[ConnectionWrites, bytes] | None = None
        self.flushing = False
        self.flushed_tables: list[tuple[ConnectionWrites, bytes, str]] = []  # the flush's own statements
        self.written: set[tuple[bytes, str]] = set()  # (tenant, table) written in the open transaction


class WriteTracker:
    """Listens to Engine, Pool and Session events and tells ``store`` (a CacheStore) what each commit wrote."""

    def __init__(self, catalog, tenants, store, warn, info_key):
        self.catalog = catalog
        self.tenants = tenants
        self.store = store
        self.warn = warn
        self.info_key = info_key
        self.recorder = None  # set by the QueryCache: records statements run while a result is computed
        self._engine_listeners = [
            (Engine, "before_execute", self._before_execute),
            (Engine, "after_execute", self._after_execute),
            (Engine, "before_cursor_execute", self._before_cursor_execute),
            (Engine, "begin", self._begin),
            (Engine, "commit", self._commit),
            (Engine, "rollback", self._rollback),
            (Engine, "savepoint", self._savepoint),
            (Engine, "rollback_savepoint", self._rollback_savepoint),
            (Engine, "release_savepoint", self._release_savepoint),
            (Pool, "checkin", self._checkin),
            (Pool, "invalidate", self._pool_invalidate),
        ]
        self._session_listeners = [
            ("after_begin", self._after_begin),
            ("before_flush", self._before_flush),
            ("after_flush", self._after_flush),
            ("after_commit", self._after_commit),
            ("after_rollback", self._after_rollback),
            ("after_soft_rollback", self._after_soft_rollback),
            ("after_transaction_end", self._after_transaction_end),
        ]

    # -- registration ---------------------------------------------------------------------

    def listen_engines(self):
        for target, name, fn in self._engine_listeners:
            event.listen(target, name, fn)

    def unlisten_engines(self):
        for target, name, fn in self._engine_listeners:
            if event.contains(target, name, fn):
                event.remove(target, name, fn)

    def listen_sessions(self, target):
        for name, fn in self._session_listeners:
            event.listen(target, name, fn)

    def unlisten_sessions(self, target):
        for name, fn in self._session_listeners:
            if event.contains(target, name, fn):
                event.remove(target, name, fn)

    # -- state ----------------------------------------------------------------------------------

    def connection_writes(self, connection) -> ConnectionWrites:
        info = connection.info
        writes = info.get(self.info_key)
        if writes is None:
            writes = info[self.info_key] = ConnectionWrites()
        return writes

    def session_writes(self, session) -> SessionWrites:
        writes = session.info.get(self.info_key)
        if writes is None:
            writes = session.info[self.info_key] = SessionWrites()
        return writes

    def written_in_transaction(self, session) -> set:
        """(tenant, table) pairs the session's open transaction has written (its reads of them bypass the cache)."""
        writes = session.info.get(self.info_key)
        return writes.written if writes is not None else set()

    def _flush_out(self, writes: ConnectionWrites) -> None:
        """Confirm what the connection's last commit announced: the database has committed (or failed to)."""
        if writes.announced:
            announced, writes.announced = writes.announced, []
            for announcement in announced:
                self.store.confirm(announcement)

    # -- connection events ----------------------------------------------------------------------

    def _begin(self, connection):
        writes = self.connection_writes(connection)
        self._flush_out(writes)  # a bare connection's last commit, confirmed before anything new starts
        if not writes.frames:
            # Frames left since the last commit or rollback hold the statement whose execution autobegins
            # this transaction (before_execute fires before the begin): they are this transaction's.
            writes.frames = [Invalidation()]
        writes.savepoints = []
        writes.statements = 0

    def _commit(self, connection):
        writes = connection.info.get(self.info_key)
        if writes is None or not writes.frames:
            return
        committed = Invalidation()
        for frame in writes.frames:
            committed.merge(frame)
        writes.frames, writes.savepoints = [], []
        if committed:
            # Sent without waiting: the database commits meanwhile. Confirmed by the Session's after_commit,
            # or when the connection is next used or returned (``_begin``, ``_checkin``).
            announcement = self.store.announce(committed)
            writes.announced.append(announcement)
            if writes.owner is None:
                # No Session: nothing runs between the database commit and conn.commit() returning, so the
                # announce must be applied before the database commits.
                self.store.settle(announcement)

    def _rollback(self, connection):
        writes = connection.info.get(self.info_key)
        if writes is not None:
            writes.frames, writes.savepoints = [], []

    def _savepoint(self, connection, name):
        writes = self.connection_writes(connection)
        writes.current()
        writes.frames.append(Invalidation())
        writes.savepoints.append(name)

    def _rollback_savepoint(self, connection, name, context):
        writes = connection.info.get(self.info_key)
        depth = _savepoint_depth(writes, name)
        if depth is not None:
            del writes.savepoints[depth:]
            del writes.frames[depth + 1:]

    def _release_savepoint(self, connection, name, context):
        writes = connection.info.get(self.info_key)
        depth = _savepoint_depth(writes, name)
        if depth is not None:
            for frame in writes.frames[depth + 1:]:
                writes.frames[depth].merge(frame)
            del writes.savepoints[depth:]
            del writes.frames[depth + 1:]

    def _checkin(self, dbapi_connection, record):
        writes = record.info.get(self.info_key) if record is not None else None
        if writes is not None:
            self._flush_out(writes)
            writes.frames, writes.savepoints, writes.owner = [], [], None

    def _pool_invalidate(self, dbapi_connection, record, exception):
        writes = record.info.get(self.info_key) if record is not None else None
        if writes is not None:
            self._flush_out(writes)  # committed before the connection broke: still committed

    def _before_cursor_execute(self, connection, cursor, statement, parameters, context, executemany):
        writes = connection.info.get(self.info_key)
        if writes is not None:
            writes.statements += 1
        if self.recorder is not None:
            self.recorder.saw(context)

    def _after_execute(self, connection, clauseelement, multiparams, params, execution_options, result):
        writes = connection.info.get(self.info_key)
        if writes is not None and writes.autocommitted:
            done, writes.autocommitted = writes.autocommitted, Invalidation()
            self.store.publish(done)

    def _before_execute(self, connection, clauseelement, multiparams, params, execution_options):
        if getattr(clauseelement, "is_dml", False):
            written = self._dml_tables(clauseelement)
            action = "update" if clauseelement.is_update else "delete" if clauseelement.is_delete else "insert"
        elif isinstance(clauseelement, (TextClause, str)):
            written = self._text_tables(clauseelement, execution_options)
            action = "update"
        elif isinstance(clauseelement, ExecutableDDLElement):
            target = getattr(clauseelement, "element", None)
            written = [target.fullname] if isinstance(target, TableClause) else None
            action = "ddl"  # creating or altering a table invalidates it, even a read_only one
        else:
            return  # a SELECT: nothing to invalidate
        tenant = self.tenants.of(connection, execution_options.get("schema_translate_map"))
        writes = self.connection_writes(connection)
        owner = writes.owner
        frame = writes.autocommitted if _driver_autocommits(connection) else writes.current()
        if written is None:
            frame.everything = True
            return
        for name in written:
            info = self.catalog.table(name)
            if info is not None and action in ("update", "delete") and info.strategy == "read_only":
                raise ReadOnlyEntityError(
                    f"{name} is cached with strategy='read_only', so {action.upper()} is refused; use "
                    "strategy='read_write' for a table that changes, or write it while the cache is detached"
                )
            if owner is not None and owner.flushing and "compiled_cache" in execution_options:
                # The unit of work's own statement: after_flush names the rows it wrote.
                owner.flushed_tables.append((writes, tenant, name))
                continue
            self._add_bulk(frame, owner, tenant, name, action)

    def _add_bulk(self, frame, owner, tenant, name, action):
        tables = {name} | (self.catalog.dependents(name, action) if action in ("update", "delete") else set())
        for table in tables:
            if self.catalog.table(table) is not None:
                frame.add_bulk(tenant, table)
                if owner is not None:
                    owner.written.add((tenant, table))

    @staticmethod
    def _dml_tables(statement) -> list[str]:
        target = statement.table
        if isinstance(target, TableClause):
            return [target.fullname]
        # UPDATE ... of a join (MySQL's multi-table UPDATE): every table in it may change.
        return sorted({element.fullname for element in visitors.iterate(target) if isinstance(element, TableClause)})

    def _text_tables(self, statement, execution_options) -> list[str] | None:
        named = execution_options.get("ferric_invalidates")
        if named is None and isinstance(statement, TextClause):
            named = statement.get_execution_options().get("ferric_invalidates")
        if named is not None:
            return table_names(named)
        sql = statement if isinstance(statement, str) else statement.text
        reading = _READING_TEXT.match(sql)
        if reading and not (reading.group(1).lower() == "with" and _WRITING_WORD.search(sql)):
            return []
        self.warn(
            "text-dml",
            "text SQL that may write was run without execution_options(ferric_invalidates=[...]); every cached "
            f"entry is invalidated at commit. Name the tables it writes to keep the rest cached: {sql[:80]!r}",
        )
        return None

    # -- session events -----------------------------------------------------------------------------

    def _after_begin(self, session, transaction, connection):
        session_writes = self.session_writes(session)
        writes = self.connection_writes(connection)
        writes.owner = session_writes
        if writes not in session_writes.connections:
            session_writes.connections.append(writes)
            session_writes.only = (writes, self.tenants.of(connection, None)) \
                if len(session_writes.connections) == 1 else None

    def _before_flush(self, session, flush_context, instances):
        self.catalog.refresh()
        read_only = self.catalog.read_only_mappers
        for obj in chain(session.dirty, session.deleted) if read_only else ():
            if sa_inspect(obj).mapper not in read_only:
                continue
            if obj in session.deleted or session.is_modified(obj, include_collections=False):
                action = "delete" if obj in session.deleted else "update"
                raise ReadOnlyEntityError(
                    f"{type(obj).__name__} is cached with strategy='read_only', so this flush's {action} of "
                    f"{obj!r} is refused; use strategy='read_write' for a class whose rows change"
                )
        writes = self.session_writes(session)
        writes.flushing = True
        writes.flushed_tables = []

    def _after_flush(self, session, flush_context):
        session_writes = self.session_writes(session)
        session_writes.flushing = False
        covered = set()
        targets = {}  # mapper -> (its connection's writes, tenant), looked up once per flush
        for state, deleted in _flushed_states(session, flush_context):
            mapper = state.mapper
            target = targets.get(mapper)
            if target is None:
                if not any(self.catalog.table(table.fullname) for table in mapper.tables):
                    targets[mapper] = False
                    continue
                target = session_writes.only
                if target is None:  # several connections (binds per mapper): the one this mapper's rows went to
                    connection = session.connection(bind_arguments={"mapper": mapper})
                    target = (self.connection_writes(connection), self.tenants.of(connection, None))
                targets[mapper] = target
            elif target is False:
                continue
            writes, tenant = target
            frame = writes.current()
            keys = []
            if state.key is not None:
                keys.append(state.key[1])
            if not deleted:
                keys.append(tuple(mapper.primary_key_from_instance(state.obj())))
            row_table = mapper.base_mapper.local_table.fullname
            pk_changed = len(keys) == 2 and keys[0] != keys[1]
            for pk in keys:
                row = canonical_pk(mapper.primary_key, pk)
                for table in mapper.tables:
                    covered.add((writes, tenant, table.fullname))
                    if row is None:
                        self._add_bulk(frame, session_writes, tenant, table.fullname, "update")
                    elif self.catalog.table(table.fullname) is not None:
                        frame.add_table(tenant, table.fullname)
                        session_writes.written.add((tenant, table.fullname))
                if row is not None and self.catalog.table(row_table) is not None:
                    frame.add_row(tenant, row_table, row)
            action = "delete" if deleted else "update" if pk_changed else None
            if action is not None:  # rows the database deletes or re-keys by itself (ON DELETE / ON UPDATE)
                for table in mapper.tables:
                    for dependent in self.catalog.dependents(table.fullname, action):
                        self._add_bulk(frame, session_writes, tenant, dependent, "insert")
        for writes, tenant, name in session_writes.flushed_tables:
            if (writes, tenant, name) not in covered:  # a table the flush wrote without a state of ours: all of it
                self._add_bulk(writes.current(), session_writes, tenant, name, "update")
        session_writes.flushed_tables = []

    def _after_commit(self, session):
        writes = self.session_writes(session)
        for connection_writes in writes.connections:
            self._flush_out(connection_writes)

    def _after_rollback(self, session):
        self.session_writes(session).flushing = False

    def _after_soft_rollback(self, session, previous_transaction):
        self._after_rollback(session)

    def _after_transaction_end(self, session, transaction):
        if transaction.parent is not None:
            return
        writes = session.info.get(self.info_key)
        if writes is None:
            return
        for connection_writes in writes.connections:
            self._flush_out(connection_writes)
            if connection_writes.owner is writes:
                connection_writes.owner = None
        writes.connections = []
        writes.only = None
        writes.written = set()
        writes.flushing = False


def _savepoint_depth(writes, name):
    """Which open savepoint ``name`` ends: found by name, else the innermost (SQLAlchemy announces a savepoint
    before naming it). Guessing wrong only keeps a frame too long, which invalidates more, never less."""
    if writes is None or not writes.savepoints:
        return None
    if name in writes.savepoints:
        return writes.savepoints.index(name)
    return len(writes.savepoints) - 1


def table_names(named) -> list[str]:
    """``ferric_invalidates`` entries (mapped classes, Tables, or full table names) as full table names."""
    if isinstance(named, (str, type)) or not hasattr(named, "__iter__"):
        named = [named]
    names = []
    for item in named:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, TableClause):
            names.append(item.fullname)
        else:
            mapper = sa_inspect(item, raiseerr=False)
            if mapper is None or not hasattr(mapper, "tables"):
                raise TypeError(
                    f"ferric_invalidates takes mapped classes, Tables or table names, not {item!r}"
                )
            names.extend(table.fullname for table in mapper.tables)
    return names


def _flushed_states(session, flush_context):
    """(state, deleted) for every row this flush wrote: the unit of work's own list, which includes
    rows changed only to keep foreign keys in sync; the Session's lists if that is unavailable."""
    states = getattr(flush_context, "states", None)
    if isinstance(states, dict):
        return [(state, isdelete) for state, (isdelete, listonly) in states.items() if not listonly]
    return [(sa_inspect(obj), obj in session.deleted) for obj in chain(session.new, session.dirty, session.deleted)]


def _driver_autocommits(connection) -> bool:
    """True when each statement commits by itself (isolation_level="AUTOCOMMIT", or the driver set so)."""
    if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return True
    driver = connection.connection.driver_connection
    if getattr(driver, "autocommit", None) is True:
        return True
    return connection.dialect.name == "sqlite" and getattr(driver, "isolation_level", "") is None
