"""FerricSessionInterface: Flask's session interface on ferricd, writing only what a request changed."""

import contextlib
import logging
import threading

import msgpack
from flask.sessions import SessionInterface

from ferric_flask.defaults import ON_UNAVAILABLE_CHOICES, Defaults, milliseconds
from ferric_flask.errors import SessionStoreUnavailable, SessionTooLarge
from ferric_flask.refresh_schedule import RefreshSchedule
from ferric_flask.serializer import SessionSerializer
from ferric_flask.session import FerricSession, UnavailableSession
from ferric_flask.session_ids import SessionIds
from ferric_flask.user_index import UserIndex
from ferric_ipc import Client, FerricConnectionError, FerricTimeoutError

log = logging.getLogger("ferric_flask")

#: Field of the stored map that holds the bound user id; the NUL keeps it apart from any key an app uses.
USER_FIELD = "\x00user"
#: Errors that mean "ferricd did not answer"; anything else is a bug or bad input and propagates as it is.
UNREACHABLE = (FerricConnectionError, FerricTimeoutError)
_UNREADABLE = (ValueError, TypeError, KeyError, msgpack.UnpackException)


class FerricSessionInterface(SessionInterface):
    """Server-side sessions in ferricd: ``app.session_interface = FerricSessionInterface()``.

    Each session is one msgpack map under ``prefix + id``. Opening a session
    is one local read of the mapped index (no round trip). Saving writes
    only the fields the request changed (``Client.patch``), nested changes
    included, so concurrent requests of one session that change different
    keys both keep their change; a request that changed nothing writes
    nothing, except a TTL-only refresh at most every ``refresh_interval_ms``.

    Options and defaults: ``ferric_flask.Defaults`` (docs/flask.md); Flask's
    own SESSION_COOKIE_* settings, PERMANENT_SESSION_LIFETIME (the TTL) and
    SESSION_REFRESH_EACH_REQUEST apply as with Flask's cookie sessions.
    """

    session_class = FerricSession
    serializer = SessionSerializer()

    def __init__(self, client=None, prefix=Defaults.prefix, run_dir=Defaults.run_dir,
                 timeout_ms=Defaults.timeout_ms, permanent=Defaults.permanent,
                 refresh_interval_ms=Defaults.refresh_interval_ms, max_bytes=Defaults.max_bytes,
                 sign_ids=Defaults.sign_ids, on_unavailable=Defaults.on_unavailable, id_bytes=Defaults.id_bytes):
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty str such as {Defaults.prefix!r}, not {prefix!r}")
        if on_unavailable not in ON_UNAVAILABLE_CHOICES:
            raise ValueError(f"on_unavailable must be one of {ON_UNAVAILABLE_CHOICES}, not {on_unavailable!r}")
        if type(max_bytes) is not int or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive int, not {max_bytes!r}")
        self._client = client
        self._client_lock = threading.Lock()
        self.run_dir = run_dir
        self.timeout_ms = milliseconds(timeout_ms, "timeout_ms")
        self.prefix = prefix
        self.permanent = bool(permanent)
        self.refresh_interval_ms = milliseconds(refresh_interval_ms, "refresh_interval_ms")
        self.refresh = RefreshSchedule(self.refresh_interval_ms)
        self.max_bytes = max_bytes
        self.on_unavailable = on_unavailable
        self.ids = SessionIds(id_bytes, sign_ids)
        self.users = UserIndex(lambda: self.client, prefix)

    @property
    def client(self):
        """The ferric_ipc Client: the one given, or one made on first use (safe across gunicorn's fork)."""
        if self._client is None:
            with self._client_lock:  # threaded workers: one Client per interface
                if self._client is None:
                    self._client = Client(self.run_dir, timeout_ms=self.timeout_ms)
        return self._client

    def session_key(self, sid):
        """The store key of session ``sid``."""
        return self.prefix + sid

    # -- Flask's SessionInterface ---------------------------------------------------------------

    def open_session(self, app, request):
        cookie = request.cookies.get(self.get_cookie_name(app))
        sid, resign = self.ids.from_cookie(app, cookie)
        if sid is None:  # no cookie, or a malformed or forged one: never looked up
            return self._new_session()
        try:
            raw = self.client.get(self.session_key(sid))
        except UNREACHABLE as exc:
            return self._unavailable_session(exc)
        if raw is None:  # unknown or expired: a new id, so a client cannot choose its id (fixation)
            return self._new_session()
        try:
            fields = self.serializer.loads(raw)
        except _UNREADABLE as exc:
            log.warning("session %s… cannot be read (%s); starting a new session", sid[:8], exc)
            return self._new_session()
        user_id = fields.pop(USER_FIELD, None)
        session = self.session_class(fields, sid=sid, new=False, loaded_raw=raw, user_id=user_id,
                                     cookie_value=None if self.ids.sign else cookie)
        session.resign_cookie = resign
        return session

    def save_session(self, app, session, response):
        if session.accessed:
            response.vary.add("Cookie")
        if session.unsaved:
            if session.modified:
                log.warning("ferricd was unreachable when this request began: its session changes are dropped")
            return
        try:
            if not session:
                self._save_empty(app, session, response)
            else:
                cookie_due = self._write(app, session)
                if cookie_due is None:  # ended elsewhere (destroyed, logged out everywhere, expired) meanwhile
                    self._delete_cookie(app, response)
                # Sent when its expiry would otherwise lag the store's by more than the refresh interval, not
                # on every request: the id in it never changes without session.new.
                elif session.new or session.resign_cookie or (cookie_due and self.should_set_cookie(app, session)):
                    self._set_cookie(app, session, response)
                session.new = False
        except UNREACHABLE as exc:
            if self.on_unavailable == "raise":
                raise SessionStoreUnavailable() from exc
            log.error("ferricd unreachable: session changes of this request are dropped (%s)", exc)

    # -- session lifecycle ----------------------------------------------------------------------

    def regenerate(self, session):
        """Give ``session`` a new id and remove the old one from the store; call it at login (fixation).

        The fields stay; the response carries a cookie with the new id.
        """
        if not session.new:
            with self._store_call():
                self.client.delete(self.session_key(session.sid))
        session.sid = self.ids.new()
        session.new = True
        session.loaded_raw = None
        session.cookie_value = None
        session.modified = True

    def destroy(self, session):
        """Remove ``session`` from the store now, empty it and clear its cookie (logout)."""
        with self._store_call():
            if not session.new:
                self.client.delete(self.session_key(session.sid))
            self._unlink_user(session)
        session.clear()
        session.sid = self.ids.new()
        session.new = True
        session.loaded_raw = None
        session.loaded_sid = session.loaded_user_id = None
        session.cookie_value = None

    def bind_user(self, session, user_id):
        """Bind ``session`` to ``user_id`` (a str or int; compared as str), so that
        ``destroy_user_sessions(user_id)`` ends it. Saved with the session; call it at login after
        ``regenerate``. ``session.clear()`` and ``destroy`` unbind."""
        if user_id is None:
            raise TypeError("bind_user needs a user id; session.clear() or destroy() unbinds a session")
        user_id = str(user_id)
        if session.user_id != user_id:
            session.user_id = user_id
            session.modified = True

    def user_sessions(self, user_id):
        """Ids of the live sessions bound to ``user_id`` (local reads only)."""
        with self._store_call():
            return [sid for sid in self.users.sids(str(user_id)) if self.client.pttl(self.session_key(sid)) != -2]

    def destroy_user_sessions(self, user_id):
        """End every session bound to ``user_id`` (logout everywhere); returns how many existed.

        One read of the user's index entry, then one delete per shard; no scan.
        A request of one of those sessions that is running now cannot bring it
        back: its save writes only into a session that still exists.
        """
        with self._store_call():
            sids = self.users.take(str(user_id))
            return self.client.delete(*[self.session_key(sid) for sid in sids]) if sids else 0

    # -- inside save_session -------------------------------------------------------------------

    def _write(self, app, session):
        """Store what changed in ``session``, or refresh its TTL.

        Returns None if the session no longer exists, else whether the cookie is due: the session is new,
        its permanent flag changed, or the write moved its expiry by more than the refresh interval.
        """
        fields = dict(session)
        if session.user_id is not None:
            fields[USER_FIELD] = session.user_id
        ttl_ms = milliseconds(app.permanent_session_lifetime, "PERMANENT_SESSION_LIFETIME")
        key = self.session_key(session.sid)
        # Fast path, valid when the whole map encodes to the bytes loaded: nothing changed, nothing to diff.
        # Otherwise compare field by field (also right when only the stored field order differs).
        if session.loaded_raw is not None and self.serializer.encodes_to(fields, session.loaded_raw):
            changed, removed = {}, []
        else:
            encoded = self.serializer.dumps_fields(fields)
            self._check_size(encoded)
            loaded = {} if session.loaded_raw is None else self.serializer.split(session.loaded_raw)
            changed = {field: data for field, data in encoded.items() if loaded.get(field) != data}
            removed = [field for field in loaded if field not in encoded]
        if changed or removed:
            moves = True if session.new else self._expiry_moves(key, ttl_ms)
            # The user index first: if the session write then fails, an index entry that lives a little
            # longer or lists one id too many is harmless, while a session missing from its index would
            # survive a logout everywhere. And once the session is written, nothing after it can fail.
            self._update_user_index(session, ttl_ms)
            # Only a new session may be created: a loaded one that is gone was ended elsewhere, and
            # writing its changed fields would bring back a fragment of it.
            if not self.client.patch(key, set=changed, delete=removed, ttl_ms=ttl_ms, create=session.new,
                                     encode=_as_is):
                self.refresh.forget(key)
                return None
            self.refresh.written(key, ttl_ms)
            return session.new or "_permanent" in changed or moves is not False
        if not app.config["SESSION_REFRESH_EACH_REQUEST"]:
            return False
        moves = self._expiry_moves(key, ttl_ms)
        if not moves:
            return moves  # False: not due; None: gone
        self._update_user_index(session, ttl_ms)  # first, as above
        if not self.client.expire(key, ttl_ms):  # a TTL-only write
            return None
        self.refresh.written(key, ttl_ms)
        return True

    def _expiry_moves(self, key, ttl_ms):
        """Whether setting ``key``'s TTL to ``ttl_ms`` moves its expiry by more than the refresh interval (None:
        ``key`` is gone). A local read of the remaining TTL, skipped while the schedule knows the answer is no."""
        if self.refresh.not_due(key):
            return False
        remaining_ms = self.client.pttl(key)  # a local read
        if remaining_ms == -2:
            return None
        return self.refresh.refresh_due(key, remaining_ms, ttl_ms)

    def _update_user_index(self, session, ttl_ms):
        """Before a write that sets the session's TTL to ``ttl_ms``: keep its user's index entry right."""
        margin_ms = self.refresh_interval_ms
        if (session.loaded_user_id, session.loaded_sid) != (session.user_id, session.sid):
            self._unlink_user(session)
            if session.user_id is not None:
                self.users.link(session.user_id, session.sid, ttl_ms + margin_ms, self.session_key)
            session.loaded_user_id, session.loaded_sid = session.user_id, session.sid
        elif session.user_id is not None:
            self.users.keep_alive(session.user_id, session.sid, ttl_ms, margin_ms)

    def _unlink_user(self, session):
        if session.loaded_user_id is not None and session.loaded_sid is not None:
            self.users.unlink(session.loaded_user_id, session.loaded_sid)

    def _save_empty(self, app, session, response):
        # An empty session is never stored; emptying a stored one deletes it and its cookie (as Flask does).
        if not session.modified:
            return
        if not session.new:
            self.client.delete(self.session_key(session.sid))
        self._unlink_user(session)  # also after regenerate(), which deleted the loaded id already
        self._delete_cookie(app, response)

    def _check_size(self, encoded):
        size_bytes = sum(len(field) + len(data) + 2 for field, data in encoded.items())
        if size_bytes > self.max_bytes:
            largest = sorted(encoded, key=lambda field: len(encoded[field]), reverse=True)[:3]
            detail = ", ".join(f"{field!r}: {len(encoded[field])} B" for field in largest)
            raise SessionTooLarge(
                f"the session is {size_bytes} bytes, over FERRIC_SESSION_MAX_BYTES={self.max_bytes} (largest "
                f"fields: {detail}); keep large data elsewhere and its id in the session, or raise the limit",
                size_bytes, self.max_bytes,
            )

    # -- cookies and helpers --------------------------------------------------------------------

    def _new_session(self):
        session = self.session_class(sid=self.ids.new())
        if self.permanent:
            dict.__setitem__(session, "_permanent", True)  # a default, not a change: no write, no cookie
        return session

    def _unavailable_session(self, exc):
        if self.on_unavailable == "raise":
            return UnavailableSession(exc)
        log.warning("ferricd unreachable (%s): this request gets a fresh session that will not be saved", exc)
        session = self._new_session()
        session.unsaved = True
        return session

    def _set_cookie(self, app, session, response):
        response.set_cookie(
            self.get_cookie_name(app),
            session.cookie_value or self.ids.to_cookie(app, session.sid),
            expires=self.get_expiration_time(app, session),
            httponly=self.get_cookie_httponly(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            partitioned=self.get_cookie_partitioned(app),
            samesite=self.get_cookie_samesite(app),
        )
        response.vary.add("Cookie")

    def _delete_cookie(self, app, response):
        response.delete_cookie(
            self.get_cookie_name(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            partitioned=self.get_cookie_partitioned(app),
            samesite=self.get_cookie_samesite(app),
            httponly=self.get_cookie_httponly(app),
        )
        response.vary.add("Cookie")

    @contextlib.contextmanager
    def _store_call(self):
        """Calls the app makes itself (regenerate, destroy, ...) raise SessionStoreUnavailable, a 503."""
        try:
            yield
        except UNREACHABLE as exc:
            raise SessionStoreUnavailable() from exc


def _as_is(encoded):
    return encoded
