"""Durable server-side Flask sessions on ferricd: ``ferric_flask.init_app(app)``."""

from ferric_flask.defaults import CONFIG_KEYS, Defaults
from ferric_flask.errors import SessionSerializationError, SessionStoreUnavailable, SessionTooLarge
from ferric_flask.interface import FerricSessionInterface
from ferric_flask.serializer import SessionSerializer
from ferric_flask.session import FerricSession, UnavailableSession

__all__ = [
    "CONFIG_KEYS",
    "Defaults",
    "FerricSession",
    "FerricSessionInterface",
    "SessionSerializationError",
    "SessionSerializer",
    "SessionStoreUnavailable",
    "SessionTooLarge",
    "UnavailableSession",
    "init_app",
]


def init_app(app, client=None):
    """Set ``app.session_interface`` to a FerricSessionInterface configured from ``app.config``.

    Each option is read from its FERRIC_* key (``CONFIG_KEYS``), else its
    default (``Defaults``); ``client`` (a ``ferric_ipc.Client``) replaces the
    one the interface would make from FERRIC_RUN_DIR. Returns the interface.
    """
    options = {option: app.config.get(config_key, getattr(Defaults, option))
               for option, config_key in CONFIG_KEYS.items()}
    app.session_interface = FerricSessionInterface(client=client, **options)
    return app.session_interface
