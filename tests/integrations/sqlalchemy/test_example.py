"""examples/flask_sqlalchemy_app: in process with Flask's test client, and under gunicorn with several workers."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from tests.gunicorn_process import control_socket_flags, free_port
from tests.integrations.sqlalchemy.conftest import DAEMON_CONFIG

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
EXAMPLE = os.path.join(ROOT, "examples", "flask_sqlalchemy_app")
WORKERS = 3
START_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def example_ferricd(module_daemon_factory):
    return module_daemon_factory(shards=2, config=DAEMON_CONFIG)


@pytest.fixture
def example(example_ferricd, tmp_path, monkeypatch):
    """The example module, its app on a fresh SQLite file, its cache detached again afterwards."""
    monkeypatch.setenv("FERRIC_RUN_DIR", example_ferricd.run_dir)
    spec = importlib.util.spec_from_file_location("flask_sqlalchemy_example", os.path.join(EXAMPLE, "app.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = module.create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'shop.db'}"})
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert "database ready" in result.output, result.output
    yield module, app
    module.query_cache.detach(module.db.session)


def test_the_example_serves_from_cache_and_invalidates_on_write(example):
    module, app = example
    client = app.test_client()
    for _ in range(3):
        assert client.get("/books/1").json["price"] == "9.99"
    assert client.get("/books?genre=fiction").json[1]["title"] == "The Dispossessed"
    assert client.get("/books?genre=fiction").status_code == 200
    before = module.query_cache.stats()
    assert before["hits"] >= 4
    assert client.post("/books/1/price", data={"price": "7.50"}).json["price"] == "7.50"
    assert client.get("/books/1").json["price"] == "7.50"
    assert client.get("/books?genre=fiction").json[0]["price"] == "7.50"
    assert client.get("/genres/count").json == {"fiction": 2, "science": 1}
    assert client.get("/recently-viewed").json == [1]


def fetch(port, path, data=None):
    body = None if data is None else urllib.parse.urlencode(data).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", data=body, timeout=30) as response:
        return json.loads(response.read())


def test_the_example_under_gunicorn_invalidates_in_every_worker(example_ferricd, tmp_path):
    env = dict(os.environ, FERRIC_RUN_DIR=example_ferricd.run_dir, DATABASE_URL=f"sqlite:///{tmp_path / 'shop.db'}",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, "-m", "flask", "--app", "app", "init-db"], cwd=EXAMPLE, env=env, check=True,
                   capture_output=True, timeout=120)
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS), "--bind", f"127.0.0.1:{port}",
         "--graceful-timeout", "5", *control_socket_flags(), "app:create_app()"],
        cwd=EXAMPLE, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                fetch(port, "/cache-stats")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.2)
        reads = 8 * WORKERS
        assert {fetch(port, "/books/3")["price"] for _ in range(reads)} == {"15.00"}
        assert fetch(port, "/books/3/price", {"price": "3.25"})["price"] == "3.25"
        assert {fetch(port, "/books/3")["price"] for _ in range(reads)} == {"3.25"}
        workers = {}
        for _ in range(reads):
            stats = fetch(port, "/cache-stats")
            workers[stats["pid"]] = stats
        assert sum(stats["hits"] for stats in workers.values()) > 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
