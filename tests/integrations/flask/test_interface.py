"""FerricSessionInterface through Flask's test client on a real ferricd: storage, cookies, TTLs, ids, users."""

import datetime
import time

import msgpack
import pytest

import ferric_flask
from ferric_flask import SessionSerializationError, SessionTooLarge
from ferric_flask.interface import USER_FIELD
from tests.integrations.flask.conftest import build_app

LIFETIME_S = 3600


def stored(store, sid):
    """The stored session ``sid`` decoded, or None."""
    raw = store.get(f"sess:{sid}")
    return None if raw is None else ferric_flask.SessionSerializer().loads(raw)


def sid_of(test_client):
    cookie = test_client.get_cookie("session")
    return None if cookie is None else cookie.value


@pytest.fixture
def app_and_calls(make_app):
    return make_app(PERMANENT_SESSION_LIFETIME=LIFETIME_S)


@pytest.fixture
def web(app_and_calls):
    app, _ = app_and_calls
    return app.test_client()


@pytest.fixture
def calls(app_and_calls):
    return app_and_calls[1]


# -- what is stored, and when ------------------------------------------------------------------------


def test_first_change_stores_the_session_and_sets_a_256_bit_cookie(web, store):
    web.get("/set/color/blue")
    sid = sid_of(web)
    assert len(sid) == 43  # 32 random bytes, URL-safe base64
    assert stored(store, sid) == {"_permanent": True, "color": "blue"}
    assert web.get("/read").json == {"_permanent": True, "color": "blue"}


def test_a_request_that_changes_nothing_stores_nothing(web, store, calls):
    for path in ("/noop", "/read", "/health-check-does-not-exist"):
        response = web.get(path)
        assert "Set-Cookie" not in response.headers
    assert list(store.scan_iter(b"sess:")) == []
    assert calls.writes() == {}


def test_reading_a_session_is_a_local_read_and_writes_nothing(web, store, calls):
    web.get("/set/color/blue")
    calls.calls.clear()
    local_before = calls.read_counts["local"]
    assert web.get("/read").json["color"] == "blue"
    assert calls.writes() == {}  # the TTL was just set: no refresh due
    assert calls.read_counts["local"] > local_before
    assert calls.read_counts["fallback"] == 0


def test_only_changed_fields_are_written(web, store, calls):
    web.get("/set/a/1")
    web.get("/set/b/2")
    calls.calls.clear()
    sent = []
    patch = calls._client.patch

    def recording_patch(key, set=None, delete=(), **kwargs):  # noqa: A002
        sent.append((dict(set or {}), list(delete)))
        return patch(key, set=set, delete=delete, **kwargs)

    calls._client.patch = recording_patch
    try:
        web.get("/set/b/3")
        web.get("/delete/a")
    finally:
        del calls._client.patch
    assert sent == [({"b": msgpack.packb("3")}, []), ({}, ["a"])]
    assert stored(store, sid_of(web)) == {"_permanent": True, "b": "3"}


def test_nested_change_is_saved_without_setting_modified(web, store):
    web.get("/list/cart")
    assert web.get("/append/cart/book").text == "False"  # session.modified was not set
    assert web.get("/append/cart/pen").text == "False"
    assert stored(store, sid_of(web))["cart"] == ["book", "pen"]


def test_deleting_the_last_field_deletes_the_session_and_its_cookie(web, store):
    web.get("/set/a/1")
    sid = sid_of(web)
    response = web.get("/delete/a")
    assert stored(store, sid) is None
    assert sid_of(web) is None
    assert "Cookie" in response.headers["Vary"]


def test_clear_deletes_the_session_and_its_cookie(web, store):
    web.get("/set/a/1")
    sid = sid_of(web)
    web.get("/clear")
    assert stored(store, sid) is None
    assert sid_of(web) is None


def test_an_unsupported_value_fails_at_save_naming_key_and_type(make_app, store):
    app, _ = make_app(PROPAGATE_EXCEPTIONS=True)

    @app.get("/object")
    def put_object():
        from flask import session
        session["when"] = datetime.datetime.now()  # fine
        session["thing"] = [1, {"deep": object()}]
        return "ok"

    with pytest.raises(SessionSerializationError, match=r"session\['thing'\].*builtins\.object"):
        app.test_client().get("/object")
    assert list(store.scan_iter(b"sess:")) == []


