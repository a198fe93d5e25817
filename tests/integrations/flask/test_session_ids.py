"""SessionIds: 256-bit URL-safe ids; cookies that are malformed or (when signed) forged give no id."""

import flask
import pytest

from ferric_flask.session_ids import ID_PATTERN, SessionIds


@pytest.fixture
def app():
    app = flask.Flask(__name__)
    app.secret_key = "current"
    return app


def test_new_ids_are_256_bit_url_safe_and_distinct():
    ids = SessionIds(32, sign=False)
    made = {ids.new() for _ in range(1000)}
    assert len(made) == 1000
    assert all(len(sid) == 43 and ID_PATTERN.fullmatch(sid) for sid in made)


def test_unsigned_cookie_is_the_id(app):
    ids = SessionIds(32, sign=False)
    sid = ids.new()
    assert ids.to_cookie(app, sid) == sid
    assert ids.from_cookie(app, sid) == (sid, False)


@pytest.mark.parametrize("cookie", [None, "", "a" * 21, "a" * 257, "a" * 30 + "/" + "a" * 12, "a" * 30 + ".sig"])
def test_malformed_cookies_give_no_id(app, cookie):
    assert SessionIds(32, sign=False).from_cookie(app, cookie) == (None, False)


def test_signed_cookie_round_trips_and_forgeries_fail(app):
    ids = SessionIds(32, sign=True)
    sid = ids.new()
    cookie = ids.to_cookie(app, sid)
    assert cookie.startswith(sid + ".")
    assert ids.from_cookie(app, cookie) == (sid, False)
    other = ids.new()
    assert ids.from_cookie(app, other) == (None, False)  # unsigned
    assert ids.from_cookie(app, other + cookie[len(sid):]) == (None, False)  # another id with this signature
    app.config["SECRET_KEY_FALLBACKS"] = [app.secret_key]
    app.secret_key = "rotated"
    assert ids.from_cookie(app, cookie) == (sid, True)  # valid through the fallback: to be signed anew
    assert ids.from_cookie(app, ids.to_cookie(app, sid)) == (sid, False)
    app.config["SECRET_KEY_FALLBACKS"] = []
    assert ids.from_cookie(app, cookie) == (None, False)


def test_signing_without_a_secret_key_says_what_to_do():
    app = flask.Flask(__name__)
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        SessionIds(32, sign=True).to_cookie(app, "a" * 43)


def test_ids_shorter_than_128_bits_are_refused():
    with pytest.raises(ValueError, match="id_bytes"):
        SessionIds(8, sign=False)
