"""The example app (examples/flask_app) as gunicorn serves it in the end-to-end tests, plus two test-only views.

``/meet/<pair>/set/<key>`` opens the session, then waits until the other
request of its pair (in any worker) has opened it too, then sets ``key``:
a barrier across processes, made of a counter in ferricd; ``/gather`` is
the same barrier for any number of requests. ``/session``
shows every field. Every response names the worker that served it
(``X-Worker-Pid``).
"""

import importlib.util
import os
import time

import flask

from ferric_ipc import Client

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples", "flask_app", "app.py")
MEET_TIMEOUT_S = 60  # generous: the machine may be busy


def _example_module():
    spec = importlib.util.spec_from_file_location("flask_app_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_app():
    app = _example_module().create_app()
    meeting = Client(os.environ.get("FERRIC_RUN_DIR"))

    def meet(tag, count):
        """Wait until ``count`` requests (in any workers) reached the meeting ``tag``; False after the timeout."""
        meeting.incr(f"meet:{tag}", ttl_ms=600_000)
        deadline = time.monotonic() + MEET_TIMEOUT_S
        while int(meeting.get(f"meet:{tag}")) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    @app.get("/meet/<pair>/set/<key>")
    def meet_then_set(pair, key):
        flask.session.get("user")  # loaded before the partner request saves
        if not meet(pair, 2):
            return flask.jsonify(error="partner never came"), 504
        flask.session[key] = pair
        return flask.jsonify(ok=True)

    @app.get("/gather/<tag>/<int:count>")
    def gather(tag, count):
        """Answers once ``count`` requests are in: with sync workers, proof that ``count`` workers serve."""
        if not meet(tag, count):
            return flask.jsonify(error="not everyone came"), 504
        return flask.jsonify(ok=True)

    @app.get("/session")
    def whole_session():
        return flask.jsonify(dict(flask.session))

    @app.after_request
    def name_worker(response):
        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response

    return app
