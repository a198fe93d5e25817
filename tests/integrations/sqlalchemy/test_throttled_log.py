"""Warnings repeat at most once per interval and kind, and say how many were held back."""

import logging

from ferric_sqlalchemy.throttled_log import RateLimitedWarnings


def test_warnings_are_rate_limited_per_kind(caplog):
    now = [0.0]
    warn = RateLimitedWarnings(interval_s=60, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "ferric_sqlalchemy")
    for _ in range(5):
        warn("a", "first kind")
    warn("b", "second kind")
    now[0] = 61
    warn("a", "first kind again")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["first kind", "second kind", "first kind again (4 more like this in the last 60 s)"]
