"""Errors ferric_flask raises: each says what to do about it."""

from werkzeug.exceptions import ServiceUnavailable

from ferric_ipc import FerricError


class SessionStoreUnavailable(ServiceUnavailable, FerricError):
    """ferricd did not answer (not running, or past the client's timeout) while a request used its session.

    Raised when the view first touches ``flask.session`` (so Flask's error
    handlers apply and, without one, answer 503), and from ``save_session``
    when a write fails (Flask then answers 500 with this as
    ``original_exception``). ``__cause__`` is the client's error.
    """

    def __init__(self, description=None):
        ServiceUnavailable.__init__(self, description or (
            "the session store (ferricd) is unreachable: check that ferricd runs (ferricctl ping) and that "
            "FERRIC_RUN_DIR names its run directory"
        ))


class SessionSerializationError(TypeError):
    """A session value cannot be stored (unsupported type, or a key that is not str); raised at save."""

    def __init__(self, message, field=None, type_name=None):
        super().__init__(message)
        self.field = field
        self.type_name = type_name


class SessionTooLarge(ValueError):
    """A session grew past FERRIC_SESSION_MAX_BYTES; raised at save, nothing of it is written."""

    def __init__(self, message, size_bytes, max_bytes):
        super().__init__(message)
        self.size_bytes = size_bytes
        self.max_bytes = max_bytes
