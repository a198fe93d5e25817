"""SessionIds: new session ids, and the cookie value that carries one (optionally signed with SECRET_KEY)."""

import hashlib
import re
import secrets

from itsdangerous import BadSignature, Signer

#: Ids this interface accepts from a cookie: URL-safe base64 of at least 128 bits (ours carry 256; ids of
#: Flask-Session's SESSION_ID_LENGTH >= 16 pass too, so imported sessions keep their cookies).
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22,256}")
SIGNER_SALT = "ferric_flask.session-id"


class SessionIds:
    """Makes ids and reads them back from cookies; a malformed or forged cookie yields None, before any lookup."""

    def __init__(self, id_bytes, sign):
        if type(id_bytes) is not int or id_bytes < 16:
            raise ValueError(f"id_bytes must be an int >= 16 (128 bits), not {id_bytes!r}")
        self.id_bytes = id_bytes
        self.sign = bool(sign)
        self._signers = {}  # (secret keys) -> Signer

    def new(self):
        """A fresh random id: ``id_bytes`` from the OS's CSPRNG, URL-safe base64 without padding."""
        return secrets.token_urlsafe(self.id_bytes)

    def from_cookie(self, app, value):
        """``(sid, resign)``: the session id in cookie ``value`` (None if it is absent, malformed or, when
        signing, forged), and whether the cookie should be signed anew (it verified with a key of
        SECRET_KEY_FALLBACKS only, so it must be re-sent before that key is retired)."""
        if not value:
            return None, False
        resign = False
        if self.sign:
            try:
                value = self._unsign(app, value)
            except BadSignature:
                try:
                    value = self._unsign(app, value, fallbacks=True)
                except BadSignature:
                    return None, False
                resign = True
        return (value, resign) if ID_PATTERN.fullmatch(value) else (None, False)

    def to_cookie(self, app, sid):
        """The cookie value for ``sid``: the id itself, or ``id.signature`` when signing (with SECRET_KEY)."""
        if not self.sign:
            return sid
        return self._signer(app, False).sign(sid.encode("ascii")).decode("ascii")

    def _unsign(self, app, value, fallbacks=False):
        try:
            return self._signer(app, fallbacks).unsign(value).decode("ascii")
        except UnicodeDecodeError:
            raise BadSignature("not ASCII") from None

    def _signer(self, app, fallbacks):
        if not app.secret_key:
            raise RuntimeError(
                "FERRIC_SESSION_SIGN_IDS needs SECRET_KEY: set app.secret_key (or turn signing off)"
            )
        keys = tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()) if fallbacks else (app.secret_key,)
        signer = self._signers.get(keys)
        if signer is None:
            signer = self._signers[keys] = Signer(
                list(keys), salt=SIGNER_SALT, key_derivation="hmac", digest_method=hashlib.sha256
            )
        return signer
