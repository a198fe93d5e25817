"""What a statement is, worked out once per statement shape: its portable digest, the tables it reads, whether
it is a lookup of one row by primary key, and whether it may be cached at all.

A shape is a statement with its parameters left out: SQLAlchemy's own cache
key (``statement._generate_cache_key()``) names it within a process, and a
digest of that key's structure names it across processes (class, table and
mapper names instead of object ids; a shape whose key holds an object with no
stable name is not cached). The tables come from the statement as compiled for
the bind's dialect, so eager joins, column properties, subqueries and loader
criteria all count; tables read by later statements of the same load
(selectin and subquery eager loads) are learned from the first run and added.
"""

import enum
import os
import threading
import types
import uuid
from collections import OrderedDict
from hashlib import blake2b

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.interfaces import MapperProperty
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList, TextClause
from sqlalchemy.sql.functions import FunctionElement, next_value
from sqlalchemy.sql.schema import Table
from sqlalchemy.sql.selectable import (
    AliasedReturnsRows,
    Exists,
    ScalarSelect,
    Select,
    SelectBase,
    TableClause,
    TextualSelect,
)

from ferric_sqlalchemy import orm_internals
from ferric_sqlalchemy.catalog import mapper_name

MAX_SHAPES = 2_000  # shapes remembered per process (LRU); a forgotten shape is analysed again
_DIGEST_BYTES = 16

# SQL functions whose value changes without any table changing: a statement using one is never cached.
VOLATILE_FUNCTIONS = frozenset({
    "now", "current_timestamp", "current_date", "current_time", "localtime", "localtimestamp", "sysdate",
    "random", "rand", "uuid", "gen_random_uuid", "uuid_generate_v4", "newid", "nextval", "currval", "lastval",
    "clock_timestamp", "statement_timestamp", "transaction_timestamp", "timeofday", "txid_current",
    "pg_backend_pid", "last_insert_rowid", "last_insert_id", "changes", "total_changes", "utc_timestamp",
    "unix_timestamp", "sys_guid", "getdate", "getutcdate",
})


class RowLookup:
    """A select of one mapped entity by its whole primary key (``session.get``, a lazy many-to-one load)."""

    __slots__ = ("mapper", "table", "own_tables", "positions", "columns", "python_types", "exact_types")

    def __init__(self, mapper, positions):
        self.mapper = mapper
        self.table = mapper.base_mapper.local_table.fullname  # rows are named by their base table
        self.own_tables = tuple(sorted(table.fullname for table in mapper.tables))
        # Per primary key column (mapper.primary_key order): its parameter's place in the cache key's bindparams.
        self.positions = positions
        self.columns = mapper.primary_key
        # A key is a row key only if each value has exactly its column's Python type (catalog.canonical_pk).
        try:
            self.python_types = tuple(column.type.python_type for column in self.columns)
        except NotImplementedError:
            self.python_types = None
        # Types whose equal values are equal in every respect (encoded alike), so a key can be looked up by value.
        self.exact_types = self.python_types is not None and all(
            python_type in (int, str, bytes, uuid.UUID) for python_type in self.python_types)


class Shape:
    """One statement shape: ``reason`` is None if it may be cached, else why not."""

    __slots__ = ("digest", "reason", "tables", "nested", "row_lookup", "primary_table", "extras", "layouts",
                 "metadata")

    def __init__(self, digest=None, reason=None, tables=frozenset(), nested=frozenset(), row_lookup=None,
                 primary_table="", extras=None):
        self.digest = digest
        self.reason = reason
        self.tables = tables  # every table read (grows when a load's later statements read more)
        self.nested = nested  # tables read inside subqueries or aliases (not as the statement's own FROM)
        self.row_lookup = row_lookup
        self.primary_table = primary_table
        self.extras = extras  # per result column, the objects a Row may be indexed by (entity, column)
        self.layouts: dict = {}  # tenant -> its keys for this shape (made by the QueryCache; reset by learn)
        self.metadata: dict = {}  # column names -> the Result metadata served for them

    def learn(self, tables, later_tables) -> None:
        """Add the tables a run read (``later_tables``: by statements after the first, such as eager loads).

        A row lookup whose later statements read its own tables (a self-referential
        eager load) depends on other rows too, and becomes an ordinary query.
        """
        if not (tables | later_tables) <= self.tables:
            self.tables = self.tables | tables | later_tables
            self.layouts = {}
        if self.row_lookup is not None and set(self.row_lookup.own_tables) & later_tables:
            self.row_lookup = None
            self.layouts = {}


