"""Every write path invalidates what it changed, after commit only, and no more than it changed."""

import pytest
from sqlalchemy import delete, func, insert, select, text, update

from tests.integrations.sqlalchemy.models import Address, Comment, Country, Membership, Product, Tag, User, user_tags
from tests.integrations.sqlalchemy.seed import seed


def read_name(db, pk=2):
    with db.Session() as session:
        user = session.get(User, pk)
        return None if user is None else user.name


def user_names(db):
    with db.Session() as session:
        return session.scalars(select(User.name).order_by(User.id)).all()


def warm(db, *reads):
    """Run each read twice, so that the second run is a hit and everything is cached."""
    for read in reads:
        read(db)
        read(db)
    db.reset_counts()


def cached(db, read) -> bool:
    """True if ``read`` is answered without a SELECT reaching the database."""
    before = db.selects()
    read(db)
    return db.selects() == before


def commit(db, work):
    with db.Session() as session:
        work(session)
        session.commit()


def test_orm_update_invalidates_that_row_and_the_table_queries_only(db):
    seed(db)
    warm(db, read_name, lambda d: read_name(d, 3), user_names)
    commit(db, lambda s: setattr(s.get(User, 2), "name", "two"))
    assert read_name(db) == "two"
    assert user_names(db)[1] == "two"
    assert cached(db, lambda d: read_name(d, 3))  # another row's get is untouched


def test_orm_insert_invalidates_a_cached_missing_row_and_queries(db):
    seed(db)
    warm(db, lambda d: read_name(d, 77), user_names)
    assert read_name(db, 77) is None
    commit(db, lambda s: s.add(User(id=77, name="new")))
    assert read_name(db, 77) == "new"
    assert user_names(db)[-1] == "new"


def test_orm_delete_invalidates(db):
    seed(db)
    warm(db, lambda d: read_name(d, 5), user_names)
    commit(db, lambda s: s.delete(s.get(User, 5)))
    assert read_name(db, 5) is None
    assert len(user_names(db)) == 4


def test_primary_key_change_invalidates_old_and_new_key(db):
    seed(db)
    warm(db, lambda d: read_name(d, 88), lambda d: read_name(d, 4))

    def rekey(session):
        session.execute(delete(Comment).where(Comment.user_id == 4))
        session.execute(delete(Address).where(Address.user_id == 4))
        session.execute(delete(user_tags).where(user_tags.c.user_id == 4))
        session.get(User, 4).id = 88
    commit(db, rekey)
    assert read_name(db, 4) is None
    assert read_name(db, 88) == "user4"


@pytest.mark.parametrize("statement", [
    pytest.param(lambda: update(User).where(User.id == 2).values(name="bulk"), id="orm-update"),
    pytest.param(lambda: update(User.__table__).where(User.__table__.c.id == 2).values(name="bulk"), id="core-update"),
])
def test_bulk_and_core_updates_invalidate_every_get_of_the_table(db, statement):
    seed(db)
    warm(db, read_name, lambda d: read_name(d, 3), user_names)
    commit(db, lambda s: s.execute(statement()))
    assert read_name(db) == "bulk"
    assert not cached(db, lambda d: read_name(d, 3))  # a bulk write names no row: the whole table goes
    assert user_names(db)[1] == "bulk"


def test_bulk_delete_invalidates(db):
    seed(db)
    warm(db, lambda d: read_name(d, 4))
    commit(db, lambda s: (s.execute(delete(Comment).where(Comment.user_id >= 4)),
                          s.execute(delete(Address).where(Address.user_id >= 4)),
                          s.execute(delete(User).where(User.id >= 4))))
    assert read_name(db, 4) is None


def test_executemany_insert_invalidates(db):
    seed(db)
    counts = lambda d: _scalar(d, select(func.count(Tag.id)))  # noqa: E731
    warm(db, counts)
    commit(db, lambda s: s.execute(insert(Tag), [{"id": 10 + i, "label": f"t{i}"} for i in range(5)]))
    assert counts(db) == 7


def test_core_dml_on_a_bare_connection_invalidates_once_the_block_commits(db):
    seed(db)
    warm(db, read_name)
    with db.engine.begin() as connection:
        connection.execute(update(User.__table__).where(User.__table__.c.id == 2).values(name="core"))
    assert read_name(db) == "core"


def test_core_dml_on_a_bare_connection_rolled_back_invalidates_nothing(db):
    seed(db)
    warm(db, read_name)
    with db.engine.connect() as connection:
        connection.execute(update(User.__table__).values(name="never"))
        connection.rollback()
    assert cached(db, read_name)
    assert read_name(db) == "user2"


def test_text_dml_naming_its_tables_invalidates_them(db):
    seed(db)
    warm(db, read_name, lambda d: _scalar(d, select(Product.name)))
    commit(db, lambda s: s.execute(text("UPDATE users SET name = 'text' WHERE id = 2"),
                                   execution_options={"ferric_invalidates": [User]}))
    assert read_name(db) == "text"
    assert cached(db, lambda d: _scalar(d, select(Product.name)))


