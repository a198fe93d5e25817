"""Several processes at once: no reader ever sees data older than a commit that had returned, and a missing
entry wanted by eight processes together costs the database one query.

FERRIC_SOAK_SECONDS lengthens the race run (default 20 s per backend).
"""

import multiprocessing
import os
import queue

import pytest
from sqlalchemy.orm import sessionmaker

from tests.integrations.sqlalchemy import workers
from tests.integrations.sqlalchemy.models import Product, SlowNote

SOAK_SECONDS = float(os.environ.get("FERRIC_SOAK_SECONDS") or 20)
READERS = 3
STAMPEDE = 8
# Children fork from a server process that imported nothing of the test's (no open connections, no
# clients), with SQLAlchemy and the models already imported, so eight of them start in well under a second.
SPAWN = multiprocessing.get_context("forkserver")
SPAWN.set_forkserver_preload(["tests.integrations.sqlalchemy.workers"])


def _collect(processes, results, count, timeout_s):
    """``count`` results from the children (fails with what is known if one dies or hangs)."""
    collected = []
    try:
        for _ in range(count):
            collected.append(results.get(timeout=timeout_s))
    except queue.Empty:
        codes = [process.exitcode for process in processes]
        pytest.fail(f"only {len(collected)} of {count} children reported (exit codes {codes}): {collected}")
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
    return collected


@pytest.mark.soak
def test_no_read_is_older_than_a_commit_that_returned_before_it_started(ferricd, database):
    workers.seed_counters(database.Session)
    floors = SPAWN.RawArray("q", workers.COUNTERS)
    start = SPAWN.Barrier(READERS + 1)
    results = SPAWN.Queue()
    common = (database.backend, database.url_text, ferricd.run_dir, floors, start, SOAK_SECONDS)
    processes = [SPAWN.Process(target=workers.race_writer, args=(*common, 1, results))]
    processes += [SPAWN.Process(target=workers.race_reader, args=(*common, 100 + i, results)) for i in range(READERS)]
    for process in processes:
        process.start()
    reports = _collect(processes, results, len(processes), timeout_s=SOAK_SECONDS + 120)
    writer = next(report for report in reports if report[0] == "writer")[1]
    readers = [report for report in reports if report[0] == "reader"]
    violations = [example for report in readers for example in report[3]]
    reads = sum(report[1] for report in readers)
    hits = sum(report[4]["hits"] for report in readers)
    print(f"race on {database.backend}: {sum(writer.values())} commits {writer}, {reads} reads, {hits} hits")
    assert sum(report[2] for report in readers) == 0, violations
    assert all(count > 0 for count in writer.values())
    assert reads > 100 and hits > 0


@pytest.mark.parametrize("model, queries", [
    ("Product", lambda n: n == 1),
    ("SlowNote", lambda n: n > 1),
], ids=["read_write-one-query", "nonstrict-no-lease"])
def test_eight_processes_missing_one_entry_together(ferricd, database, model, queries):
    session_factory = sessionmaker(database.engine)
    if database.backend == "postgresql":
        workers.create_slow_function(database.engine)
    with session_factory() as session:
        session.add_all([Product(id=1, name="pen", price=1), SlowNote(id=1, name="pen")])
        session.commit()
    barrier = SPAWN.Barrier(STAMPEDE)
    results = SPAWN.Queue()
    args = (database.backend, database.url_text, ferricd.run_dir, model, barrier, results)
    processes = [SPAWN.Process(target=workers.stampede_reader, args=args) for _ in range(STAMPEDE)]
    for process in processes:
        process.start()
    reports = _collect(processes, results, STAMPEDE, timeout_s=120)
    sent = sum(count for count, _ in reports)
    print(f"stampede on {database.backend} ({model}): {sent} database queries for {STAMPEDE} processes")
    assert {value for _, value in reports} == {"pen"}
    assert queries(sent), sent
