"""What the cache serves, and that what it serves behaves exactly like rows loaded from the database."""

import datetime
import decimal

import pytest
from sqlalchemy import String, event, func, inspect, select, text, update
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    aliased,
    defer,
    joinedload,
    mapped_column,
    selectinload,
    subqueryload,
    undefer,
)

from ferric_sqlalchemy import NotCacheableError, cacheable
from tests.integrations.sqlalchemy.models import Address, AuditLog, Country, Draft, Membership, Status, Tag, User
from tests.integrations.sqlalchemy.seed import PARIS, TOKEN, seed


U2 = aliased(User, name="u2")


def twice(db, read):
    """Run ``read(session)`` in two fresh sessions; return both results and the SELECTs each one sent."""
    counts, results = [], []
    for _ in range(2):
        db.reset_counts()
        with db.Session() as session:
            results.append(read(session))
        counts.append(db.selects())
    return results, counts


def test_get_is_served_from_cache_after_one_query(db):
    seed(db)
    (first, second), counts = twice(db, lambda s: s.get(User, 3).name)
    assert first == second == "user3"
    assert counts == [1, 0]
    assert db.cache.stats()["hits"] == 1


def test_get_of_a_missing_row_is_cached_as_none(db):
    seed(db)
    (first, second), counts = twice(db, lambda s: s.get(User, 999))
    assert first is second is None
    assert counts == [1, 0]


@pytest.mark.parametrize("read", [
    pytest.param(lambda s: [u.id for u in s.scalars(select(User).where(User.name.like("user%"))
                                                   .order_by(User.id.desc()).limit(3))], id="where-order-limit"),
    pytest.param(lambda s: [u.id for u in s.scalars(select(User).join(User.addresses)
                                                   .where(Address.email == "b2@x"))], id="join"),
    pytest.param(lambda s: [u.id for u in s.scalars(select(User).where(User.id.in_(
        select(Address.user_id).where(Address.email.like("a%")))).order_by(User.id))], id="subquery"),
    pytest.param(lambda s: s.scalar(select(func.count(User.id))), id="aggregate"),
    pytest.param(lambda s: s.execute(select(User.name, func.count(Address.id)).join(User.addresses)
                                     .group_by(User.name).order_by(User.name)).all(), id="columns-group-by"),
    pytest.param(lambda s: s.scalars(select(User.email).where(User.id > 2).order_by(User.id)).all(), id="column"),
    pytest.param(lambda s: [u.id for u in s.scalars(select(U2).order_by(U2.id))], id="aliased"),
    pytest.param(lambda s: [(m.user_id, m.group, m.role) for m in s.scalars(select(Membership))], id="composite-pk"),
    pytest.param(lambda s: [u.name for u in s.query(User).filter(User.id < 3).order_by(User.id).all()],
                 id="legacy-query"),
    pytest.param(lambda s: s.query(User).get(2).name, id="legacy-query-get",
                 marks=pytest.mark.filterwarnings("ignore:The Query.get")),
])
def test_selects_are_served_from_cache(db, read):
    seed(db)
    (first, second), counts = twice(db, read)
    assert first == second
    assert counts[0] >= 1 and counts[1] == 0


@pytest.mark.parametrize("option", [selectinload, joinedload, subqueryload])
def test_eager_loads_are_cached_with_the_collection_loaded(db, option):
    seed(db)

    def read(session):
        users = session.scalars(select(User).options(option(User.addresses)).order_by(User.id)).unique().all()
        loaded = all("addresses" in inspect(user).dict for user in users)
        return loaded, [(user.id, [a.email for a in user.addresses]) for user in users]

    # A load whose later statements read another table is stored from its second run, once that table is known.
    for _ in range(2):
        with db.Session() as session:
            read(session)
    db.reset_counts()
    with db.Session() as session:
        loaded, rows = read(session)
    assert loaded
    assert rows[1] == (2, ["a2@x", "b2@x"])
    assert db.selects() == 0


def test_lazy_loads_of_cacheable_targets_are_cached(db):
    seed(db)
    (first, second), counts = twice(db, lambda s: [a.email for a in s.get(User, 2).addresses])
    assert first == second == ["a2@x", "b2@x"]
    assert counts == [2, 0]
    (many_to_one, again), counts = twice(db, lambda s: s.get(Address, 31).user.name)
    assert many_to_one == again == "user3"
    assert counts == [2, 0]