def test_a_session_over_max_bytes_fails_at_save_and_writes_nothing(make_app, store):
    app, _ = make_app(FERRIC_SESSION_MAX_BYTES=1000)
    web = app.test_client()
    web.get("/set/small/x")
    sid = sid_of(web)
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(SessionTooLarge, match=r"FERRIC_SESSION_MAX_BYTES=1000.*'big'"):
        web.get("/set/big/" + "x" * 2000)
    assert stored(store, sid) == {"_permanent": True, "small": "x"}


def test_extension_types_round_trip_through_the_store(make_app):
    import decimal
    import uuid
    from markupsafe import Markup

    app, _ = make_app()
    values = {
        "when": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        "day": datetime.date(2024, 5, 1), "amount": decimal.Decimal("12.30"), "id": uuid.uuid4(),
        "flash": Markup("<b>saved</b>"), "pair": (1, 2), "tags": {"a", "b"}, "blob": b"\x00\x01",
        "wait": datetime.timedelta(minutes=5),
    }

    @app.get("/put")
    def put():
        from flask import session
        session.update(values)
        return "ok"

    @app.get("/check")
    def check():
        from flask import session
        return str(all(session[k] == v and type(session[k]) is type(v) for k, v in values.items()))

    web = app.test_client()
    web.get("/put")
    assert web.get("/check").text == "True"


def test_a_stored_value_that_is_not_a_session_gives_a_new_session(web, store, caplog):
    web.get("/set/a/1")
    sid = sid_of(web)
    store.set(f"sess:{sid}", b"\x80\x04not a session")  # e.g. a pickle written by something else
    assert web.get("/read").json == {"_permanent": True}
    assert "cannot be read" in caplog.text


# -- cookies ----------------------------------------------------------------------------------------


def test_cookie_settings_from_flask_config(make_app):
    app, _ = make_app(SESSION_COOKIE_NAME="sid", SESSION_COOKIE_DOMAIN="example.test", SESSION_COOKIE_PATH="/app",
                      SESSION_COOKIE_SECURE=True, SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_PARTITIONED=True, PERMANENT_SESSION_LIFETIME=600)
    response = app.test_client().get("/set/a/1")
    header = response.headers["Set-Cookie"]
    for part in ("sid=", "Domain=example.test", "Path=/app", "Secure", "HttpOnly", "SameSite=Lax", "Partitioned",
                 "Expires="):
        assert part in header
    assert "Cookie" in response.headers["Vary"]


def test_browser_session_cookie_has_no_expiry_but_the_store_still_expires(web, store):
    response = web.get("/browser")
    assert "Expires" not in response.headers["Set-Cookie"]
    ttl_ms = store.pttl(f"sess:{sid_of(web)}")
    assert 0 < ttl_ms <= LIFETIME_S * 1000


def test_non_permanent_by_default_when_configured(make_app):
    app, _ = make_app(FERRIC_SESSION_PERMANENT=False)
    web = app.test_client()
    response = web.get("/set/a/1")
    assert "Expires" not in response.headers["Set-Cookie"]
    assert web.get("/read").json == {"a": "1"}


def test_vary_cookie_only_when_the_session_was_accessed(web):
    assert "Vary" not in web.get("/noop").headers
    assert "Cookie" in web.get("/read").headers["Vary"]


def test_unknown_id_gets_a_new_id_not_the_one_offered(web, store):
    planted = "A" * 43
    web.set_cookie("session", planted)
    web.get("/set/a/1")
    assert sid_of(web) != planted
    assert stored(store, planted) is None
    assert stored(store, sid_of(web)) == {"_permanent": True, "a": "1"}


@pytest.mark.parametrize("cookie", ["", "short", "x" * 300, "has space in it but is long enough ok", "ünïcödé" * 6])
def test_malformed_cookie_is_a_new_session_without_any_lookup(web, calls, cookie):
    web.set_cookie("session", cookie)
    local_before = calls.read_counts["local"] + calls.read_counts["fallback"]
    assert web.get("/read").json == {"_permanent": True}
    assert calls.calls["get"] == 0
    assert calls.read_counts["local"] + calls.read_counts["fallback"] == local_before