def test_text_dml_naming_nothing_invalidates_everything_and_warns(db, caplog):
    seed(db)
    warm(db, read_name, lambda d: _scalar(d, select(Product.name)))
    commit(db, lambda s: s.execute(text("UPDATE users SET name = 'text' WHERE id = 2")))
    assert "ferric_invalidates" in caplog.text
    assert read_name(db) == "text"
    assert not cached(db, lambda d: _scalar(d, select(Product.name)))


def test_text_select_invalidates_nothing(db):
    seed(db)
    warm(db, read_name)
    commit(db, lambda s: s.execute(text("SELECT name FROM users")))
    assert cached(db, read_name)


def test_invalidation_waits_for_commit(db):
    seed(db)
    warm(db, read_name)
    with db.Session() as writer:
        writer.get(User, 2).name = "uncommitted"
        writer.flush()
        assert read_name(db) == "user2"  # another session: the old row, still cached
        assert cached(db, read_name)
        writer.commit()
    assert read_name(db) == "uncommitted"


def test_rollback_drops_the_invalidation(db):
    seed(db)
    warm(db, read_name, user_names)
    with db.Session() as session:
        session.get(User, 2).name = "rolled back"
        session.flush()
        session.rollback()
    assert cached(db, read_name)
    assert cached(db, user_names)


def test_savepoint_rollback_drops_only_its_own_writes(db):
    seed(db)
    warm(db, read_name, lambda d: read_name(d, 3))
    with db.Session() as session:
        session.get(User, 3).name = "kept"
        session.flush()
        with session.begin_nested() as savepoint:
            session.get(User, 2).name = "dropped"
            session.flush()
            savepoint.rollback()
        session.commit()
    assert read_name(db, 3) == "kept"
    assert cached(db, read_name)


def test_released_savepoint_writes_are_published_at_commit(db):
    seed(db)
    warm(db, read_name)
    with db.Session() as session:
        with session.begin_nested():
            session.get(User, 2).name = "nested"
        assert cached(db, read_name)
        session.commit()
    assert read_name(db) == "nested"


def test_a_write_to_a_joined_table_invalidates_the_join(db):
    seed(db)
    joined = lambda d: _all(d, select(User.id).join(User.addresses).where(Address.email == "moved@x"))  # noqa: E731
    warm(db, joined)
    assert joined(db) == []
    commit(db, lambda s: setattr(s.get(Address, 31), "email", "moved@x"))
    assert joined(db) == [3]


def test_a_write_to_an_eagerly_loaded_table_invalidates_a_get(db):
    from sqlalchemy.orm import selectinload

    seed(db)

    def emails(d):
        with d.Session() as session:
            return [a.email for a in session.get(User, 2, options=[selectinload(User.addresses)]).addresses]
    warm(db, emails, emails)
    assert cached(db, emails)
    commit(db, lambda s: s.add(Address(id=200, email="added@x", user_id=2)))
    assert emails(db) == ["a2@x", "b2@x", "added@x"]


def test_many_to_many_changes_invalidate_the_collection(db):
    seed(db)

    def labels(d):
        with d.Session() as session:
            return [t.label for t in session.get(User, 1).tags]
    warm(db, labels)
    assert labels(db) == ["red"]

    def add_tag(session):
        user = session.get(User, 1)
        user.tags.append(session.get(Tag, 2))
    commit(db, add_tag)
    assert labels(db) == ["red", "blue"]
    commit(db, lambda s: s.execute(delete(user_tags)))
    assert labels(db) == []


def test_database_cascades_invalidate_dependent_tables(db):
    seed(db)

    def bodies(d):
        return _all(d, select(Comment.body).order_by(Comment.id))
    warm(db, bodies)

    def remove_user_3(session):
        session.execute(delete(Address).where(Address.user_id == 3))
        session.delete(session.get(User, 3))  # comments go by ON DELETE CASCADE, which the ORM never sees
    commit(db, remove_user_3)
    assert bodies(db) == ["comment 1", "comment 2", "comment 4", "comment 5"]


def test_explicit_invalidate_of_a_row_and_of_a_class(db):
    seed(db)
    warm(db, read_name, lambda d: read_name(d, 3))
    with db.engine.connect() as connection:  # writes the cache cannot see: raw DBAPI
        cursor = connection.connection.cursor()
        cursor.execute("UPDATE users SET name = 'raw'")
        connection.connection.commit()
    assert read_name(db) == "user2"
    db.cache.invalidate(User, 2)
    assert read_name(db) == "raw"
    assert read_name(db, 3) == "user3"
    db.cache.invalidate(User)
    assert read_name(db, 3) == "raw"


def test_invalidate_region(db):
    seed(db)
    price = lambda d: str(_scalar(d, select(Product.price)))  # noqa: E731
    warm(db, price, read_name)
    db.cache.invalidate_region("catalog")
    assert not cached(db, price)
    assert cached(db, read_name)