def test_many_to_many_through_a_secondary_table_is_cached(db):
    seed(db)
    (first, second), counts = twice(db, lambda s: [t.label for t in s.get(User, 2).tags])
    assert first == second == ["red", "blue"]
    assert counts == [2, 0]


def test_a_hit_returns_persistent_objects_in_the_identity_map(db):
    seed(db)
    twice(db, lambda s: s.scalars(select(User).where(User.id == 2)).one())
    twice(db, lambda s: s.get(User, 2))
    with db.Session() as session:
        db.reset_counts()
        user = session.scalars(select(User).where(User.id == 2)).one()
        assert db.selects() == 0
        state = inspect(user)
        assert state.persistent and not state.modified
        assert session.get(User, 2) is user  # the identity map answers, no query
        assert session.scalars(select(User).where(User.id == 2)).one() is user
        assert db.selects() == 0


def test_a_hit_keeps_deferred_and_lazy_attributes_unloaded_until_used(db):
    seed(db)
    twice(db, lambda s: s.get(User, 2))
    with db.Session() as session:
        db.reset_counts()
        user = session.get(User, 2)
        assert db.selects() == 0
        assert {"bio", "addresses", "tags"} <= inspect(user).unloaded
        assert user.bio == "bio of 2"  # loaded from the database, as without a cache
        assert [a.email for a in user.addresses] == ["a2@x", "b2@x"]


def test_an_object_from_a_hit_can_be_changed_and_flushed(db):
    seed(db)
    twice(db, lambda s: s.get(User, 2))
    with db.Session() as session:
        user = session.get(User, 2)
        user.name = "renamed"
        user.addresses.append(Address(id=99, email="new@x"))
        session.commit()
    with db.Session() as session:
        assert session.get(User, 2).name == "renamed"
        assert [a.id for a in session.get(User, 2).addresses] == [21, 22, 99]
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM users WHERE id = 2")).scalar() == "renamed"


def test_a_hit_does_not_overwrite_an_object_already_in_the_session(db):
    seed(db)
    twice(db, lambda s: s.scalars(select(User).order_by(User.id)).all())
    with db.Session() as session:
        session.autoflush = False
        user = session.get(User, 1)
        user.name = "pending change"
        users = session.scalars(select(User).order_by(User.id)).all()
        assert users[0] is user and user.name == "pending change"
        assert inspect(user).modified


def test_deferred_options_are_part_of_the_shape(db):
    seed(db)
    (undeferred, _), _ = twice(db, lambda s: s.scalars(select(User).options(undefer(User.bio))
                                                        .where(User.id == 1)).one().bio)
    assert undeferred == "bio of 1"
    deferring = select(User).options(defer(User.email)).where(User.id == 1)
    twice(db, lambda s: s.scalars(deferring).one())
    with db.Session() as session:
        db.reset_counts()
        user = session.scalars(deferring).one()
        assert db.selects() == 0
        assert "email" in inspect(user).unloaded and "bio" in inspect(user).unloaded
        assert user.email == "u1@example.com"  # loaded on use, as without the cache
        assert user.bio == "bio of 1"


def test_a_hit_fires_the_load_event_as_a_database_load_does(db):
    seed(db)
    loaded = []

    def on_load(target, context):
        loaded.append(target.id)
    event.listen(User, "load", on_load)
    try:
        _, counts = twice(db, lambda s: s.get(User, 4).name)
    finally:
        event.remove(User, "load", on_load)
    assert counts == [1, 0]
    assert loaded == [4, 4]


def test_values_come_back_exactly(db):
    seed(db)
    with db.Session() as session:
        session.add(User(id=50, name="types", created_at=datetime.datetime(2024, 3, 31, 2, 30, tzinfo=PARIS),
                         balance=decimal.Decimal("-0.0001"), token=TOKEN, profile={"a": [1, 2.5, None, "x"]},
                         status=Status.banned, avatar=bytes(range(256)), email=None))
        session.commit()

    def read(session):
        user = session.get(User, 50)
        return (user.created_at, user.balance, user.token, user.profile, user.status, user.avatar, user.email)

    (miss, hit), counts = twice(db, read)
    assert counts == [1, 0]
    assert hit == miss
    for from_db, from_cache in zip(miss, hit):
        assert type(from_cache) is type(from_db)
    assert hit[0].utcoffset() == miss[0].utcoffset()
    assert str(hit[1]) == str(miss[1])


def test_composite_primary_key_with_separators_in_it(db):
    seed(db)
    (first, second), counts = twice(db, lambda s: s.get(Membership, (1, "a:b{c}")).role)
    assert first == second == "owner"
    assert counts == [1, 0]
    with db.Session() as session:
        assert session.get(Membership, (1, "a:b")) is None


