"""Fixtures for ferric_flask's tests: one daemon per module, a store client to inspect it, test apps on it."""

import collections

import flask
import pytest

import ferric_flask
from ferric_flask import SessionStoreUnavailable
from tests.fake_clock import FakeClock


@pytest.fixture(scope="module")
def ferricd(module_daemon_factory):
    return module_daemon_factory(shards=2)


@pytest.fixture
def store(ferricd):
    """A Client of the module's daemon on an empty store: what a test checks the stored sessions with."""
    client = ferricd.client()
    client.delete_prefix(b"")
    return client


class CountingClient:
    """A real Client that counts the calls made through it, so a test can tell what a request sent."""

    def __init__(self, client):
        self._client = client
        self.calls = collections.Counter()

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return counted

    def writes(self):
        """Calls that go to a shard to change something."""
        return {name: n for name, n in self.calls.items() if name in WRITE_CALLS}


WRITE_CALLS = {"set", "patch", "expire", "delete", "getdel", "delete_if", "persist", "mset", "getex", "incr"}


def build_app(client, **config):
    """A Flask app with ferric_flask sessions on ``client`` and one small view per session operation."""
    app = flask.Flask(__name__)
    app.config.update(SECRET_KEY="test secret", TESTING=False, PROPAGATE_EXCEPTIONS=False)
    app.config.update(config)
    interface = ferric_flask.init_app(app, client=client)
    interface.refresh.clock_ms = FakeClock()  # tests move time with .advance(ms)
    session = flask.session

    @app.get("/noop")
    def noop():
        return "ok"

    @app.get("/read")
    def read():
        return flask.jsonify(dict(session))

    @app.get("/set/<key>/<value>")
    def set_value(key, value):
        session[key] = value
        return "ok"

    @app.get("/delete/<key>")
    def delete(key):
        del session[key]
        return "ok"

    @app.get("/list/<key>")
    def new_list(key):
        session[key] = []
        return "ok"

    @app.get("/append/<key>/<value>")
    def append(key, value):
        session[key].append(value)  # a nested change: session.modified stays False
        return str(session.modified)

    @app.get("/browser")
    def browser():
        session.permanent = False
        session["browser"] = True
        return "ok"

    @app.get("/clear")
    def clear():
        session.clear()
        return "ok"

    @app.get("/regenerate")
    def regenerate():
        interface.regenerate(session)
        return "ok"

    @app.get("/destroy")
    def destroy():
        interface.destroy(session)
        return "ok"

    @app.get("/login/<user>")
    def login(user):
        interface.regenerate(session)
        interface.bind_user(session, user)
        session["user"] = user
        return "ok"

    @app.get("/logout-everywhere/<user>")
    def logout_everywhere(user):
        return str(interface.destroy_user_sessions(user))

    @app.errorhandler(SessionStoreUnavailable)
    def unavailable(error):
        return "store unavailable", 503

    return app


@pytest.fixture
def make_app(ferricd):
    """``make_app(**config)`` -> (app, CountingClient): a test app on the module's daemon."""

    def make(client=None, **config):
        counting = CountingClient(client or ferricd.client())
        return build_app(counting, **config), counting

    return make
