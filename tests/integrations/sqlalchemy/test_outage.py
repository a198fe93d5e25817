"""ferricd away: the application keeps working on the database, and nothing stale is served once it is back."""

import logging

import pytest

from ferric_sqlalchemy import QueryCache, cache_store
from tests.integrations.sqlalchemy.conftest import DAEMON_CONFIG
from tests.integrations.sqlalchemy.models import User
from tests.integrations.sqlalchemy.seed import seed

# What happens when ferricd is away does not depend on the database: SQLite only, each test has a daemon of its own.
pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


@pytest.fixture
def outage(make_daemon, database, monkeypatch):
    """A daemon of the test's own (to stop and start), a cache on it, and no wait between probes."""
    monkeypatch.setattr(cache_store, "RETRY_INTERVAL_S", 0.0)
    daemon = make_daemon(shards=2, config=DAEMON_CONFIG)
    cache = QueryCache(client=daemon.client(timeout_ms=300))
    cache.attach(database.Session)
    database.cache = cache
    yield daemon, database
    cache.detach(database.Session)


def name_of(db, pk=2):
    with db.Session() as session:
        return session.get(User, pk).name


def rename(db, name, pk=2):
    with db.Session() as session:
        session.get(User, pk).name = name
        session.commit()


def test_queries_go_to_the_database_while_ferricd_is_away(outage, caplog):
    daemon, db = outage
    seed(db)
    name_of(db)
    daemon.stop()
    caplog.set_level(logging.WARNING, "ferric_sqlalchemy")
    db.reset_counts()
    assert [name_of(db) for _ in range(3)] == ["user2"] * 3
    assert db.selects() == 3
    rename(db, "during")  # the commit succeeds; its invalidation waits
    assert name_of(db) == "during"
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1  # once, however many calls failed
    assert db.cache.stats()["errors"] >= 1


def test_after_an_outage_nothing_stored_before_it_is_served(outage):
    daemon, db = outage
    seed(db)
    name_of(db), name_of(db, 3)
    daemon.stop()
    rename(db, "written while away")  # a writer whose invalidation failed (as if it died then)
    rename(db, "also away", pk=3)
    daemon.start()
    db.reset_counts()
    assert name_of(db) == "written while away"
    assert name_of(db, 3) == "also away"


def test_a_writer_that_could_not_invalidate_does_so_when_ferricd_answers(outage):
    """Another process kept serving from the cache while ours could not reach ferricd for a moment."""
    daemon, db = outage
    seed(db)
    name_of(db)
    other = QueryCache(client=daemon.client())
    daemon.stop()
    rename(db, "late")
    daemon.start()
    db.reset_counts()
    assert name_of(db) == "late"  # our first contact after the outage published the kept invalidation
    other.attach(db.Session)
    try:
        assert name_of(db) == "late"
    finally:
        other.detach(db.Session)


def test_writes_after_a_restart_invalidate(outage):
    daemon, db = outage
    seed(db)
    name_of(db)
    daemon.kill()
    daemon.start()
    name_of(db)
    rename(db, "after restart")
    assert name_of(db) == "after restart"


def test_cache_only_during_an_outage_is_a_miss(outage):
    daemon, db = outage
    seed(db)
    name_of(db)
    daemon.stop()
    db.reset_counts()
    with db.Session() as session:
        assert session.get(User, 2, execution_options={"ferric_cache": "cache_only"}) is None
    assert db.selects() == 0


def test_a_restarted_ferricd_serves_nothing_computed_before_it_restarted(outage):
    """As after a machine crash that lost a generation change (the cache keyspace is not fsynced): a fresh
    process must not find entries from before the restart, even though nobody told it of an outage."""
    daemon, db = outage
    seed(db)
    name_of(db)
    daemon.stop()
    with db.engine.connect() as connection:  # a write whose invalidation was lost with the machine
        cursor = connection.connection.cursor()
        cursor.execute("UPDATE users SET name = 'lost bump' WHERE id = 2")
        connection.connection.commit()
    daemon.start()
    fresh = QueryCache(client=daemon.client())
    db.cache.detach(db.Session)
    fresh.attach(db.Session)
    try:
        assert name_of(db) == "lost bump"
    finally:
        fresh.detach(db.Session)
        db.cache.attach(db.Session)
