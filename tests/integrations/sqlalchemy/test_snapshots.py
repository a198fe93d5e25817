"""A result is stored only if the database snapshot it came from cannot be older than the generations read."""

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker

from tests.integrations.sqlalchemy.models import Tag, User
from tests.integrations.sqlalchemy.seed import seed


def stored(db, read) -> bool:
    """True if ``read`` (in a fresh session) is answered by the cache."""
    db.reset_counts()
    with db.Session() as session:
        read(session)
    return db.selects() == 0


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
@pytest.mark.parametrize("how", ["execution_options", "create_engine"])
def test_repeatable_read_stores_only_a_transactions_first_statement(db, how):
    seed(db)
    if how == "execution_options":
        engine = db.engine.execution_options(isolation_level="REPEATABLE READ")
    else:
        engine = create_engine(db.url, isolation_level="REPEATABLE READ")
    repeatable = sessionmaker(engine)
    db.cache.attach(repeatable)
    try:
        with repeatable() as session:
            session.scalar(select(func.count(Tag.id)))  # first: the snapshot is taken by this very statement
            session.get(User, 2)  # later: the snapshot may predate the generations it read
        assert stored(db, lambda s: s.scalar(select(func.count(Tag.id))))
        assert not stored(db, lambda s: s.get(User, 2))
    finally:
        db.cache.detach(repeatable)
        if how == "create_engine":
            engine.dispose()


def test_read_committed_and_autocommitted_reads_are_stored_whenever_they_run(db):
    seed(db)
    with db.Session() as session:
        session.scalar(select(func.count(Tag.id)))
        session.get(User, 2)  # not the first statement: stored all the same (each statement sees the latest)
    assert stored(db, lambda s: s.get(User, 2))
