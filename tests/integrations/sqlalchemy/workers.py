"""What the multi-process tests run in their child processes.

Children are started with "spawn", so each one builds its own engine, ferric_ipc
Client and QueryCache, as a gunicorn worker does; they report through a queue.
"""

import random
import time

from sqlalchemy import create_engine, event, func, select, text, update
from sqlalchemy.orm import sessionmaker

from ferric_ipc import Client
from ferric_sqlalchemy import QueryCache
from tests.integrations.sqlalchemy import models

COUNTERS = 4  # ids 1..4, two per box
SLOW_QUERY_S = 0.3


def make_engine(backend, url):
    engine = create_engine(url)
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_connect)
    return engine


def _sqlite_connect(dbapi_connection, record):
    dbapi_connection.create_function("ferric_slow", 1, _slow_identity)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=OFF")
    cursor.close()


def _slow_identity(value):
    time.sleep(SLOW_QUERY_S)
    return value


def create_slow_function(engine):
    """The PostgreSQL twin of the SQLite function above, in the test's schema."""
    with engine.begin() as connection:
        connection.execute(text(
            f"CREATE FUNCTION ferric_slow(x integer) RETURNS integer AS "
            f"$$ SELECT pg_sleep({SLOW_QUERY_S}); SELECT x $$ LANGUAGE sql VOLATILE"))


def seed_counters(session_factory):
    with session_factory() as session:
        session.add_all([models.Box(id=1), models.Box(id=2)])
        session.add_all([models.Counter(id=i, box_id=1 + (i - 1) // 2, value=0) for i in range(1, COUNTERS + 1)])
        session.commit()


def _cache(run_dir, engine, **kwargs):
    session_factory = sessionmaker(engine, expire_on_commit=False)
    cache = QueryCache(client=Client(run_dir), **kwargs)
    cache.attach(session_factory)
    return cache, session_factory


# -- the race test -----------------------------------------------------------------------------------


def race_writer(backend, url, run_dir, floors, start, duration_s, seed, out):
    """Write counters by every write path; after each commit returns, publish its value in ``floors``."""
    engine = make_engine(backend, url)
    _, session_factory = _cache(run_dir, engine)
    rng = random.Random(seed)
    values = list(floors)
    commits = {"orm": 0, "bulk": 0, "core": 0, "text": 0}
    start.wait()
    stop_at = time.monotonic() + duration_s
    while time.monotonic() < stop_at:
        k = rng.randrange(COUNTERS)
        values[k] += 1
        value, pk = values[k], k + 1
        path = rng.choice(list(commits))
        if path == "orm":
            with session_factory() as session:
                session.get(models.Counter, pk).value = value
                session.commit()
        elif path == "bulk":
            with session_factory() as session:
                session.execute(update(models.Counter).where(models.Counter.id == pk).values(value=value))
                session.commit()
        elif path == "core":
            table = models.Counter.__table__
            with engine.begin() as connection:
                connection.execute(update(table).where(table.c.id == pk).values(value=value))
        else:
            with session_factory() as session:
                session.execute(text("UPDATE counters SET value = :value WHERE id = :pk"),
                                {"value": value, "pk": pk}, execution_options={"ferric_invalidates": [models.Counter]})
                session.commit()
        floors[k] = value  # the commit has returned: every read starting from now must see at least this
        commits[path] += 1
    out.put(("writer", commits))


def race_reader(backend, url, run_dir, floors, start, duration_s, seed, out):
    """Read counters through the cache in every shape; count reads older than a commit that returned first."""
    engine = make_engine(backend, url)
    cache, session_factory = _cache(run_dir, engine)
    Counter, Box = models.Counter, models.Box
    rng = random.Random(seed)
    reads, violations, examples = 0, 0, []
    start.wait()
    stop_at = time.monotonic() + duration_s
    while time.monotonic() < stop_at:
        before = list(floors)  # commits that returned before this read starts
        kind = rng.choice(["get", "list", "sum", "lazy", "join"])
        with session_factory() as session:
            if kind == "get":
                k = rng.randrange(COUNTERS)
                seen = {k: session.get(Counter, k + 1).value}
            elif kind == "list":
                seen = {c.id - 1: c.value for c in session.scalars(select(Counter).order_by(Counter.id))}
            elif kind == "lazy":
                box = session.get(Box, rng.choice([1, 2]))
                seen = {c.id - 1: c.value for c in box.counters}
            elif kind == "join":
                rows = session.execute(select(Counter.id, Counter.value).join(Box, Box.id == Counter.box_id)
                                       .where(Box.id == 2)).all()
                seen = {pk - 1: value for pk, value in rows}
            else:
                total = session.scalar(select(func.sum(Counter.value)))
                seen = {}
                if total < sum(before):
                    violations += 1
                    examples.append(("sum", total, sum(before)))
        for k, value in seen.items():
            if value < before[k]:
                violations += 1
                examples.append((kind, k, value, before[k]))
        reads += 1
    out.put(("reader", reads, violations, examples[:10], cache.stats()))


# -- the stampede test ---------------------------------------------------------------------------------


def stampede_reader(backend, url, run_dir, model_name, barrier, out):
    """Wait for the others, then read one slow row that nobody has cached; report the SELECTs sent."""
    engine = make_engine(backend, url)
    model = getattr(models, model_name)
    _, session_factory = _cache(run_dir, engine, lease_wait_ms=30_000)
    sent = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: sent.append(statement) if "ferric_slow" in statement else None)
    statement = select(model).where(model.id == 1, func.ferric_slow(model.id) == model.id)
    with session_factory() as session:
        session.connection()  # connected before the barrier: the race is on the cache, not on connecting
        barrier.wait()
        value = session.scalars(statement).one().name
    out.put((len(sent), value))