@pytest.mark.parametrize("read, reason", [
    (lambda s: s.scalars(select(User).where(User.id == 1).with_for_update()).one(), "FOR UPDATE"),
    (lambda s: s.scalars(select(AuditLog)).all(), "audit_log"),
    (lambda s: s.scalars(select(Draft)).all(), "drafts"),
    (lambda s: s.execute(text("SELECT name FROM users")).all(), None),
    (lambda s: s.scalars(select(User).from_statement(text("SELECT * FROM users"))).all(), "SELECTs of mapped"),
    (lambda s: s.scalars(select(User).where(User.created_at < func.now())).all(), "now()"),
    (lambda s: s.scalars(select(User).join(AuditLog, AuditLog.id == User.id)).all(), "audit_log"),
])
def test_never_cached(db, read, reason):
    seed(db)
    _, counts = twice(db, read)
    assert counts == [1, 1]
    if reason is not None:
        with db.Session() as session, pytest.raises(NotCacheableError, match=reason):
            read(_cache_only(session))


def _cache_only(session):
    """The session, with ferric_cache="cache_only" on every statement it executes."""
    original = session.execute

    def execute(statement, *args, **kwargs):
        return original(statement.execution_options(ferric_cache="cache_only"), *args, **kwargs)

    session.execute = execute
    session.scalars = lambda statement, *a, **k: execute(statement, *a, **k).scalars()
    return session


def test_read_only_entities_are_cached(db):
    seed(db)
    (first, second), counts = twice(db, lambda s: s.get(Country, "fr").name)
    assert first == second == "France"
    assert counts == [1, 0]


def test_tag_collection_order_survives(db):
    seed(db)
    with db.Session() as session:
        session.execute(update(Tag).where(Tag.id == 1).values(label="zzz"))
        session.commit()
    (first, second), _ = twice(db, lambda s: [t.label for t in s.scalars(select(Tag).order_by(Tag.label))])
    assert first == second == ["blue", "zzz"]


def test_rows_of_several_entities_with_outer_joined_nones(db):
    seed(db)
    with db.Session() as session:
        session.add(User(id=40, name="lonely"))  # no address: its Address column is None
        session.commit()

    def read(session):
        rows = session.execute(select(User, Address.email, Address).outerjoin(User.addresses)
                               .where(User.id.in_([1, 40])).order_by(User.id, Address.id)).all()
        return [(user.id, email, address.id if address is not None else None) for user, email, address in rows]

    (first, second), counts = twice(db, read)
    assert first == second == [(1, "a1@x", 11), (1, "b1@x", 12), (40, None, None)]
    assert counts == [1, 0]


class _NoCaseBase(DeclarativeBase):
    pass


@cacheable
class NoCaseCode(_NoCaseBase):
    """A key the database compares without case (SQLite's NOCASE): get("FR") finds the row "fr"."""

    __tablename__ = "nocase_codes"
    code: Mapped[str] = mapped_column(String(10, collation="NOCASE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def test_a_get_answered_with_another_key_is_not_cached(db):
    """Writes name the row by the key the database holds ("fr"): an entry for get("FR") would never be
    invalidated by them, so it is not stored."""
    if db.backend != "sqlite":
        pytest.skip("NOCASE is SQLite's collation")
    _NoCaseBase.metadata.create_all(db.engine)
    with db.Session() as session:
        session.add(NoCaseCode(code="fr", name="France"))
        session.commit()
    for _ in range(2):
        with db.Session() as session:
            assert session.get(NoCaseCode, "FR").name == "France"
    with db.Session() as session:
        session.get(NoCaseCode, "fr").name = "Francia"
        session.commit()
    with db.Session() as session:
        assert session.get(NoCaseCode, "FR").name == "Francia"
    with db.Session() as session:
        assert session.get(NoCaseCode, "fr").name == "Francia"


def test_a_get_with_a_filter_option_is_keyed_by_the_filter_value_too(db):
    """A loader criteria's value is a parameter of the statement besides the key: two values, two entries."""
    from sqlalchemy.orm import with_loader_criteria

    seed(db)
    for name, found in (("user2", True), ("nobody", False), ("user2", True), ("nobody", False)):
        with db.Session() as session:
            user = session.get(User, 2, options=[with_loader_criteria(User, User.name == name)])
            assert (user is not None) is found, name
