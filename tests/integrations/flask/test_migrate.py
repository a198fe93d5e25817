"""ferricctl import-flask-session: sessions written by Flask-Session 0.8 in the local Redis move to ferricd."""

import datetime
import json
import pickle
import secrets
import sys

import flask
import msgspec
import pytest

import ferric_flask
from ferric_flask.migrate import (SKIP_BAD_ID, SKIP_EXISTS, SKIP_NOT_A_MAP, SKIP_PICKLE, SKIP_UNREADABLE,
                                  decode_flask_session)
from ferricd import ctl

redis = pytest.importorskip("redis", reason="redis-py is not installed")
REDIS_URL = "redis://127.0.0.1:6379/0"
LIFETIME_S = 3600


@pytest.fixture
def source():
    """The local Redis, or a skip; every key the test wrote (under a prefix of its own) is deleted after it."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis server at {REDIS_URL}: {exc}")
    prefix = f"fs-import-test-{secrets.token_hex(4)}:"
    yield client, prefix
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def flask_session_app(redis_client, prefix):
    """An app on Flask-Session 0.8's Redis backend, as a user would run it before switching."""
    from flask_session import Session

    app = flask.Flask(__name__)
    app.config.update(SECRET_KEY="s", SESSION_TYPE="redis", SESSION_REDIS=redis_client, SESSION_KEY_PREFIX=prefix,
                      PERMANENT_SESSION_LIFETIME=LIFETIME_S)
    Session(app)

    @app.get("/fill/<name>")
    def fill(name):
        flask.session.update(user=name, visits=3, cart=["book", {"sku": 7, "qty": 2}], ratio=0.5, blob=b"\x00\x01",
                             seen=datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc), none=None)
        return "ok"

    return app


def ferric_app(daemon):
    app = flask.Flask(__name__)
    app.config.update(SECRET_KEY="s", FERRIC_RUN_DIR=daemon.run_dir, PERMANENT_SESSION_LIFETIME=LIFETIME_S)
    ferric_flask.init_app(app)

    @app.get("/read")
    def read():
        flask.session["visits"] += 1
        return flask.jsonify({key: value for key, value in flask.session.items() if key not in ("blob", "seen")})

    return app


def run_import(daemon, prefix, capsys):
    code = ctl.main(["--run-dir", daemon.run_dir, "import-flask-session", "--redis-url", REDIS_URL,
                     "--key-prefix", prefix])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_import_copies_real_flask_session_sessions_with_their_ttl_and_cookies_keep_working(
        source, make_daemon, capsys):
    redis_client, prefix = source
    daemon = make_daemon(shards=2)
    old_app = flask_session_app(redis_client, prefix)
    browsers = [old_app.test_client() for _ in range(3)]
    for number, browser in enumerate(browsers):
        browser.get(f"/fill/user{number}")
    old_sessions = {key[len(prefix):].decode(): msgspec.msgpack.decode(redis_client.get(key))
                    for key in redis_client.scan_iter(match=prefix + "*")}
    assert len(old_sessions) == 3

    out = run_import(daemon, prefix, capsys)
    assert "copied 3 sessions, skipped 0" in out

    store = daemon.client()
    serializer = ferric_flask.SessionSerializer()
    for sid, fields in old_sessions.items():
        assert serializer.loads(store.get(f"sess:{sid}")) == fields
        assert (LIFETIME_S - 120) * 1000 < store.pttl(f"sess:{sid}") <= LIFETIME_S * 1000
    assert serializer.loads(store.get(f"sess:{next(iter(old_sessions))}"))["seen"].tzinfo is not None

    new_app = ferric_app(daemon)
    for number, browser in enumerate(browsers):
        cookie = browser.get_cookie("session").value
        switched = new_app.test_client()
        switched.set_cookie("session", cookie)  # the browser's cookie from before the switch
        assert switched.get("/read").json == {"_permanent": True, "user": f"user{number}", "visits": 4,
                                              "cart": ["book", {"sku": 7, "qty": 2}], "ratio": 0.5, "none": None}

    again = run_import(daemon, prefix, capsys)  # an import run again leaves ferricd's sessions alone
    assert "copied 0 sessions, skipped 3" in again and SKIP_EXISTS in again
    assert serializer.loads(store.get(f"sess:{cookie}"))["visits"] == 4


def test_import_skips_what_it_must_and_says_why(source, make_daemon, capsys):
    redis_client, prefix = source
    daemon = make_daemon(shards=1)
    good = secrets.token_urlsafe(32)
    redis_client.set(prefix + good, json.dumps({"user": "json-format"}), ex=LIFETIME_S)
    redis_client.set(prefix + secrets.token_urlsafe(32), pickle.dumps({"user": "old"}), ex=LIFETIME_S)
    redis_client.set(prefix + "short", msgspec.msgpack.encode({"user": "x"}), ex=LIFETIME_S)
    redis_client.set(prefix + secrets.token_urlsafe(32), msgspec.msgpack.encode([1, 2]), ex=LIFETIME_S)
    redis_client.set(prefix + secrets.token_urlsafe(32), b"\xc1garbage", ex=LIFETIME_S)

    out = run_import(daemon, prefix, capsys)
    assert "copied 1 sessions, skipped 4" in out
    for reason in (SKIP_PICKLE, SKIP_BAD_ID, SKIP_NOT_A_MAP, SKIP_UNREADABLE):
        assert f"1 {reason}" in out
    assert ferric_flask.SessionSerializer().loads(daemon.client().get(f"sess:{good}")) == {"user": "json-format"}
    assert sorted(daemon.client().scan_iter(b"sess:")) == [f"sess:{good}".encode()]


def test_pickles_are_never_unpickled():
    class Boom:
        def __reduce__(self):
            return (sys.exit, ("unpickled",))

    assert decode_flask_session(pickle.dumps({"a": Boom()})) == (None, SKIP_PICKLE)


def test_unreachable_redis_is_a_clear_error(make_daemon, capsys):
    daemon = make_daemon(shards=1)
    code = ctl.main(["--run-dir", daemon.run_dir, "import-flask-session", "--redis-url", "redis://127.0.0.1:1/0"])
    assert code == 1
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in capsys.readouterr().err


def test_without_redis_py_the_command_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "ferric_flask.migrate")
    monkeypatch.delattr(ferric_flask, "migrate")
    code = ctl.main(["import-flask-session", "--redis-url", REDIS_URL])
    assert code == 2
    assert "pip install" in capsys.readouterr().err
