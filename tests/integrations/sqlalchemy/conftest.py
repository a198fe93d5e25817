"""Fixtures for ferric_sqlalchemy's tests: a real ferricd per module, and a database per test.

Every test runs on SQLite (a file of its own) and, when FERRIC_TEST_POSTGRES_URL
names a server, on PostgreSQL too, in a schema of its own that is dropped
afterwards (so parallel runs never meet). A test gets a ``Database``: its
engine, a sessionmaker with a QueryCache attached, and the SQL it ran.
"""

import itertools
import os
import uuid

import pytest
from sqlalchemy import create_engine, event, make_url, text
from sqlalchemy.orm import sessionmaker

from ferric_sqlalchemy import QueryCache
from tests.integrations.sqlalchemy import models

POSTGRES_ENV = "FERRIC_TEST_POSTGRES_URL"
#: Cache entries need no durability: the daemon the tests use never fsyncs (as the "sa:" keyspace is meant to).
DAEMON_CONFIG = '[storage]\nfsync = "never"\n'
_schemas = itertools.count()


SKIP_POSTGRES = f"{POSTGRES_ENV} is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"


def backends():
    return ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
        not os.environ.get(POSTGRES_ENV), reason=SKIP_POSTGRES))]


@pytest.fixture(scope="module")
def ferricd(module_daemon_factory):
    return module_daemon_factory(shards=2, config=DAEMON_CONFIG)


class Database:
    """One test's database (a fresh SQLite file or PostgreSQL schema), with the SQL it runs counted."""

    def __init__(self, backend, url, tmp_path):
        self.backend = backend
        self.schema = None
        if backend == "sqlite":
            self.url = f"sqlite:///{tmp_path / 'test.db'}"
            self.engine = create_engine(self.url)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.base_url = url
            self.schema = f"ferric_{os.getpid()}_{next(_schemas)}_{uuid.uuid4().hex[:8]}"
            base = create_engine(url)
            with base.begin() as connection:
                connection.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            base.dispose()
            # The schema on the search path (so text() SQL finds the tables too), named in the URL (so it is
            # part of the tenant: two tests' caches never meet).
            self.url = make_url(url).update_query_dict({"options": f"-csearch_path={self.schema}"})
            self.engine = create_engine(self.url)
        models.Base.metadata.create_all(self.engine)
        self.statements: list[str] = []
        event.listen(self.engine, "before_cursor_execute", self._count)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    def _count(self, connection, cursor, statement, parameters, context, executemany):
        self.statements.append(statement)

    @property
    def url_text(self) -> str:
        """The URL for another process, password included."""
        return make_url(self.url).render_as_string(hide_password=False)

    def selects(self) -> int:
        """How many SELECTs reached the database so far."""
        return sum(1 for statement in self.statements if statement.lstrip().upper().startswith("SELECT"))

    def reset_counts(self) -> None:
        self.statements.clear()

    def dispose(self) -> None:
        self.engine.dispose()
        if self.schema is not None:
            base = create_engine(self.base_url)
            with base.begin() as connection:
                connection.execute(text(f'DROP SCHEMA "{self.schema}" CASCADE'))
            base.dispose()


def _sqlite_pragmas(dbapi_connection, record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


@pytest.fixture(params=backends())
def database(request, tmp_path):
    if request.param == "postgresql" and not os.environ.get(POSTGRES_ENV):
        pytest.skip(SKIP_POSTGRES)  # a test that asks for PostgreSQL alone (indirect parametrization)
    db = Database(request.param, os.environ.get(POSTGRES_ENV), tmp_path)
    yield db
    db.dispose()


@pytest.fixture
def store(ferricd):
    """A Client of the module's daemon, emptied, for tests that look at what the cache writes."""
    client = ferricd.client()
    client.delete_prefix(b"")
    return client


@pytest.fixture
def cache(ferricd, database):
    """A QueryCache on the module's daemon, attached to the test database's sessionmaker."""
    query_cache = QueryCache(client=ferricd.client())
    query_cache.attach(database.Session)
    yield query_cache
    query_cache.detach(database.Session)


@pytest.fixture
def db(database, cache):
    """The test database with the cache attached: ``db.Session()``, ``db.selects()``, ``db.cache``."""
    database.cache = cache
    return database