class Scan:
    """What a walk over a compiled statement found."""

    __slots__ = ("tables", "nested", "reason")

    def __init__(self):
        self.tables: set[str] = set()
        self.nested: set[str] = set()
        self.reason: str | None = None


def scan_statement(statement) -> Scan:
    """Walk a Core statement: the tables it reads, which of them only inside subqueries, and what forbids caching."""
    scan = Scan()
    stack = [(statement, False)]
    seen = set()
    while stack:
        element, nested = stack.pop()
        if id(element) in seen:
            continue
        seen.add(id(element))
        if isinstance(element, TableClause):
            scan.tables.add(element.fullname)
            if nested:
                scan.nested.add(element.fullname)
        elif isinstance(element, (TextClause, TextualSelect)):
            scan.reason = "text() in the statement: the tables it reads are unknown"
        elif isinstance(element, next_value):
            scan.reason = "a sequence's next value changes on every call"
        elif isinstance(element, FunctionElement) and _volatile(element):
            scan.reason = f"{getattr(element, 'name', 'a function')}() changes without any table changing"
        if isinstance(element, SelectBase) and orm_internals.for_update(element):
            scan.reason = "SELECT ... FOR UPDATE takes row locks, which only the database can give"
        inner = nested or (element is not statement and isinstance(
            element, (Select, AliasedReturnsRows, ScalarSelect, Exists, SelectBase)))
        stack.extend((child, inner) for child in element.get_children())
    return scan


def _volatile(function) -> bool:
    """A function whose value changes by itself: now(), random(), ... or SQLite's date('now', ...)."""
    if str(getattr(function, "name", "")).lower() in VOLATILE_FUNCTIONS:
        return True
    return any(isinstance(argument, BindParameter) and isinstance(argument.value, str)
               and argument.value.strip().lower() == "now"
               for argument in getattr(getattr(function, "clauses", None), "clauses", ()))


