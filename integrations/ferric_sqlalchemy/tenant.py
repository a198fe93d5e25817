"""The tenant of a statement: which database, as whom, under which schema translation.

Entries and generations of different tenants never meet: the tenant is part of
every key. It is a 16-byte BLAKE2b digest of the dialect's backend name, the
bind's URL without its password (host, port, database, user, query) and the
``schema_translate_map``. An SQLite file is named by its absolute path, and an
in-memory SQLite database by the process that owns it, since no other process
can see it. Every process must reach a database through the same URL (or none
of them shares the others' invalidations).
"""

import os
from hashlib import blake2b

import msgpack
from sqlalchemy.engine import Engine


def describe(url, schema_translate_map) -> list:
    """The parts the tenant digest is made of (shown by ``QueryCache.tenant_of`` for debugging)."""
    backend = url.get_backend_name()
    database = url.database
    if backend == "sqlite":
        in_memory = not database or database == ":memory:" or (url.query.get("mode") == "memory")
        database = f"memory:{os.getpid()}" if in_memory else os.path.abspath(database)
    query = sorted((key, value if isinstance(value, str) else list(value)) for key, value in url.query.items())
    translate = sorted((str(k), str(v)) for k, v in (schema_translate_map or {}).items())
    return [backend, url.username, url.host, url.port, database, query, translate]


def tenant_id(url, schema_translate_map) -> bytes:
    return blake2b(msgpack.packb(describe(url, schema_translate_map), use_bin_type=True), digest_size=16).digest()


class TenantCache:
    """Tenant digests per (engine, schema_translate_map), computed once each."""

    def __init__(self):
        self._known: dict = {}
        self._by_engine: dict = {}  # an Engine's options never change: its tenant, when no statement sets a map
        self._by_options: dict = {}  # id(a Connection's options) -> (those options, engine, tenant)

    def known(self) -> list[bytes]:
        """Every tenant this process has used."""
        return sorted(set(self._known.values()))

    def of(self, bind, schema_translate_map) -> bytes:
        """The tenant of ``bind`` (an Engine or Connection) with the statement's ``schema_translate_map``."""
        if schema_translate_map is None and isinstance(bind, Engine):
            tenant = self._by_engine.get(bind)
            if tenant is None:
                if len(self._by_engine) > 10_000:
                    self._by_engine.clear()
                tenant = self._by_engine[bind] = self._of(bind, None)
            return tenant
        if schema_translate_map is None:
            # A Connection's options are one immutable mapping, replaced whenever they change.
            options = bind.get_execution_options()
            known = self._by_options.get(id(options))
            if known is not None and known[0] is options and known[1] is bind.engine:
                return known[2]
            if len(self._by_options) > 10_000:
                self._by_options.clear()
            tenant = self._of(bind, None)
            self._by_options[id(options)] = (options, bind.engine, tenant)
            return tenant
        return self._of(bind, schema_translate_map)

    def _of(self, bind, schema_translate_map) -> bytes:
        engine = getattr(bind, "engine", bind)
        if schema_translate_map is None:
            schema_translate_map = bind.get_execution_options().get("schema_translate_map")
        map_key = tuple(sorted((str(k), str(v)) for k, v in (schema_translate_map or {}).items()))
        key = (engine, map_key)
        tenant = self._known.get(key)
        if tenant is None:
            if len(self._known) > 10_000:  # engines made per request would otherwise pile up here
                self._known.clear()
            tenant = self._known[key] = tenant_id(engine.url, schema_translate_map)
        return tenant