def test_signed_ids_reject_forgeries_before_any_lookup(make_app, store):
    app, calls = make_app(FERRIC_SESSION_SIGN_IDS=True)
    web = app.test_client()
    web.get("/set/a/1")
    cookie = sid_of(web)
    sid, _, signature = cookie.partition(".")
    assert signature and stored(store, sid) == {"_permanent": True, "a": "1"}
    assert web.get("/read").json["a"] == "1"

    calls.calls.clear()
    forged = web.application.test_client()
    forged.set_cookie("session", sid)  # the bare id, without a signature
    assert forged.get("/read").json == {"_permanent": True}
    forged.set_cookie("session", sid + "." + signature[:-2] + "xx")
    assert forged.get("/read").json == {"_permanent": True}
    assert calls.calls["get"] == 0


def test_signed_ids_survive_a_secret_key_rotation_through_fallbacks(make_app):
    app, _ = make_app(FERRIC_SESSION_SIGN_IDS=True)
    web = app.test_client()
    web.get("/set/a/1")
    signed_with_old_key = sid_of(web)
    app.config["SECRET_KEY_FALLBACKS"] = [app.secret_key]
    app.secret_key = "a new key"
    assert web.get("/read").json["a"] == "1"  # verified with the fallback, and the cookie is signed anew
    assert sid_of(web) != signed_with_old_key
    app.config["SECRET_KEY_FALLBACKS"] = []
    assert web.get("/read").json["a"] == "1"
    web.set_cookie("session", signed_with_old_key)
    assert web.get("/read").json == {"_permanent": True}


# -- TTLs ------------------------------------------------------------------------------------------


def age(app, store, key, by_ms):
    """Let ``by_ms`` pass for session ``key``: its TTL in the store and the interface's clock both move."""
    store.expire(key, store.pttl(key) - by_ms)
    app.session_interface.refresh.clock_ms.advance(by_ms)


def test_ttl_is_permanent_session_lifetime(web, store):
    web.get("/set/a/1")
    ttl_ms = store.pttl(f"sess:{sid_of(web)}")
    assert LIFETIME_S * 1000 - 60_000 < ttl_ms <= LIFETIME_S * 1000


def test_unmodified_session_refreshes_ttl_with_a_ttl_only_write_once_per_interval(app_and_calls, web, store,
                                                                                  calls):
    web.get("/set/a/1")
    key = f"sess:{sid_of(web)}"
    raw = store.get(key)
    calls.calls.clear()
    web.get("/read")
    assert calls.writes() == {} and calls.calls["pttl"] == 0  # this worker just wrote it: not due, no read
    age(app_and_calls[0], store, key, 30_000)
    web.get("/read")
    assert calls.writes() == {} and calls.calls["pttl"] == 0  # half the interval: still certainly not due
    age(app_and_calls[0], store, key, 90_000)  # two minutes since the write (interval: one)
    calls.calls.clear()
    web.get("/read")
    assert calls.writes() == {"expire": 1}
    assert store.pttl(key) > (LIFETIME_S - 60) * 1000
    assert store.get(key) == raw
    calls.calls.clear()
    web.get("/read")  # just refreshed: nothing to do
    assert calls.writes() == {}


def test_the_cookie_is_sent_again_only_when_the_store_expiry_moves(app_and_calls, web, store):
    app = app_and_calls[0]
    first = web.get("/set/a/1")
    assert "Expires=" in first.headers["Set-Cookie"]
    key = f"sess:{sid_of(web)}"
    assert "Set-Cookie" not in web.get("/read").headers  # read-only, TTL fresh
    assert "Set-Cookie" not in web.get("/set/a/2").headers  # a change that barely moves the expiry
    age(app, store, key, 120_000)
    refreshed = web.get("/read")
    assert "Expires=" in refreshed.headers["Set-Cookie"]  # the TTL refresh re-sends the cookie with it
    age(app, store, key, 120_000)
    assert "Expires=" in web.get("/set/a/3").headers["Set-Cookie"]


def test_another_worker_refreshes_a_session_that_aged(make_app, store):
    app, _ = make_app(PERMANENT_SESSION_LIFETIME=LIFETIME_S)
    web = app.test_client()
    web.get("/set/a/1")
    key = f"sess:{sid_of(web)}"
    store.expire(key, (LIFETIME_S - 120) * 1000)  # written two minutes ago, by someone else
    other_worker, calls = make_app(PERMANENT_SESSION_LIFETIME=LIFETIME_S)
    other = other_worker.test_client()
    other.set_cookie("session", sid_of(web))
    other.get("/read")
    assert calls.writes() == {"expire": 1}