def _render(value, out: list) -> None:
    """Append a process-independent text form of a cache key element; ValueError if it has none."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str, bytes):
        out.append(f"{kind.__name__}:{value!r}")
    elif kind in (tuple, list):
        out.append("(")
        for item in value:
            _render(item, out)
        out.append(")")
    elif isinstance(value, type):
        out.append(f"T:{value.__module__}.{value.__qualname__}")
    elif isinstance(value, Mapper):
        out.append(f"M:{mapper_name(value)}")
    elif isinstance(value, MapperProperty):  # a relationship or column attribute (lazy loads name theirs)
        out.append(f"P:{mapper_name(value.parent)}.{value.key}")
    elif isinstance(value, Table):
        out.append(f"Tb:{value.fullname}")
    elif isinstance(value, enum.Enum):
        out.append(f"E:{kind.__module__}.{kind.__qualname__}.{value.name}")
    elif isinstance(value, (types.BuiltinFunctionType, types.FunctionType)):
        out.append(f"F:{value.__module__}.{value.__qualname__}")
    elif isinstance(value, types.CodeType):  # lambda statements (lazy loads are made of them)
        body = blake2b(value.co_code, digest_size=8).hexdigest()
        out.append(f"C:{os.path.basename(value.co_filename)}:{value.co_firstlineno}:{value.co_qualname}:{body}")
    else:
        text = repr(value)
        if kind.__repr__ is object.__repr__ or " at 0x" in text:
            raise ValueError(f"{kind.__qualname__} in the statement's cache key has no stable name")
        out.append(f"R:{kind.__module__}.{kind.__qualname__}:{text}")


def portable_digest(cache_key_structure) -> bytes:
    """16 bytes naming a statement shape identically in every process running the same code."""
    out: list[str] = []
    _render(cache_key_structure, out)
    return blake2b("\x1f".join(out).encode("utf-8"), digest_size=_DIGEST_BYTES).digest()


def _row_lookup(statement, cache_key) -> RowLookup | None:
    """A RowLookup if ``statement`` selects one mapped entity where each primary key column equals a parameter."""
    if not isinstance(statement, Select):
        return None
    descriptions = statement.column_descriptions
    if len(descriptions) != 1 or descriptions[0].get("aliased") or descriptions[0].get("expr") is None:
        return None
    entity = descriptions[0].get("entity")
    if entity is None or descriptions[0]["expr"] is not entity:
        return None
    mapper = sa_inspect(entity).mapper
    clause = statement.whereclause
    clauses = list(clause.clauses) if isinstance(clause, BooleanClauseList) and clause.operator is operators.and_ \
        else [clause]
    wanted = {(column.table.fullname, column.name): position for position, column in enumerate(mapper.primary_key)}
    positions: list[int | None] = [None] * len(wanted)
    for criterion in clauses:
        if not (isinstance(criterion, BinaryExpression) and criterion.operator is operators.eq):
            return None
        column, bind = criterion.left, criterion.right
        if isinstance(column, BindParameter):
            column, bind = bind, column
        table = getattr(column, "table", None)
        position = wanted.get((getattr(table, "fullname", None), getattr(column, "name", None)))
        if position is None or not isinstance(bind, BindParameter) or positions[position] is not None:
            return None
        # Bound parameter keys differ between statements of one shape; their order in the cache key does not.
        place = next((i for i, known in enumerate(cache_key.bindparams) if known is bind), None)
        if place is None:
            return None
        positions[position] = place
    if None in positions:
        return None
    return RowLookup(mapper, tuple(positions))


def _extras(statement):
    try:
        return orm_internals.result_shape(statement)[1]
    except Exception:  # a compound or textual select: rows are still indexable by name and position
        return None


class ShapeCache:
    """Shapes by SQLAlchemy cache key, least recently used forgotten past MAX_SHAPES."""

    def __init__(self):
        self._shapes: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._compiled: dict[int, tuple[object, frozenset, str | None]] = {}

    def shape_of(self, statement, cache_key, dialect) -> Shape:
        key = (cache_key.key, dialect.name)
        shape = self._shapes.get(key)
        if shape is not None:
            return shape
        shape = self._analyse(statement, cache_key, dialect)
        with self._lock:
            self._shapes[key] = shape
            if len(self._shapes) > MAX_SHAPES:
                self._shapes.popitem(last=False)
        return shape

    def _analyse(self, statement, cache_key, dialect) -> Shape:
        try:
            digest = portable_digest((dialect.name, cache_key.key))
        except ValueError as exc:
            return Shape(reason=str(exc))
        try:
            compiled = statement.compile(dialect=dialect)
        except Exception as exc:  # the database would refuse it as well; let it say so
            return Shape(reason=f"statement does not compile: {exc}")
        scan = scan_statement(orm_internals.core_statement(compiled))
        if scan.reason is not None:
            return Shape(reason=scan.reason)
        if not scan.tables:
            return Shape(reason="reads no table")
        row_lookup = _row_lookup(statement, cache_key)
        if row_lookup is not None and set(row_lookup.own_tables) & scan.nested:
            row_lookup = None  # the statement reads other rows of its own table (a subquery, a self-join)
        primary = row_lookup.table if row_lookup is not None else sorted(scan.tables)[0]
        return Shape(digest, None, frozenset(scan.tables), frozenset(scan.nested), row_lookup, primary,
                     _extras(statement))

    def tables_of_compiled(self, compiled) -> tuple[frozenset, str | None]:
        """``(tables, reason)`` of a statement as it ran (``reason``: why a result that used it is not cached)."""
        if compiled is None:
            return frozenset(), "a textual statement ran"
        found = self._compiled.get(id(compiled))
        if found is not None and found[0] is compiled:
            return found[1], found[2]
        scan = scan_statement(orm_internals.core_statement(compiled))
        with self._lock:
            if len(self._compiled) > MAX_SHAPES:
                self._compiled.clear()
            self._compiled[id(compiled)] = (compiled, frozenset(scan.tables), scan.reason)
        return frozenset(scan.tables), scan.reason
