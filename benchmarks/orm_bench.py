"""Benchmark of ferric_sqlalchemy against no cache (PostgreSQL) and SQLAlchemy's dogpile.cache recipe on Redis.

Starts its own ferricd (2 shards, ``fsync = "never"``, as the ``sa:`` cache
keyspace is) and redis-server (Unix socket, no persistence) with the helpers of
benchmarks/ipc_bench.py, uses the PostgreSQL at $FERRIC_TEST_POSTGRES_URL
(default postgresql+psycopg://postgres@127.0.0.1:5432/test) in a schema of its
own, dropped at the end, and measures in one run on one machine:

1. ``session.get(User, pk)`` of a cached row: ferric_sqlalchemy hit, no cache
   (PostgreSQL), and the dogpile recipe (examples/dogpile_caching's
   ``ORMCache`` + ``FromCache``, pickle, dogpile.cache's redis backend) hit,
   and a "ceiling": a do_orm_execute hook that builds the objects from rows
   held in memory and does nothing else, the fastest any cache hooked there
   can answer; p50 and mean in µs, the four sampled in rotating rounds, each
   op timed alone (``time.perf_counter_ns``) with the Session emptied between ops;
2. the same for a 20-row list query (``select(User) ... limit(20)``);
3. the cost invalidation adds to a commit: ``session.commit()`` of a one-row
   ORM update with the cache attached against without (PostgreSQL), and the
   time ferric_sqlalchemy spends in its two steps (announce: sent as the
   database commits; confirm: its reply read and the second request sent,
   both without waiting for ferricd after the database commit);
   once with the row read through the cache first (a miss: its lease and
   store go to ferricd just before the commit), once with it read uncached;
   and, for the peer, the commit followed by one Redis DEL of the row's key
   (an invalidation written by hand, as dogpile users do);
4. database queries when 8 processes miss one entry at once (a 50 ms query),
   with the lease (``read_write``) and without (``nonstrict_read_write``);
5. ratios and the targets with PASS/MISS: get hit >= 10x faster than
   PostgreSQL and >= 3x faster than dogpile on Redis; invalidation <= 100 µs
   per commit; one database query per stampede.

    python3 benchmarks/orm_bench.py            # full run, a few minutes
    python3 benchmarks/orm_bench.py --quick    # smoke run, under a minute

Needs PostgreSQL, redis-server, redis-py and dogpile.cache (pip install dogpile.cache).
"""

import argparse
import gc
import hashlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "integrations"))
sys.path.insert(0, HERE)

from sqlalchemy import String, create_engine, event, func, make_url, select, text  # noqa: E402
from sqlalchemy import inspect as sa_inspect  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, loading, mapped_column, sessionmaker  # noqa: E402
from sqlalchemy.orm.attributes import instance_state  # noqa: E402
from sqlalchemy.orm.interfaces import UserDefinedOption  # noqa: E402

from ferric_ipc import Client  # noqa: E402
from ferric_sqlalchemy import QueryCache, cacheable, orm_internals  # noqa: E402
from ipc_bench import Ferricd, RedisServer, machine_report, percentile, version_of  # noqa: E402

try:
    import redis
    from dogpile.cache import make_region
    from dogpile.cache.api import NO_VALUE
except ImportError:  # pip install dogpile.cache redis
    redis = make_region = NO_VALUE = None

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
USERS = 1_000
HOT = 100  # the rows the get benchmark cycles through
PAGE = 20
STAMPEDE = 8
STAMPEDE_QUERY_S = 0.05


class Base(DeclarativeBase):
    pass


@cacheable
class BenchUser(Base):
    __tablename__ = "bench_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(100))
    karma: Mapped[int]


@cacheable(strategy="nonstrict_read_write")
class BenchLooseUser(Base):
    """The same row, cached without a lease."""

    __tablename__ = "bench_loose_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


# -- SQLAlchemy's examples/dogpile_caching/caching_query.py, as published (2.x) ----------------------------