def test_making_a_session_non_permanent_resends_the_cookie_without_expiry(web):
    web.get("/set/a/1")
    response = web.get("/browser")
    assert "Set-Cookie" in response.headers and "Expires" not in response.headers["Set-Cookie"]


def test_no_refresh_when_refresh_each_request_is_off(make_app, store):
    app, calls = make_app(PERMANENT_SESSION_LIFETIME=LIFETIME_S, SESSION_REFRESH_EACH_REQUEST=False)
    web = app.test_client()
    web.get("/set/a/1")
    key = f"sess:{sid_of(web)}"
    age(app, store, key, 600_000)
    calls.calls.clear()
    response = web.get("/read")
    assert calls.writes() == {}
    assert "Set-Cookie" not in response.headers
    assert store.pttl(key) <= (LIFETIME_S - 600) * 1000


def test_refresh_interval_is_configurable(make_app, store):
    app, calls = make_app(PERMANENT_SESSION_LIFETIME=LIFETIME_S, FERRIC_SESSION_REFRESH_INTERVAL_MS=600_000)
    web = app.test_client()
    web.get("/set/a/1")
    key = f"sess:{sid_of(web)}"
    age(app, store, key, 120_000)
    calls.calls.clear()
    web.get("/read")
    assert calls.writes() == {}  # two minutes is within a ten-minute interval
    age(app, store, key, 600_000)
    web.get("/read")
    assert calls.writes() == {"expire": 1}


def test_an_expired_session_is_a_new_empty_one(make_app, store):
    app, _ = make_app(PERMANENT_SESSION_LIFETIME=LIFETIME_S)
    web = app.test_client()
    web.get("/set/a/1")
    old = sid_of(web)
    store.expire(f"sess:{old}", 1)
    while store.pttl(f"sess:{old}") != -2:
        time.sleep(0.005)
    assert web.get("/read").json == {"_permanent": True}
    web.get("/set/b/2")
    assert sid_of(web) != old


# -- ids, users -----------------------------------------------------------------------------------


def test_regenerate_moves_the_session_to_a_new_id(web, store):
    web.get("/set/a/1")
    old = sid_of(web)
    web.get("/regenerate")
    new = sid_of(web)
    assert new != old
    assert stored(store, old) is None
    assert stored(store, new) == {"_permanent": True, "a": "1"}


def test_destroy_removes_the_session_and_clears_the_cookie(web, store):
    web.get("/set/a/1")
    sid = sid_of(web)
    web.get("/destroy")
    assert stored(store, sid) is None
    assert sid_of(web) is None


def test_login_binds_the_user_in_a_hidden_field_and_an_index_entry(web, store):
    web.get("/login/ada")
    sid = sid_of(web)
    assert web.get("/read").json == {"_permanent": True, "user": "ada"}  # the binding is not a session key
    assert stored(store, sid)[USER_FIELD] == "ada"
    assert list(msgpack.unpackb(store.get("sess:user:ada"))) == [sid]
    assert store.pttl("sess:user:ada") >= store.pttl(f"sess:{sid}")


def test_destroy_user_sessions_ends_every_session_of_that_user_only(app_and_calls, store):
    app, _ = app_and_calls
    laptop, phone, other = app.test_client(), app.test_client(), app.test_client()
    laptop.get("/login/ada")
    phone.get("/login/ada")
    other.get("/login/bob")
    for web in (laptop, phone, other):
        web.get("/set/x/1")
    assert other.get("/logout-everywhere/ada").text == "2"
    assert laptop.get("/read").json == {"_permanent": True}
    assert phone.get("/read").json == {"_permanent": True}
    assert other.get("/read").json["user"] == "bob"
    assert store.get("sess:user:ada") is None


def test_a_request_running_during_logout_everywhere_does_not_bring_the_session_back(make_app, store):
    app, _ = make_app()

    @app.get("/slow-change")
    def slow_change():
        from flask import session
        session["late"] = "write"
        app.session_interface.destroy_user_sessions("ada")  # another worker logs ada out meanwhile
        return "ok"

    web = app.test_client()
    web.get("/login/ada")
    sid = sid_of(web)
    web.get("/slow-change")
    assert stored(store, sid) is None
    assert sid_of(web) is None


