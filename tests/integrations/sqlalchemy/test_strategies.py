"""The three strategies keep different promises (docs/sqlalchemy.md, "Strategies"), and each is held to its own."""

import threading

import pytest
from sqlalchemy import delete, event, text, update

from ferric_sqlalchemy import ReadOnlyEntityError
from tests.integrations.sqlalchemy.models import Country, Note, User
from tests.integrations.sqlalchemy.seed import seed

LEASE_SUBSPACE = b"\x02l\x00"  # the tuple after a key's hash tag starts with the string "l"


class PausedRead:
    """Runs ``read()`` in a thread and holds it right after its SELECT ran, until ``resume()``."""

    def __init__(self, db, read):
        self._db = db
        self._read = read
        self._queried = threading.Event()
        self._resume = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self.result = None
        self.error = None

    def _hold(self, connection, cursor, statement, parameters, context, executemany):
        if threading.current_thread() is self._thread and statement.lstrip().upper().startswith("SELECT"):
            self._queried.set()
            assert self._resume.wait(30), "never resumed"

    def _run(self):
        try:
            self.result = self._read()
        except BaseException as exc:  # reported by join()
            self.error = exc

    def __enter__(self):
        event.listen(self._db.engine, "after_cursor_execute", self._hold)
        self._thread.start()
        assert self._queried.wait(30), "the read never reached the database"
        return self

    def resume(self):
        self._resume.set()
        self._thread.join(30)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result

    def __exit__(self, *exc_info):
        self._resume.set()
        self._thread.join(30)
        event.remove(self._db.engine, "after_cursor_execute", self._hold)


def read_text(db, model, pk=1):
    with db.Session() as session:
        row = session.get(model, pk)
        return row.text if model is Note else row.name


def write_text(db, model, value, pk=1):
    with db.Session() as session:
        row = session.get(model, pk)
        if model is Note:
            row.text = value
        else:
            row.name = value
        session.commit()


@pytest.mark.parametrize("model, stale_after", [(User, False), (Note, True)], ids=["read_write", "nonstrict"])
def test_a_slow_reader_racing_a_writer(db, store, model, stale_after):
    """read_write: the slow reader's old rows are stored where no later reader looks.
    nonstrict_read_write: they are stored under the new generations, and served until the next write."""
    seed(db)
    old = read_text(db, model)
    db.cache.invalidate(model, 1)  # the next read misses
    with PausedRead(db, lambda: read_text(db, model)) as slow:
        write_text(db, model, "new")  # commits while the slow reader holds its old rows
        assert slow.resume() == old
    assert read_text(db, model) == (old if stale_after else "new")


@pytest.mark.parametrize("model, leased", [(User, True), (Note, False)], ids=["read_write", "nonstrict"])
def test_a_miss_holds_a_lease_only_under_read_write(db, store, model, leased):
    seed(db)
    db.cache.invalidate(model, 1)
    with PausedRead(db, lambda: read_text(db, model)) as slow:
        leases = [key for key in store.scan_iter(b"sa:") if key[key.index(b"}") + 1:].startswith(LEASE_SUBSPACE)]
        assert len(leases) == (1 if leased else 0)
        slow.resume()
    assert not [key for key in store.scan_iter(b"sa:") if key[key.index(b"}") + 1:].startswith(LEASE_SUBSPACE)]


def test_nonstrict_still_invalidates_after_commit(db):
    seed(db)
    read_text(db, Note)
    write_text(db, Note, "second")
    assert read_text(db, Note) == "second"


@pytest.mark.parametrize("write", [
    pytest.param(lambda s: setattr(s.get(Country, "fr"), "name", "Francia"), id="orm-update"),
    pytest.param(lambda s: s.delete(s.get(Country, "fr")), id="orm-delete"),
    pytest.param(lambda s: s.execute(update(Country).values(name="x")), id="bulk-update"),
    pytest.param(lambda s: s.execute(delete(Country.__table__)), id="core-delete"),
    pytest.param(lambda s: s.execute(text("UPDATE countries SET name = 'x'"),
                                     execution_options={"ferric_invalidates": [Country]}), id="text"),
])
def test_read_only_refuses_updates_and_deletes_before_the_database_sees_them(db, write):
    seed(db)
    with db.Session() as session, pytest.raises(ReadOnlyEntityError, match="read_only"):
        write(session)
        session.commit()
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM countries WHERE code = 'fr'")).scalar() == "France"


def test_read_only_allows_inserts(db):
    seed(db)
    with db.Session() as session:
        session.add(Country(code="es", name="Spain"))
        session.commit()
    with db.Session() as session:
        assert session.get(Country, "es").name == "Spain"


def test_read_only_gets_do_not_depend_on_row_generations(db):
    """A read_only row never changes, so its cached get reads fewer generations than a read_write one."""
    seed(db)
    with db.Session() as session:
        session.get(Country, "fr")
        session.get(User, 1)
    plans = {}
    original = db.cache._plan

    def spy(state, ttl_ms):
        plan = original(state, ttl_ms)
        plans[state.statement.column_descriptions[0]["entity"]] = plan
        return plan
    db.cache._plan = spy
    with db.Session() as session:
        session.get(Country, "fr")
        session.get(User, 1)
    row_key = b"\x02row\x00"
    assert not any(row_key in key for key in plans[Country].dependencies)
    assert any(row_key in key for key in plans[User].dependencies)
