"""RefreshSchedule: a save reads a session's TTL only once a refresh may be due."""

from ferric_flask.refresh_schedule import MAX_SESSIONS, RefreshSchedule
from tests.fake_clock import FakeClock

TTL_MS = 3_600_000
INTERVAL_MS = 60_000


def schedule():
    return RefreshSchedule(INTERVAL_MS, clock_ms=FakeClock())


def test_unknown_sessions_are_read():
    assert not schedule().not_due("k")


def test_after_a_write_no_refresh_is_due_for_one_interval():
    plan = schedule()
    plan.written("k", TTL_MS)
    plan.clock_ms.advance(INTERVAL_MS - 1)
    assert plan.not_due("k")
    plan.clock_ms.advance(1)
    assert not plan.not_due("k")


def test_a_read_ttl_schedules_the_moment_a_refresh_becomes_due():
    plan = schedule()
    assert not plan.refresh_due("k", TTL_MS - 20_000, TTL_MS)  # 40 s of slack left
    plan.clock_ms.advance(39_999)
    assert plan.not_due("k")
    plan.clock_ms.advance(1)
    assert not plan.not_due("k")
    assert plan.refresh_due("k", TTL_MS - INTERVAL_MS - 1, TTL_MS)
    assert plan.refresh_due("k", -1, TTL_MS)  # no expiry at all: give it one


def test_the_interval_is_at_most_half_the_ttl():
    plan = schedule()
    assert plan.interval_ms(10_000) == 5_000
    assert plan.refresh_due("k", 4_999, 10_000)
    assert not plan.refresh_due("k", 5_000, 10_000)


def test_the_schedule_is_bounded():
    plan = schedule()
    for n in range(MAX_SESSIONS + 1):
        plan.written(f"k{n}", TTL_MS)
    assert plan.not_due(f"k{MAX_SESSIONS}") and not plan.not_due("k0")
