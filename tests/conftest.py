"""Fixtures shared by every test package: a controllable clock, stores in temporary directories, real daemons."""

import logging
import os

import pytest

from ferricd.storage import BitcaskStore, StoreSettings
from tests.daemon_process import DaemonFactory
from tests.fake_clock import FakeClock


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def fdatasync_calls(monkeypatch):
    """The descriptors of every fdatasync this test makes (the calls still happen)."""
    calls = []
    real = os.fdatasync

    def counting(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


@pytest.fixture
def shard_dir(tmp_path):
    return str(tmp_path / "shard-0")


@pytest.fixture
def open_store(shard_dir, clock):
    """Open a BitcaskStore on the test's shard directory; every store opened is closed at teardown."""
    opened = []

    def opener(directory=shard_dir, **settings):
        store = BitcaskStore(directory, StoreSettings(**settings), clock=clock)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


@pytest.fixture(autouse=True)
def _quiet_storage_logs(caplog):
    caplog.set_level(logging.WARNING)


def _daemon_factory():
    factory = DaemonFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def make_daemon():
    """``make_daemon(shards=2, config=None, env=None, start=True, wait=True)`` -> Daemon; all killed at teardown."""
    yield from _daemon_factory()


@pytest.fixture(scope="module")
def module_daemon_factory():
    yield from _daemon_factory()
