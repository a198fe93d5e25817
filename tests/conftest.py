"""Fixtures shared by every test package: a controllable clock and stores in temporary directories."""

import logging

import pytest

from ferricd.storage import BitcaskStore, StoreSettings
from tests.fake_clock import FakeClock


@pytest.fixture
def clock():
    return FakeClock()


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