class ORMCache:
    """The recipe's do_orm_execute hook: a FromCache option makes the statement's FrozenResult a dogpile value."""

    def __init__(self, regions):
        self.cache_regions = regions
        self._statement_cache = {}

    def listen_on_session(self, session_factory):
        event.listen(session_factory, "do_orm_execute", self._do_orm_execute)

    def _do_orm_execute(self, orm_context):
        for opt in orm_context.user_defined_options:
            if isinstance(opt, FromCache):
                dogpile_region = self.cache_regions[opt.region]
                our_cache_key = opt._generate_cache_key(orm_context.statement, orm_context.parameters or {}, self)

                def createfunc():
                    return orm_context.invoke_statement().freeze()

                cached_value = dogpile_region.get_or_create(our_cache_key, createfunc,
                                                            expiration_time=opt.expiration_time)
                if cached_value is NO_VALUE:
                    raise KeyError()
                orm_result = loading.merge_frozen_result(orm_context.session, orm_context.statement, cached_value,
                                                         load=False)
                return orm_result()
        return None


class FromCache(UserDefinedOption):
    propagate_to_loaders = False

    def __init__(self, region="default", cache_key=None, expiration_time=None):
        self.region = region
        self.cache_key = cache_key
        self.expiration_time = expiration_time

    def _gen_cache_key(self, anon_map, bindparams):
        return None

    def _generate_cache_key(self, statement, parameters, orm_cache):
        statement_cache_key = statement._generate_cache_key()
        return statement_cache_key.to_offline_string(orm_cache._statement_cache, statement, parameters) + \
            repr(self.cache_key)


def md5_key_mangler(key):
    return hashlib.md5(key.encode("utf-8")).hexdigest()  # the recipe's environment.py


# -- the ceiling: what any cache hooked into do_orm_execute costs at least ------------------------------------


class Ceiling:
    """A do_orm_execute hook answering from rows already in this process's memory: it takes the statement's
    cache key (every cache needs one) and builds persistent objects, and does nothing else: no key of its own,
    no lookup, no decoding. ``session.get`` and ``select`` cannot be served faster through this hook."""

    def __init__(self, rows):
        self.rows = rows  # id -> column values
        self.mapper = sa_inspect(BenchUser)
        self.metadata = orm_internals.result_metadata(["BenchUser"], [(BenchUser,)])

    def listen_on_session(self, session_factory):
        event.listen(session_factory, "do_orm_execute", self._do_orm_execute)

    def _do_orm_execute(self, state):
        if not state.is_select or state.is_column_load:
            return None
        cache_key = state.statement._generate_cache_key()
        parameters = state.parameters or {}
        if "pk_1" in parameters:
            ids = [parameters["pk_1"]]
        else:
            start = cache_key.bindparams[0].effective_value
            ids = range(start + 1, start + 1 + PAGE)
        objects = []
        for pk in ids:
            obj = orm_internals.new_instance(self.mapper)
            obj_state = instance_state(obj)
            obj_state.dict.update(self.rows[pk])
            orm_internals.register_loaded(state.session, obj_state, self.mapper.identity_key_from_primary_key((pk,)))
            objects.append((obj,))
        return orm_internals.build_result(self.metadata, {"filtered": True, "is_single_entity": True}, objects)


# -- measuring ------------------------------------------------------------------------------------------------


class Samples:
    def __init__(self):
        self.ns = []

    def p50_us(self):
        return percentile(sorted(self.ns), 0.5) / 1000

    def mean_us(self):
        return statistics.fmean(self.ns) / 1000 if self.ns else float("nan")


def timed_reads(session_factory, read, ops, samples):
    """``ops`` reads, each timed alone, in one Session emptied (outside the timing) after each read."""
    clock = time.perf_counter_ns
    session = session_factory()
    try:
        gc.disable()
        for i in range(ops):
            t0 = clock()
            read(session, i)
            t1 = clock()
            samples.ns.append(t1 - t0)
            session.expunge_all()
    finally:
        gc.enable()
        session.close()


def timed_commits(session_factory, ops, samples, first_pk, read_options=None, then=None):
    """``ops`` commits of a one-row ORM update; only ``session.commit()`` (its flush included) is timed, and
    ``then(pk)`` after it if given (an invalidation written by hand). ``read_options``: execution options of
    the get that loads the row first."""
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for i in range(ops):
            with session_factory() as session:
                user = session.get(BenchUser, first_pk + i % HOT, execution_options=read_options or {})
                user.karma += 1
                t0 = clock()
                session.commit()
                if then is not None:
                    then(user.id)
                t1 = clock()
                samples.ns.append(t1 - t0)
    finally:
        gc.enable()


