"""UserIndex: one entry per user listing the ids of that user's sessions, so all of them can be ended at once.

In the spirit of the FoundationDB record layer's primary write plus index
entries: a session is written under ``<prefix><sid>`` (the primary entry) and,
once bound to a user, its id is also a field of ``<prefix>user:<user id>``, a
msgpack map ``{sid: true}`` changed with ``Client.patch``, so two logins of
one user at the same moment both stay listed. Ending every session of a user
reads that one entry; nothing scans the sessions.

The entry lives at least as long as any session it lists: every write that
extends a bound session's TTL extends the entry's to that TTL plus the refresh
interval when it would expire sooner (a local read decides, so this costs a
round trip at most once per interval). Ids of sessions that expired on their
own are dropped when the user next logs in.
"""

import msgpack

#: Ids of user index entries: never a valid session id, because session ids have no ":".
USER_KEY_INFIX = "user:"
_LISTED = msgpack.packb(True)


class UserIndex:
    """The index entries of one interface's sessions (its ``prefix``) on ``client``."""

    def __init__(self, client_of, prefix):
        self._client_of = client_of  # a callable: the interface creates its client lazily
        self.prefix = prefix

    def key(self, user_id):
        """The index entry of ``user_id`` (compared as str: 42 and "42" are one user)."""
        return f"{self.prefix}{USER_KEY_INFIX}{user_id}"

    def sids(self, user_id):
        """The ids listed for ``user_id`` (one local read); sessions that expired may still be listed."""
        raw = self._client_of().get(self.key(user_id))
        return [] if raw is None else list(msgpack.unpackb(raw, raw=False))

    def link(self, user_id, sid, ttl_ms, session_key):
        """List ``sid`` under ``user_id``, dropping listed ids whose session is gone (``session_key(sid)``)."""
        client = self._client_of()
        gone = [listed for listed in self.sids(user_id) if listed != sid and client.pttl(session_key(listed)) == -2]
        client.patch(self.key(user_id), set={sid: _LISTED}, delete=gone, ttl_ms=ttl_ms, encode=_as_is)

    def unlink(self, user_id, sid):
        """Drop ``sid`` from ``user_id``'s entry (nothing happens if the entry is gone)."""
        self._client_of().patch(self.key(user_id), delete=[sid], create=False)

    def keep_alive(self, user_id, sid, session_ttl_ms, margin_ms):
        """Make ``user_id``'s entry outlive a session whose TTL is now ``session_ttl_ms``.

        Writes only when the entry would expire sooner (a local read decides);
        then it lives ``session_ttl_ms + margin_ms``, so the next write comes
        ``margin_ms`` later at the earliest. An entry that is gone is written
        again with ``sid`` in it.
        """
        client = self._client_of()
        key = self.key(user_id)
        remaining_ms = client.pttl(key)
        if remaining_ms == -1 or remaining_ms >= session_ttl_ms:
            return
        if remaining_ms == -2 or not client.expire(key, session_ttl_ms + margin_ms):
            client.patch(key, set={sid: _LISTED}, ttl_ms=session_ttl_ms + margin_ms, encode=_as_is)

    def take(self, user_id):
        """Remove ``user_id``'s entry and return the ids it listed (atomically: a login after this is kept)."""
        raw = self._client_of().getdel(self.key(user_id))
        return [] if raw is None else list(msgpack.unpackb(raw, raw=False))


def _as_is(encoded):
    return encoded
