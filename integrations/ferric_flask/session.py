"""FerricSession, the dict a request sees as ``flask.session``, and UnavailableSession for when ferricd is down."""

from flask.sessions import NullSession, SessionMixin
from werkzeug.datastructures import CallbackDict

from ferric_flask.errors import SessionStoreUnavailable


class FerricSession(CallbackDict, SessionMixin):
    """A server-side session: the fields of one stored msgpack map, plus what a save needs to write only changes.

    ``modified`` is set by top-level changes as in Flask; the interface also
    finds nested changes (``session["cart"].append(x)``) by comparing each
    field's encoding with the one loaded, so ``modified`` need not be set by
    hand. ``accessed`` is set by reads and adds ``Vary: Cookie``.

    ``user_id`` is the user this session is bound to (``bind_user``), kept in
    the stored map under a field the dict does not show.
    """

    def __init__(self, initial=None, sid=None, new=True, loaded_raw=None, user_id=None, cookie_value=None):
        def on_update(self):
            self.modified = True
            self.accessed = True

        super().__init__(initial, on_update)
        self.sid = sid
        self.new = new  # not in the store yet: the first write creates it
        self.modified = False
        self.accessed = False
        self.user_id = user_id
        #: The stored map this session was loaded from (None when new): a save writes the difference.
        self.loaded_raw = loaded_raw
        #: The id and user binding as loaded, so a save can fix the user index when either changed.
        self.loaded_sid = None if new else sid
        self.loaded_user_id = user_id
        #: The cookie value the request carried for this id, reused when the cookie is set again.
        self.cookie_value = cookie_value
        #: Handed out while ferricd was unreachable (on_unavailable="empty"): never saved.
        self.unsaved = False
        #: The cookie verified with a SECRET_KEY_FALLBACKS key only: the response signs it with SECRET_KEY.
        self.resign_cookie = False

    def __bool__(self):
        # A session holding nothing but the permanent flag is empty: it is neither stored nor given a cookie.
        return self.user_id is not None or any(key != "_permanent" for key in dict.keys(self))

    def __getitem__(self, key):
        self.accessed = True
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.accessed = True
        return super().get(key, default)

    def setdefault(self, key, default=None):
        self.accessed = True
        return super().setdefault(key, default)

    def clear(self):
        """Remove every field but the permanent flag, and the user binding (as at logout)."""
        permanent = dict.get(self, "_permanent")
        super().clear()
        self.user_id = None
        if permanent is not None:
            self["_permanent"] = permanent


class UnavailableSession(NullSession):
    """Stands in for a session that could not be loaded: any use raises SessionStoreUnavailable.

    Raising on first use rather than in ``open_session`` lets Flask's error
    handlers answer (503 by default), and keeps requests that never touch the
    session (health checks, static files) working while ferricd is down.
    """

    def __init__(self, error):
        super().__init__()
        self.error = error

    def _unavailable(self, *args, **kwargs):
        raise SessionStoreUnavailable() from self.error

    __getitem__ = __setitem__ = __delitem__ = __contains__ = __iter__ = __len__ = _unavailable
    get = setdefault = pop = popitem = update = clear = keys = values = items = copy = _unavailable
