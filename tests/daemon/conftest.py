"""Fixtures for the daemon's real-process tests: one shared daemon per module and a client over each transport."""

import pytest

from tests.daemon_process import TRANSPORTS, DaemonFactory, keys_on_shard  # noqa: F401 - re-exported for tests


@pytest.fixture(scope="module")
def daemon(module_daemon_factory):
    """One 2-shard daemon shared by a module's tests (tests that kill or stop a daemon use ``make_daemon``)."""
    return module_daemon_factory(shards=2)


@pytest.fixture(scope="module", params=TRANSPORTS)
def client(daemon, request):
    """A Client of the module's daemon, once over each transport, each time on an empty store."""
    c = daemon.client(timeout_ms=2000, transport=request.param)
    c.delete_prefix(b"")
    return c
