"""Per-query control: ferric_cache=False | "refresh" | "cache_only" | {"ttl": ms}, and attaching."""

import datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from ferric_sqlalchemy import NotCacheableError, QueryCache
from tests.integrations.sqlalchemy.models import Product, User
from tests.integrations.sqlalchemy.seed import seed


def get_name(db, option=None, pk=2):
    with db.Session() as session:
        options = {} if option is None else {"ferric_cache": option}
        user = session.get(User, pk, execution_options=options)
        return None if user is None else user.name


def raw_rename(db, name, pk=2):
    """Change a row behind the cache's back (so a stale hit is visible)."""
    with db.engine.connect() as connection:
        cursor = connection.connection.cursor()
        cursor.execute(f"UPDATE users SET name = '{name}' WHERE id = {pk}")
        connection.connection.commit()


def test_false_bypasses_the_cache_entirely(db):
    seed(db)
    get_name(db)
    raw_rename(db, "behind")
    db.reset_counts()
    assert get_name(db, False) == "behind"
    assert get_name(db) == "user2"  # the cached entry is still there, untouched by the bypass
    assert db.selects() == 1


def test_refresh_reads_the_database_and_replaces_the_entry(db):
    seed(db)
    get_name(db)
    raw_rename(db, "behind")
    assert get_name(db) == "user2"
    db.reset_counts()
    assert get_name(db, "refresh") == "behind"
    assert db.selects() == 1
    assert get_name(db) == "behind"
    assert db.selects() == 1


def test_cache_only_never_touches_the_database(db):
    seed(db)
    get_name(db)
    db.reset_counts()
    with db.Session() as session:
        assert get_name(db, "cache_only") == "user2"
        assert get_name(db, "cache_only", pk=3) is None  # a miss: None, not a query
        statement = select(User).where(User.id > 3).execution_options(ferric_cache="cache_only")
        assert session.scalars(statement).all() == []
        assert session.execute(select(User.name).execution_options(ferric_cache="cache_only")).all() == []
    assert db.statements == []


def test_cache_only_refuses_statements_the_cache_never_holds(db):
    seed(db)
    with db.Session() as session, pytest.raises(NotCacheableError, match="FOR UPDATE"):
        session.scalars(select(User).with_for_update().execution_options(ferric_cache="cache_only")).all()
    with db.Session() as session, pytest.raises(NotCacheableError):
        session.execute(text("SELECT 1").execution_options(ferric_cache="cache_only"))


def test_ttl_option_sets_the_entry_lifetime(db, store):
    seed(db)
    with db.Session() as session:
        session.get(User, 2, execution_options={"ferric_cache": {"ttl": 1_000_000}})
        session.get(User, 3, execution_options={"ferric_cache": {"ttl": datetime.timedelta(seconds=5)}})
    ttls = sorted(store.pttl(key) for key in store.scan_iter(b"sa:") if _is_entry(key))
    assert len(ttls) == 2
    assert 0 < ttls[0] <= 5_000 and 300_000 < ttls[1] <= 1_000_000


def test_a_ttl_option_applies_to_its_own_get_only(db, store):
    """A get's keys are worked out once per primary key and shared: a ttl given to one call must not leak
    into the calls before or after it."""
    seed(db)

    def entry_ttl(**options):
        db.cache.invalidate(User, 2, bind=db.engine)  # the next get misses and stores
        store.delete(*[key for key in store.scan_iter(b"sa:") if _is_entry(key)])
        with db.Session() as session:
            session.get(User, 2, execution_options=options)
        [ttl] = [store.pttl(key) for key in store.scan_iter(b"sa:") if _is_entry(key)]
        return ttl

    assert entry_ttl() > 5_000  # the default (300 s), remembered for this key
    assert 0 < entry_ttl(ferric_cache={"ttl": 5_000}) <= 5_000
    assert entry_ttl() > 5_000


def test_class_ttl_and_default_ttl(ferricd, database, store):
    cache = QueryCache(client=ferricd.client(), prefix="ttl:", default_ttl_ms=7_000)
    cache.attach(database.Session)
    try:
        seed(database)
        with database.Session() as session:
            session.get(User, 1)  # no ttl on the class: the cache's default
            session.scalars(select(Product)).all()  # @cacheable(ttl=60_000)
        ttls = sorted(store.pttl(key) for key in store.scan_iter(b"ttl:") if _is_entry(key))
        assert len(ttls) == 2
        assert 0 < ttls[0] <= 7_000 < ttls[1] <= 60_000
    finally:
        cache.detach(database.Session)


@pytest.mark.parametrize("bad", ["yes", 1, {"ttl": 0}, {"ttl": "5"}, {"ttl": 5, "other": 1}, {"mode": "refresh"}])
def test_bad_option_values_are_refused_clearly(db, bad):
    seed(db)
    with db.Session() as session, pytest.raises((TypeError, ValueError), match="ferric_cache"):
        session.get(User, 2, execution_options={"ferric_cache": bad})


