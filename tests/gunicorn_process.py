"""What tests need to run gunicorn for real: a free loopback port, and the flags that let masters run side by side."""

import socket


def control_socket_flags():
    """Gunicorn >= 25 opens a control socket at one path per user: parallel masters would take it from each other."""
    import gunicorn.config

    settings = {setting.name for setting in gunicorn.config.KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in settings else []


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
