"""When ferricd is down or stalled: a clear 503 (default) or a fresh unsaved session, never a hang."""

import logging
import os
import signal

import flask
import pytest
from werkzeug.exceptions import InternalServerError

import ferric_flask
from ferric_flask import SessionStoreUnavailable, UnavailableSession
from tests.integrations.flask.conftest import build_app

TIMEOUT_MS = 300


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(shards=2)


def app_on(daemon, **config):
    app = build_app(daemon.client(timeout_ms=TIMEOUT_MS), PERMANENT_SESSION_LIFETIME=3600, **config)

    @app.errorhandler(InternalServerError)
    def internal_error(error):
        if isinstance(error.original_exception, SessionStoreUnavailable):
            return "store unavailable at save", 503
        return "internal error", 500

    return app


@pytest.fixture
def stalled(daemon):
    """Stop (SIGSTOP) the daemon's processes for the test: requests to it time out; local reads still work."""

    def stall():
        os.killpg(daemon.pid, signal.SIGSTOP)

    yield stall
    os.killpg(daemon.pid, signal.SIGCONT)


def test_daemon_down_raise_mode_answers_503_only_where_the_session_is_used(daemon):
    web = app_on(daemon).test_client()
    web.get("/set/a/1")
    daemon.stop()
    fresh = app_on(daemon).test_client()  # a worker started while ferricd is down
    fresh.set_cookie("session", web.get_cookie("session").value)
    assert fresh.get("/noop").status_code == 200
    response = fresh.get("/read")
    assert response.status_code == 503 and response.text == "store unavailable"


def test_without_an_error_handler_flask_answers_503(daemon):
    app = flask.Flask(__name__)
    app.config["FERRIC_RUN_DIR"] = daemon.run_dir
    ferric_flask.init_app(app)

    @app.get("/")
    def index():
        return str(flask.session.get("a"))

    web = app.test_client()
    web.set_cookie("session", "B" * 43)
    daemon.stop()
    assert web.get("/").status_code == 503


def test_unavailable_session_raises_on_every_use():
    session = UnavailableSession(ConnectionError("down"))
    for use in (lambda: session["a"], lambda: session.get("a"), lambda: "a" in session, lambda: dict(session),
                lambda: session.__setitem__("a", 1), lambda: session.pop("a"), lambda: session.permanent):
        with pytest.raises(SessionStoreUnavailable) as caught:
            use()
        assert isinstance(caught.value.__cause__, ConnectionError)


def test_daemon_down_empty_mode_gives_a_fresh_session_that_is_never_saved(daemon, caplog):
    web = app_on(daemon, FERRIC_SESSION_ON_UNAVAILABLE="empty").test_client()
    web.get("/set/a/1")
    cookie = web.get_cookie("session").value
    daemon.stop()
    fresh = app_on(daemon, FERRIC_SESSION_ON_UNAVAILABLE="empty").test_client()
    fresh.set_cookie("session", cookie)
    caplog.set_level(logging.WARNING, logger="ferric_flask")
    assert fresh.get("/read").json == {"_permanent": True}
    response = fresh.get("/set/b/2")
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers  # the user's cookie still names the real session
    assert "unreachable" in caplog.text
    daemon.start()
    assert fresh.get("/read").json == {"_permanent": True, "a": "1"}


def test_a_stalled_daemon_fails_a_save_within_the_timeout_raise_mode(daemon, stalled):
    web = app_on(daemon).test_client()
    web.get("/set/a/1")
    stalled()
    assert web.get("/read").json["a"] == "1"  # local read: no round trip needed
    response = web.get("/set/a/2")  # the write times out after TIMEOUT_MS
    assert response.status_code == 503 and response.text == "store unavailable at save"


def test_a_stalled_daemon_fails_a_save_within_the_timeout_empty_mode(daemon, stalled, caplog):
    web = app_on(daemon, FERRIC_SESSION_ON_UNAVAILABLE="empty").test_client()
    web.get("/set/a/1")
    stalled()
    caplog.set_level(logging.WARNING, logger="ferric_flask")
    assert web.get("/set/a/2").status_code == 200
    assert "changes of this request are dropped" in caplog.text


def test_session_operations_raise_503_when_the_daemon_is_down(daemon):
    web = app_on(daemon).test_client()
    web.get("/set/a/1")
    daemon.stop()
    assert web.get("/logout-everywhere/ada").status_code == 503
