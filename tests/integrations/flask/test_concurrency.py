"""Two requests of one session at once, each changing something else: both changes are kept."""

import threading

import flask
import pytest

from tests.integrations.flask.conftest import build_app

PAIRS = 40
BARRIER_TIMEOUT_S = 10


@pytest.fixture
def paired_app(ferricd, store):
    """An app whose /pair views wait for their partner after opening the session and before saving it,
    so both requests of a pair load the same stored session and then both save."""
    app = build_app(ferricd.client())
    barriers = {}
    lock = threading.Lock()

    def partner_barrier(pair):
        with lock:
            return barriers.setdefault(pair, threading.Barrier(2, timeout=BARRIER_TIMEOUT_S))

    @app.get("/pair/<int:pair>/set/<key>")
    def pair_set(pair, key):
        flask.session.get("seed")
        partner_barrier(pair).wait()
        flask.session[key] = pair
        return "ok"

    @app.get("/pair/<int:pair>/append")
    def pair_append(pair):
        cart = flask.session["cart"]
        partner_barrier(pair).wait()
        cart.append(pair)  # nested: no session.modified
        return "ok"

    @app.get("/pair/<int:pair>/delete/<key>")
    def pair_delete(pair, key):
        flask.session.get("seed")
        partner_barrier(pair).wait()
        del flask.session[key]
        return "ok"

    return app


def run_pair(app, cookie, first, second):
    results = []

    def request(path):
        web = app.test_client()
        web.set_cookie("session", cookie)
        results.append(web.get(path).status_code)

    threads = [threading.Thread(target=request, args=(path,)) for path in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200, 200]


def new_session(app, **fields):
    web = app.test_client()
    for key, value in fields.items():
        web.get(f"/set/{key}/{value}")
    if "cart" in fields:
        web.get("/list/cart")
    return web, web.get_cookie("session").value


def test_concurrent_requests_setting_different_keys_keep_both(paired_app):
    for pair in range(PAIRS):
        web, cookie = new_session(paired_app, seed="s")
        run_pair(paired_app, cookie, f"/pair/{pair}/set/left", f"/pair/{pair}/set/right")
        assert web.get("/read").json == {"_permanent": True, "seed": "s", "left": pair, "right": pair}


def test_concurrent_nested_change_and_top_level_change_keep_both(paired_app):
    for pair in range(PAIRS):
        web, cookie = new_session(paired_app, seed="s", cart="x")
        run_pair(paired_app, cookie, f"/pair/{pair}/append", f"/pair/{pair}/set/visits")
        assert web.get("/read").json == {"_permanent": True, "seed": "s", "cart": [pair], "visits": pair}


def test_concurrent_delete_and_set_of_different_keys_keep_both(paired_app):
    for pair in range(PAIRS):
        web, cookie = new_session(paired_app, seed="s", gone="g")
        run_pair(paired_app, cookie, f"/pair/{pair}/delete/gone", f"/pair/{pair}/set/added")
        assert web.get("/read").json == {"_permanent": True, "seed": "s", "added": pair}