def read_get(session, i):
    return session.get(BenchUser, 1 + i % HOT)


def read_get_dogpile(session, i):
    return session.get(BenchUser, 1 + i % HOT, options=[FromCache("default")])


def read_page(session, i):
    start = (i % 10) * PAGE
    return session.scalars(select(BenchUser).where(BenchUser.id > start).order_by(BenchUser.id).limit(PAGE)).all()


def read_page_dogpile(session, i):
    start = (i % 10) * PAGE
    return session.scalars(select(BenchUser).where(BenchUser.id > start).order_by(BenchUser.id).limit(PAGE)
                           .options(FromCache("default"))).all()


# -- the stampede ---------------------------------------------------------------------------------------------


def stampede_worker(url, run_dir, model_name, barrier, results):
    """One of STAMPEDE processes: wait for the others, then read one slow uncached row; report SELECTs sent."""
    engine = create_engine(url)
    model = BenchUser if model_name == "BenchUser" else BenchLooseUser
    session_factory = sessionmaker(engine)
    QueryCache(client=Client(run_dir), lease_wait_ms=30_000).attach(session_factory)
    sent = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: sent.append(statement) if "bench_slow" in statement else None)
    with session_factory() as session:
        session.connection()
        barrier.wait()
        session.scalars(select(model).where(model.id == 1, func.bench_slow(model.id) == model.id)).one()
    results.put(len(sent))


def stampede(url, run_dir, model_name):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(STAMPEDE), context.Queue()
    processes = [context.Process(target=stampede_worker, args=(url, run_dir, model_name, barrier, results))
                 for _ in range(STAMPEDE)]
    for process in processes:
        process.start()
    counts = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(30)
    return sum(counts)


# -- main --------------------------------------------------------------------------------------------------------


def setup_database(base_url):
    schema = f"orm_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(base_url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(BenchUser.__table__.insert(), [
            {"id": i, "name": f"user{i}", "email": f"user{i}@example.com", "karma": i} for i in range(1, USERS + 1)])
        connection.execute(BenchLooseUser.__table__.insert(), [{"id": 1, "name": "loose"}])
        connection.execute(text(
            f"CREATE FUNCTION bench_slow(x integer) RETURNS integer AS $$ SELECT pg_sleep({STAMPEDE_QUERY_S}); "
            f"SELECT x $$ LANGUAGE sql VOLATILE"))
    return schema, url, engine


