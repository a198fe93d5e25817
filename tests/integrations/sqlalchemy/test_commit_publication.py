"""A commit's invalidation in two steps: announced as the database commits, confirmed once it has."""

import os
import signal
import threading
import time

import pytest
from sqlalchemy import event, update

from ferric_ipc import FerricTimeoutError, Transaction
from ferric_sqlalchemy import cache_store
from ferric_sqlalchemy.cache_store import being_written
from ferric_sqlalchemy.invalidation import Invalidation
from tests.integrations.sqlalchemy.models import User
from tests.integrations.sqlalchemy.seed import seed


def _row_invalidation(db, pk):
    invalidation = Invalidation()
    invalidation.add_row(db.cache.tenants.of(db.engine, None), User.__table__.fullname, (pk,))
    return invalidation


def _announce(db, invalidation):
    """Announce, and wait for ferricd to have applied it (as confirm does before anything else)."""
    announcement = db.cache.store.announce(invalidation)
    assert announcement.sent
    for submitted in announcement.sent:
        submitted.result()
    return announcement


def _read_name(db, pk):
    with db.Session() as session:
        return session.get(User, pk).name


def _stores(db):
    return db.cache.stats()["stores"]


def _generations(db, invalidation):
    keys = [key for tag_keys in db.cache.store._generation_keys(invalidation).values() for key in tag_keys]
    return db.cache.store.read(keys)


def test_nothing_read_between_announce_and_confirm_is_stored(db):
    seed(db)
    before = _read_name(db, 2)
    assert _read_name(db, 2) == before and db.cache.stats()["hits"] == 1
    invalidation = _row_invalidation(db, 2)
    with db.engine.connect() as writer:
        writer.execute(update(User.__table__).where(User.id == 2).values(name="renamed"))
        announcement = _announce(db, invalidation)
        stores = _stores(db)
        assert _read_name(db, 2) == before  # the old row: not committed yet, and not stored
        writer.commit()
    assert _read_name(db, 2) == "renamed"  # committed: read from the database, still not stored
    assert _stores(db) == stores
    db.cache.store.confirm(announcement)
    deadline = time.monotonic() + 5
    while being_written(_generations(db, invalidation)):  # the confirm is on its way, not waited for
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert _read_name(db, 2) == "renamed"
    assert _stores(db) == stores + 1
    hits = db.cache.stats()["hits"]
    assert _read_name(db, 2) == "renamed" and db.cache.stats()["hits"] == hits + 1


def test_a_writer_that_never_confirms_holds_back_stores_only_until_its_mark_runs_out(db, monkeypatch):
    monkeypatch.setattr(cache_store, "PENDING_MS", 400)
    seed(db)
    invalidation = _row_invalidation(db, 3)
    _announce(db, invalidation)  # and the writer dies: no confirm
    stores = _stores(db)
    _read_name(db, 3)
    assert _stores(db) == stores
    time.sleep(0.5)
    assert not being_written(_generations(db, invalidation))
    _read_name(db, 3)
    assert _stores(db) == stores + 1


def test_a_slow_commit_confirms_waiting_for_ferricd(db, monkeypatch):
    monkeypatch.setattr(cache_store, "SLOW_COMMIT_MS", 0)
    seed(db)
    invalidation = _row_invalidation(db, 4)
    announcement = _announce(db, invalidation)
    assert being_written(_generations(db, invalidation))
    db.cache.store.confirm(announcement)
    assert not being_written(_generations(db, invalidation))  # no wait: confirm returned after ferricd did


@pytest.mark.parametrize("order", ["first confirms first", "second confirms first"])
def test_overlapping_commits_hold_back_stores_until_both_confirmed(db, order):
    seed(db)
    first = _announce(db, _row_invalidation(db, 5))
    second = _announce(db, _row_invalidation(db, 5))
    for announcement in ([first, second] if order == "first confirms first" else [second, first]):
        stores = _stores(db)
        _read_name(db, 5)
        assert _stores(db) == stores  # one of them is still under way
        db.cache.store.confirm(announcement)
    deadline = time.monotonic() + 5
    while being_written(_generations(db, _row_invalidation(db, 5))):
        assert time.monotonic() < deadline
        time.sleep(0.001)
    stores = _stores(db)
    _read_name(db, 5)
    assert _stores(db) == stores + 1


