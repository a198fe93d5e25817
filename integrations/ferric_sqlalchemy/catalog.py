"""The cacheable tables and classes, derived from the ``@cacheable`` classes and their mappers."""

import threading
from typing import NamedTuple

import sqlalchemy
from sqlalchemy import inspect as sa_inspect

from ferric_sqlalchemy.cacheable import STRICTNESS, decorated_classes, settings_of


class TableInfo(NamedTuple):
    """What the cache knows about one table (by its full name, ``schema.table``)."""

    name: str
    strategy: str  # the strictest of the classes that map or join through it
    regions: tuple[str, ...]
    ttl_ms: int | None  # the shortest TTL those classes set (None: none set one)


def mapper_name(mapper) -> str:
    """How entries name a mapped class: module, qualified name and table, the same in every process."""
    cls = mapper.class_
    return f"{cls.__module__}.{cls.__qualname__}/{mapper.local_table.fullname}"


def enum_class_name(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Catalog:
    """Tables and mappers the cache may hold, rebuilt whenever a class is decorated or mappers are (re)configured.

    A table is cacheable when an enabled ``@cacheable`` class maps it, or when it is
    the ``secondary`` table of a relationship between two such classes.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._built_for = None  # (number of decorated classes, configure generation) of the current build
        self._configure_generation = 0
        self.tables: dict[str, TableInfo] = {}
        self.mappers: dict[str, object] = {}  # mapper_name -> Mapper (an ambiguous name maps to None)
        self.mapper_settings: dict[object, object] = {}  # Mapper -> CacheSettings of enabled classes
        self.read_only_mappers: frozenset = frozenset()
        self.enum_classes: dict[str, type] = {}
        # table -> tables the database itself changes when a row of it is deleted / its key updated
        self.cascades: dict[str, dict[str, set[str]]] = {"delete": {}, "update": {}}

    def mappers_changed(self, *_args):
        """Mapper event hook (``after_configured``): rebuild on next use."""
        self._configure_generation += 1

    def refresh(self):
        """Rebuild if classes were decorated or mappers configured since the last build."""
        signature = (len(decorated_classes), self._configure_generation)
        if signature == self._built_for:
            return
        with self._lock:
            if signature != self._built_for:
                self._build()
                self._built_for = signature

    def version(self):
        """Changes whenever the catalog is rebuilt (callers keep what they derived from it until then)."""
        self.refresh()
        return self._built_for

    def table(self, name: str) -> TableInfo | None:
        self.refresh()
        return self.tables.get(name)

    def settings(self, mapper):
        """The CacheSettings of a mapper whose class is cached and enabled, else None."""
        self.refresh()
        return self.mapper_settings.get(mapper)

    def dependents(self, name: str, action: str) -> set[str]:
        """Cacheable tables the database changes by itself (ON DELETE / ON UPDATE actions) when ``name`` is written."""
        self.refresh()
        direct = self.cascades[action]
        found, todo = set(), [name]
        while todo:
            for dependent in direct.get(todo.pop(), ()):
                if dependent not in found:
                    found.add(dependent)
                    todo.append(dependent)  # a cascade can cascade further (a delete's SET NULL, then nothing)
        return found

    def _build(self):
        per_table: dict[str, list] = {}
        table_objects = {}
        mappers, mapper_settings, enum_classes = {}, {}, {}
        for cls in list(decorated_classes):
            base = sa_inspect(cls, raiseerr=False)
            if base is None or not hasattr(base, "self_and_descendants"):
                continue  # decorated but not mapped (yet): nothing to cache
            for mapper in base.self_and_descendants:
                settings = settings_of(mapper.class_)
                if settings is None or not settings.enabled:
                    continue
                mapper_settings[mapper] = settings
                name = mapper_name(mapper)
                mappers[name] = mapper if mappers.get(name, mapper) is mapper else None
                for table in mapper.tables:
                    per_table.setdefault(table.fullname, []).append(settings)
                    table_objects[table.fullname] = table
                for column in mapper.columns:
                    enum_class = getattr(column.type, "enum_class", None)
                    if isinstance(column.type, sqlalchemy.Enum) and enum_class is not None:
                        enum_classes[enum_class_name(enum_class)] = enum_class
        for mapper, settings in mapper_settings.items():
            for relationship in mapper.relationships:
                secondary = relationship.secondary
                if secondary is not None and relationship.mapper in mapper_settings and hasattr(secondary, "fullname"):
                    per_table.setdefault(secondary.fullname, []).append(settings)
                    table_objects[secondary.fullname] = secondary
        tables = {}
        for name, all_settings in per_table.items():
            strategies = {s.strategy for s in all_settings}
            strategy = next(s for s in STRICTNESS if s in strategies)
            regions = tuple(sorted({s.region for s in all_settings}))
            ttls = [s.ttl_ms for s in all_settings if s.ttl_ms is not None]
            tables[name] = TableInfo(name, strategy, regions, min(ttls) if ttls else None)
        self.tables, self.mappers, self.mapper_settings = tables, mappers, mapper_settings
        self.read_only_mappers = frozenset(
            mapper for mapper, settings in mapper_settings.items() if settings.strategy == "read_only")
        self.cascades = _foreign_key_cascades(table_objects.values())
        self.enum_classes.clear()
        self.enum_classes.update(enum_classes)  # the codec holds this very dict


_NO_ACTION = {None, "NO ACTION", "RESTRICT"}


def _foreign_key_cascades(tables) -> dict[str, dict[str, set[str]]]:
    cascades: dict[str, dict[str, set[str]]] = {"delete": {}, "update": {}}
    for table in tables:
        for foreign_key in getattr(table, "foreign_keys", ()):
            try:
                referred = foreign_key.column.table.fullname
            except Exception:  # an unresolved foreign key: SQLAlchemy reports it when the table is used
                continue
            for action, rule in (("delete", foreign_key.ondelete), ("update", foreign_key.onupdate)):
                if (rule.upper() if rule else rule) not in _NO_ACTION:
                    cascades[action].setdefault(referred, set()).add(table.fullname)
    return cascades


def canonical_pk(columns, values) -> tuple | None:
    """``values`` as a row key if each has exactly its column's Python type, else None.

    Writers and readers must name a row identically, so a key given as "42" for
    an Integer column, or a type a column cannot declare, is not a row key: the
    caller falls back to the table (readers: a query entry; writers: a bulk
    invalidation), which is always correct.
    """
    if len(columns) != len(values):
        return None
    for column, value in zip(columns, values):
        try:
            python_type = column.type.python_type
        except NotImplementedError:
            return None
        if type(value) is not python_type:
            return None
    return tuple(values)