def drop_schema(base_url, schema):
    admin = create_engine(base_url)
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="rotating rounds per measurement")
    parser.add_argument("--ops", type=int, default=None, help="timed ops per round and contender")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 6)
    ops = args.ops or (300 if args.quick else 1_000)
    commit_ops = max(50, ops // 4)
    if make_region is None or redis is None:
        raise SystemExit("needs dogpile.cache and redis-py: pip install dogpile.cache redis")
    base_url = os.environ.get("FERRIC_TEST_POSTGRES_URL") or DEFAULT_POSTGRES

    print("ORM cache benchmark: ferric_sqlalchemy vs PostgreSQL (no cache) vs the dogpile recipe on Redis")
    for line in machine_report():
        print("  " + line)
    print(f"  SQLAlchemy {version_of('SQLAlchemy')}, psycopg {version_of('psycopg')}, "
          f"dogpile.cache {version_of('dogpile.cache')}; {rounds} rounds x {ops} ops per contender")

    base = tempfile.mkdtemp(prefix="ob-", dir="/tmp")
    ferricd = Ferricd(base, "ferric", shards=2, fsync="never").start()
    redis_server = RedisServer(base).start()
    schema, url, engine = setup_database(base_url)
    try:
        plain = sessionmaker(create_engine(url))
        cached = sessionmaker(create_engine(url))
        dogpiled = sessionmaker(create_engine(url))
        ceiling = sessionmaker(create_engine(url))
        with plain() as session:
            rows = {user.id: {"id": user.id, "name": user.name, "email": user.email, "karma": user.karma}
                    for user in session.scalars(select(BenchUser))}
        Ceiling(rows).listen_on_session(ceiling)
        cache = QueryCache(client=Client(ferricd.run_dir))
        pool = redis.ConnectionPool(connection_class=redis.UnixDomainSocketConnection, path=redis_server.socket_path)
        region = make_region(key_mangler=md5_key_mangler).configure(
            "dogpile.cache.redis", expiration_time=3600, arguments={"connection_pool": pool})
        ORMCache({"default": region}).listen_on_session(dogpiled)
        # The cache's write tracking listens to every Engine in the process: attach it only for its own turns,
        # so the other two contenders do not pay for it.
        contenders = {
            "get": [("ferric", cached, read_get, True), ("postgres", plain, read_get, False),
                    ("dogpile", dogpiled, read_get_dogpile, False), ("ceiling", ceiling, read_get, False)],
            "list": [("ferric", cached, read_page, True), ("postgres", plain, read_page, False),
                     ("dogpile", dogpiled, read_page_dogpile, False), ("ceiling", ceiling, read_page, False)],
        }
        results = {}
        for name, entries in contenders.items():
            samples = {label: Samples() for label, *_ in entries}
            for label, factory, read, attach in entries:  # warm every cache
                if attach:
                    cache.attach(factory)
                timed_reads(factory, read, 2 * HOT, Samples())
                if attach:
                    cache.detach(factory)
            for round_number in range(rounds):
                turn = round_number % len(entries)
                for label, factory, read, attach in entries[turn:] + entries[:turn]:
                    if attach:
                        cache.attach(factory)
                    timed_reads(factory, read, ops, samples[label])
                    if attach:
                        cache.detach(factory)
            results[name] = samples
            stats = cache.stats()
            print(f"\n[{len(results)}/4] {'session.get(User, pk)' if name == 'get' else f'{PAGE}-row list query'}"
                  f" (ferric hits so far {stats['hits']}, misses {stats['misses']})")
            for label, sample in samples.items():
                print(f"  {label:9s} p50 {sample.p50_us():8.1f} us   mean {sample.mean_us():8.1f} us")

        print("\n[3/4] commit of a one-row ORM update, with and without the cache attached")
        # "with cache": the row is read through the cache first (a miss, as the previous commit of the row
        # replaced its generation: a lease and a store go to ferricd just before the commit); "read uncached":
        # it is read with ferric_cache=False, so the invalidation is the only ferricd request of the cycle.
        # "redis DEL": no cache attached, and after the commit one DEL of the row's key on the recipe's Redis,
        # the least a dogpile user writes by hand to invalidate (the peer's cost for the same guarantee is more).
        labels = ["with cache", "read uncached", "without", "redis DEL"]
        commit_samples = {label: Samples() for label in labels}
        announces = {label: Samples() for label in labels}
        confirms = {label: Samples() for label in labels}
        original_announce, original_confirm = cache.store.announce, cache.store.confirm
        turn = {"label": labels[0]}

        def timed_announce(invalidation):
            t0 = time.perf_counter_ns()
            announcement = original_announce(invalidation)
            announces[turn["label"]].ns.append(time.perf_counter_ns() - t0)
            return announcement

        def timed_confirm(announcement):
            t0 = time.perf_counter_ns()
            original_confirm(announcement)
            confirms[turn["label"]].ns.append(time.perf_counter_ns() - t0)
        cache.store.announce, cache.store.confirm = timed_announce, timed_confirm
        for round_number in range(rounds):
            shift = round_number % len(labels)
            for label in labels[shift:] + labels[:shift]:
                turn["label"] = label
                if label == "without":
                    timed_commits(plain, commit_ops, commit_samples[label], 1 + 2 * HOT)
                    continue
                if label == "redis DEL":
                    timed_commits(plain, commit_ops, commit_samples[label], 1 + 3 * HOT,
                                  then=lambda pk: region.delete(f"bench_users:{pk}"))
                    continue
                cache.attach(cached)
                timed_commits(cached, commit_ops, commit_samples[label], 1 + HOT,
                              {"ferric_cache": False} if label == "read uncached" else None)
                cache.detach(cached)
        for label, sample in commit_samples.items():
            print(f"  {label:13s} p50 {sample.p50_us():8.1f} us   mean {sample.mean_us():8.1f} us")
        for label in labels[:2]:
            print(f"  the cache's two steps, {label}: announce p50 {announces[label].p50_us():.1f} us, confirm p50 "
                  f"{confirms[label].p50_us():.1f} us (mean {announces[label].mean_us():.1f} / "
                  f"{confirms[label].mean_us():.1f} us)")
        pings = Samples()
        probe = Client(ferricd.run_dir)
        for _ in range(500):
            t0 = time.perf_counter_ns()
            probe.ping(0)
            pings.ns.append(time.perf_counter_ns() - t0)
        probe.close()
        print(f"  for scale, a bare ferricd round trip (ping) in a tight loop: p50 {pings.p50_us():.1f} us")

        print(f"\n[4/4] {STAMPEDE} processes missing one entry at once ({STAMPEDE_QUERY_S * 1000:.0f} ms query)")
        url_text = url.render_as_string(hide_password=False)
        leased = stampede(url_text, ferricd.run_dir, "BenchUser")
        loose = stampede(url_text, ferricd.run_dir, "BenchLooseUser")
        print(f"  with the lease (read_write):               {leased} database queries")
        print(f"  without (nonstrict_read_write, no lease):  {loose} database queries")

        get, page = results["get"], results["list"]
        added = commit_samples["with cache"].p50_us() - commit_samples["without"].p50_us()
        added_alone = commit_samples["read uncached"].p50_us() - commit_samples["without"].p50_us()
        checks = [
            ("get hit vs PostgreSQL", get["postgres"].p50_us() / get["ferric"].p50_us(), 10.0),
            ("get hit vs dogpile on Redis", get["dogpile"].p50_us() / get["ferric"].p50_us(), 3.0),
            (f"{PAGE}-row list hit vs PostgreSQL", page["postgres"].p50_us() / page["ferric"].p50_us(), None),
            (f"{PAGE}-row list hit vs dogpile on Redis", page["dogpile"].p50_us() / page["ferric"].p50_us(), None),
        ]
        print("\nSummary (p50 ratios; higher is better for ferric_sqlalchemy)")
        for label, ratio, target in checks:
            verdict = "" if target is None else (" PASS" if ratio >= target else " MISS") + f" (target >= {target:g}x)"
            print(f"  {label:38s} {ratio:6.2f}x{verdict}")
        print(f"  {'ceiling: get hit vs PostgreSQL':38s} {get['postgres'].p50_us() / get['ceiling'].p50_us():6.2f}x"
              " (a hook that only builds the objects: no cache can do better through do_orm_execute)")
        print(f"  {'ceiling: list hit vs PostgreSQL':38s} "
              f"{page['postgres'].p50_us() / page['ceiling'].p50_us():6.2f}x")
        steps_us = announces["read uncached"].p50_us() + confirms["read uncached"].p50_us()
        print(f"  {'invalidation added to a commit':38s} {added_alone:6.1f} us (p50 difference, row read uncached "
              f"first: the same database work on both sides; the two steps {steps_us:.1f} us)"
              + (" PASS" if added_alone <= 100 else " MISS") + " (target <= 100 us)")
        print(f"  {'  the same, row read through the cache':38s} {added:6.1f} us: its miss's lease and store went to "
              "ferricd just before the commit")
        by_hand = commit_samples["redis DEL"].p50_us() - commit_samples["without"].p50_us()
        print(f"  {'  peer: one Redis DEL after the commit':38s} {by_hand:6.1f} us (invalidation by hand; "
              f"ferric_sqlalchemy's costs {added_alone / by_hand:.2f}x that)")
        print(f"  {'database queries per 8-process stampede':38s} {leased} with the lease, {loose} without"
              + (" PASS" if leased == 1 else " MISS") + " (target 1)")
    finally:
        engine.dispose()
        drop_schema(base_url, schema)
        print(f"\nferricd: {ferricd.stop()}; redis-server: {redis_server.stop()}")


if __name__ == "__main__":
    main()