def test_composite_key_rows_are_invalidated_by_their_whole_key(db):
    seed(db)

    def role(d):
        with d.Session() as session:
            return session.get(Membership, (1, "a:b{c}")).role
    warm(db, role)
    commit(db, lambda s: setattr(s.get(Membership, (1, "a:b{c}")), "role", "member"))
    assert role(db) == "member"


def test_reads_inside_a_writing_transaction_see_its_writes(db):
    seed(db)
    warm(db, read_name, user_names)
    with db.Session() as session:
        session.get(User, 2).name = "mine"
        session.flush()
        assert session.scalars(select(User.name).order_by(User.id)).all()[1] == "mine"
        session.execute(update(Product).values(name="pencil"))
        assert session.scalar(select(Product.name)) == "pencil"
        session.rollback()
    assert cached(db, user_names)


def test_unflushed_changes_are_autoflushed_before_a_read_of_their_table(db):
    seed(db)
    warm(db, user_names)
    with db.Session() as session:
        session.add(User(id=60, name="pending"))
        assert "pending" in session.scalars(select(User.name)).all()
        session.rollback()
    assert "pending" not in user_names(db)


def test_read_only_rows_are_cached_and_inserts_invalidate_their_queries(db):
    seed(db)
    codes = lambda d: _all(d, select(Country.code).order_by(Country.code))  # noqa: E731
    warm(db, codes)
    commit(db, lambda s: s.add(Country(code="it", name="Italy")))
    assert codes(db) == ["de", "fr", "it"]


def _scalar(db, statement):
    with db.Session() as session:
        return session.scalar(statement)


def _all(db, statement):
    with db.Session() as session:
        return session.scalars(statement).all()


def test_core_dml_on_the_sessions_own_connection_invalidates_at_commit(db):
    seed(db)
    warm(db, read_name)

    def raw_core(session):
        table = User.__table__
        session.connection().execute(update(table).where(table.c.id == 2).values(name="own connection"))
        assert cached(db, read_name)  # not before the commit
    commit(db, raw_core)
    assert read_name(db) == "own connection"


def test_writes_through_a_session_the_cache_is_not_attached_to_still_invalidate(db):
    """Write tracking follows the connections of the whole process, not only the attached sessions."""
    from sqlalchemy.orm import sessionmaker

    seed(db)
    warm(db, read_name, lambda d: read_name(d, 3))
    other = sessionmaker(db.engine)
    with other() as session:
        session.get(User, 2).name = "elsewhere"
        session.commit()
    assert read_name(db) == "elsewhere"
    assert not cached(db, lambda d: read_name(d, 3))  # rows unknown to it: the table's gets go too


def test_invalidate_tables_and_naming_the_database(db, ferricd):
    from ferric_sqlalchemy import QueryCache

    seed(db)
    price = lambda d: str(_scalar(d, select(Product.price)))  # noqa: E731
    warm(db, price, read_name)
    db.cache.invalidate_tables(["products"], bind=db.engine)
    assert not cached(db, price)
    assert cached(db, read_name)
    with db.Session() as session:
        db.cache.invalidate(User, 2, bind=session)
    assert not cached(db, read_name)
    fresh = QueryCache(client=ferricd.client())
    with pytest.raises(ValueError, match="bind="):
        fresh.invalidate(User)  # this process's new cache has used no database yet: it must be told which
    with pytest.raises(TypeError, match="mapped class"):
        db.cache.invalidate(object)


class _Requests:
    """Counts the calls a Client makes that go to ferricd (every write, and reads that are not local)."""

    WRITES = ("set", "mset", "delete", "delete_if", "set_if", "incr", "lease", "release", "transaction",
              "pipeline", "patch", "expire", "getex", "getdel", "ping", "hello")

    def __init__(self, client):
        self.calls: list[str] = []
        for name in self.WRITES:
            original = getattr(client, name)
            setattr(client, name, self._counting(name, original))

    def _counting(self, name, original):
        def call(*args, **kwargs):
            self.calls.append(name)
            return original(*args, **kwargs)
        return call


def test_a_commit_writing_several_tables_is_one_request_to_ferricd_on_each_side_of_the_database_commit(db):
    """Rows of three tables, their table generations and (bulk) the whole of a fourth: one transaction as the
    database commits and one after (the generations of one database share a shard), neither waited for after
    the database committed."""
    seed(db)
    requests = _Requests(db.cache.store.client)
    with db.Session() as session:
        session.get(User, 2).name = "renamed"
        session.add(Address(id=99, user_id=3, email="new@x"))
        session.add(Tag(id=9, label="green"))
        session.execute(update(Product).values(name="pencil"))
        requests.calls.clear()  # the reads above may have stored entries
        session.commit()
    assert requests.calls == ["transaction", "transaction"]
    assert db.cache.stats()["tables"]["products"]["invalidations"] >= 1