@pytest.mark.parametrize("make_target", [
    pytest.param(lambda engine: sessionmaker(engine), id="sessionmaker"),
    pytest.param(lambda engine: scoped_session(sessionmaker(engine)), id="scoped_session"),
    pytest.param(lambda engine: type("AppSession", (Session,), {}), id="session-subclass"),
])
def test_attach_and_detach_each_kind_of_target(ferricd, database, make_target):
    seed(database)
    target = make_target(database.engine)
    cache = QueryCache(client=ferricd.client())
    cache.attach(target)
    cache.attach(target)  # twice: still one set of listeners

    def session():
        if isinstance(target, scoped_session):
            return target()
        return target(database.engine) if isinstance(target, type) else target()

    try:
        for _ in range(2):
            with session() as s:
                s.get(User, 2)
            if isinstance(target, scoped_session):
                target.remove()
        assert cache.stats()["hits"] == 1
    finally:
        cache.detach(target)
    with session() as s:
        s.get(User, 2)
    assert cache.stats()["hits"] == 1  # detached: nothing served any more


def test_attach_to_one_session(ferricd, database):
    seed(database)
    cache = QueryCache(client=ferricd.client())
    session = database.Session()
    cache.attach(session)
    try:
        session.get(User, 2)
        session.expunge_all()
        session.get(User, 2)
        assert cache.stats()["hits"] == 1
    finally:
        cache.detach(session)
        session.close()


def test_attach_refuses_other_things(ferricd):
    cache = QueryCache(client=ferricd.client())
    with pytest.raises(TypeError, match="sessionmaker"):
        cache.attach(object())


@pytest.mark.parametrize("kwargs, error", [
    ({"prefix": "a{b"}, ValueError), ({"prefix": ""}, TypeError), ({"default_ttl_ms": 0}, TypeError),
    ({"lease_wait_ms": 1.5}, TypeError),
])
def test_constructor_arguments_are_checked(kwargs, error):
    with pytest.raises(error):
        QueryCache(**kwargs)


def test_stats_count_per_table(db):
    seed(db)
    seeded = db.cache.stats()["tables"]["users"]["invalidations"]  # the seed's own commit
    get_name(db)
    get_name(db)
    with db.Session() as session:
        session.get(User, 2).name = "x"
        session.commit()
    stats = db.cache.stats()
    assert stats["hits"] == 2 and stats["misses"] == 1 and stats["stores"] == 1  # the writer's get was a hit
    assert stats["tables"]["users"]["hits"] == 2
    assert stats["tables"]["users"]["invalidations"] == seeded + 1
    assert set(stats) >= {"hits", "misses", "stores", "invalidations", "tables"}


def _is_entry(key: bytes) -> bool:
    """Entry keys: the tuple after the hash tag starts with the string "e"."""
    return key[key.index(b"}") + 1:].startswith(b"\x02e\x00")


def test_a_statement_rewriting_listener_must_come_before_the_cache(db, caplog):
    """A per-request filter added after the cache would have its rows stored under the unfiltered key."""
    from sqlalchemy import event
    from sqlalchemy.orm import with_loader_criteria

    seed(db)
    hidden = {"ids": set()}

    def hide(state):
        if state.is_select:
            state.statement = state.statement.options(
                with_loader_criteria(User, User.id.not_in(sorted(hidden["ids"]) or [-1])))

    event.listen(db.Session, "do_orm_execute", hide)  # after the cache: bypassed, with a warning
    try:
        hidden["ids"] = {2}
        with db.Session() as session:
            assert [u.id for u in session.scalars(select(User).order_by(User.id))] == [1, 3, 4, 5]
        hidden["ids"] = set()
        with db.Session() as session:
            assert [u.id for u in session.scalars(select(User).order_by(User.id))] == [1, 2, 3, 4, 5]
        assert "register it before attaching the cache" in caplog.text
    finally:
        event.remove(db.Session, "do_orm_execute", hide)


def test_a_statement_rewriting_listener_before_the_cache_is_cached_per_filter(db):
    from sqlalchemy import event
    from sqlalchemy.orm import with_loader_criteria

    seed(db)
    hidden = {"ids": [-1]}

    def hide(state):
        if state.is_select:
            state.statement = state.statement.options(with_loader_criteria(User, User.id.not_in(hidden["ids"])))

    db.cache.detach(db.Session)
    event.listen(db.Session, "do_orm_execute", hide)
    db.cache.attach(db.Session)
    try:
        def ids():
            with db.Session() as session:
                return [u.id for u in session.scalars(select(User).order_by(User.id))]
        for hide_ids, expected in (([2], [1, 3, 4, 5]), ([-1], [1, 2, 3, 4, 5]), ([2], [1, 3, 4, 5])):
            hidden["ids"] = hide_ids
            db.reset_counts()
            assert ids() == expected
        assert db.selects() == 0  # the third is the first's entry, filter and all
    finally:
        db.cache.detach(db.Session)
        event.remove(db.Session, "do_orm_execute", hide)
        db.cache.attach(db.Session)