def _generation_shard_pid(db, pk):
    store = db.cache.store
    key = store.layout.row_generation(db.cache.tenants.of(db.engine, None), User.__table__.fullname, (pk,))
    return key, store.client.hello(shard=store.client._shard_of(key))["pid"]


@pytest.mark.parametrize("begin", ["explicit", "autobegun"])
def test_a_bare_connection_commit_returns_after_its_announce_was_applied(db, begin):
    """No event follows a bare Connection's database commit, so the announce is waited for before it."""
    seed(db)
    before = _read_name(db, 2)
    assert _read_name(db, 2) == before
    _, pid = _generation_shard_pid(db, 2)
    with db.engine.connect() as connection:
        if begin == "explicit":
            connection.begin()
        # Autobegun: the UPDATE's own execution begins the transaction, after the cache saw the statement.
        connection.execute(update(User.__table__).where(User.id == 2).values(name="renamed"))
        os.kill(pid, signal.SIGSTOP)  # a descheduled shard: the announce is not applied yet
        threading.Timer(0.3, os.kill, (pid, signal.SIGCONT)).start()
        try:
            started = time.monotonic()
            connection.commit()
            waited_s = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        assert _read_name(db, 2) == "renamed"
    assert waited_s >= 0.25


def test_a_bare_connection_whose_announce_failed_publishes_before_its_commit_returns(db, monkeypatch):
    seed(db)
    before = _read_name(db, 2)
    assert _read_name(db, 2) == before
    submit = Transaction.submit

    def failing_submit(self):
        raise FerricTimeoutError("the send timed out")
    with db.engine.connect() as connection:
        connection.begin()
        connection.execute(update(User.__table__).where(User.id == 2).values(name="renamed"))
        monkeypatch.setattr(Transaction, "submit", failing_submit)
        connection.commit()
        monkeypatch.setattr(Transaction, "submit", submit)
        db.cache.store._down_until = 0  # the next call probes ferricd at once, as it would a second later
        assert _read_name(db, 2) == "renamed"


def test_a_generation_evicted_while_its_commit_runs_is_replaced_before_the_commit_returns(db, monkeypatch):
    """Evicted after the announce, created again by a reader that then stores the old row under it: the
    writer sees its field gone and confirms waiting, so that entry is unreachable once commit() returns."""
    seed(db)
    before = _read_name(db, 2)
    assert _read_name(db, 2) == before
    key, pid = _generation_shard_pid(db, 2)
    store = db.cache.store
    tenant = db.cache.tenants.of(db.engine, None)

    def evicted_meanwhile(connection):  # runs after the cache's own commit listener: the announce is sent
        deadline = time.monotonic() + 5
        while not being_written(store.read([key])):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        store.client.delete(key, store.layout.table_generation(tenant, User.__table__.fullname))
        assert _read_name(db, 2) == before  # another connection: the old row, stored under a new generation

    patch_generations = store._patch_generations

    def confirm_held_back(keys, add=None, drop=None, create=True):
        if drop is not None and not create:  # the confirm, sent without waiting: not applied before commit() returns
            os.kill(pid, signal.SIGSTOP)
        return patch_generations(keys, add=add, drop=drop, create=create)
    event.listen(db.engine, "commit", evicted_meanwhile)
    monkeypatch.setattr(store, "_patch_generations", confirm_held_back)
    try:
        with db.Session() as session:
            session.get(User, 2, execution_options={"ferric_cache": False}).name = "renamed"
            session.commit()
        event.remove(db.engine, "commit", evicted_meanwhile)
        seen = _read_name(db, 2)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert seen == "renamed"