def test_relogin_as_another_user_moves_the_index_entry(web, store):
    web.get("/login/ada")
    web.get("/login/bob")
    sid = sid_of(web)
    assert store.get("sess:user:ada") is None or list(msgpack.unpackb(store.get("sess:user:ada"))) == []
    assert list(msgpack.unpackb(store.get("sess:user:bob"))) == [sid]


def test_login_drops_index_entries_of_sessions_that_expired(app_and_calls, store):
    app, _ = app_and_calls
    first, second = app.test_client(), app.test_client()
    first.get("/login/ada")
    store.delete(f"sess:{sid_of(first)}")  # as if it had expired
    second.get("/login/ada")
    assert list(msgpack.unpackb(store.get("sess:user:ada"))) == [sid_of(second)]


def test_regenerate_then_destroy_in_one_request_unlists_the_session(make_app, store):
    app, _ = make_app()

    @app.get("/switch")
    def switch():
        from flask import session
        app.session_interface.regenerate(session)
        app.session_interface.destroy(session)
        return "ok"

    web = app.test_client()
    web.get("/login/ada")
    web.get("/switch")
    assert msgpack.unpackb(store.get("sess:user:ada")) == {}
    assert list(store.scan_iter(b"sess:")) == [b"sess:user:ada"]
    assert sid_of(web) is None


def test_user_sessions_lists_the_live_ones(app_and_calls, store):
    app, _ = app_and_calls
    laptop, phone = app.test_client(), app.test_client()
    laptop.get("/login/ada")
    phone.get("/login/ada")
    assert sorted(app.session_interface.user_sessions("ada")) == sorted([sid_of(laptop), sid_of(phone)])
    store.delete(f"sess:{sid_of(phone)}")
    assert app.session_interface.user_sessions("ada") == [sid_of(laptop)]


def test_clear_unbinds_the_user(web, store):
    web.get("/login/ada")
    web.get("/clear")
    assert list(msgpack.unpackb(store.get("sess:user:ada"))) == []


# -- configuration ----------------------------------------------------------------------------------


def test_init_app_reads_every_ferric_option(ferricd):
    import flask

    app = flask.Flask(__name__)
    app.config.update(FERRIC_RUN_DIR=ferricd.run_dir, FERRIC_SESSION_PREFIX="web:", FERRIC_SESSION_TIMEOUT_MS=250,
                      FERRIC_SESSION_PERMANENT=False, FERRIC_SESSION_REFRESH_INTERVAL_MS=5000,
                      FERRIC_SESSION_MAX_BYTES=1234, FERRIC_SESSION_SIGN_IDS=True,
                      FERRIC_SESSION_ON_UNAVAILABLE="empty", FERRIC_SESSION_ID_BYTES=24)
    interface = ferric_flask.init_app(app)
    assert app.session_interface is interface
    assert (interface.prefix, interface.timeout_ms, interface.permanent, interface.refresh_interval_ms,
            interface.max_bytes, interface.ids.sign, interface.on_unavailable, interface.ids.id_bytes) == (
        "web:", 250, False, 5000, 1234, True, "empty", 24)
    assert interface.client.run_dir == ferricd.run_dir and interface.client.timeout_ms == 250
    assert set(ferric_flask.CONFIG_KEYS) == {name for name in vars(ferric_flask.Defaults) if not name.startswith("_")}


@pytest.mark.parametrize("options, message", [
    ({"on_unavailable": "ignore"}, "on_unavailable"),
    ({"prefix": ""}, "prefix"),
    ({"max_bytes": 0}, "max_bytes"),
    ({"id_bytes": 8}, "id_bytes"),
    ({"refresh_interval_ms": -1}, "refresh_interval_ms"),
])
def test_bad_options_are_refused_with_the_option_named(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ferric_flask.FerricSessionInterface(**options)


def test_a_separate_prefix_keeps_two_apps_apart(ferricd, store):
    one = build_app(ferricd.client(), FERRIC_SESSION_PREFIX="one:").test_client()
    one.get("/set/a/1")
    assert store.get(f"one:{sid_of(one)}") is not None
    assert store.get(f"sess:{sid_of(one)}") is None
