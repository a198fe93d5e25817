"""Example Flask app on ferric_flask sessions: login with id rotation, a cart, a visit counter, logout everywhere.

Run under gunicorn from this directory (see README.md): ferricd & gunicorn -w 4 'app:create_app()'
"""

import os

from flask import Flask, jsonify, request, session
from werkzeug.exceptions import InternalServerError

import ferric_flask
from ferric_flask import SessionStoreUnavailable


def create_app(config=None):
    app = Flask(__name__)
    # Sessions live in ferricd, so the key only signs cookies if FERRIC_SESSION_SIGN_IDS is set. Every worker
    # must share it: take it from the environment, never generate it per process.
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "dev only: set SECRET_KEY in production")
    app.config["FERRIC_RUN_DIR"] = os.environ.get("FERRIC_RUN_DIR")  # None: ./ferric-run
    app.config.update(config or {})
    sessions = ferric_flask.init_app(app)

    @app.get("/")
    def visits():
        session["visits"] = session.get("visits", 0) + 1
        return jsonify(visits=session["visits"])

    @app.post("/login")
    def login():
        user = request.form["user"]
        sessions.regenerate(session)  # a new id at login: an id planted before it is worthless
        sessions.bind_user(session, user)  # so /logout-everywhere can find this session
        session["user"] = user
        return jsonify(user=user)

    @app.post("/logout")
    def logout():
        sessions.destroy(session)
        return jsonify(user=None)

    @app.post("/logout-everywhere")
    def logout_everywhere():
        user = session.get("user")
        ended = sessions.destroy_user_sessions(user) if user else 0
        sessions.destroy(session)
        return jsonify(ended=ended)

    @app.post("/cart")
    def add_to_cart():
        # A nested change: saved without session.modified = True.
        session.setdefault("cart", []).append(request.form["item"])
        return jsonify(cart=session["cart"])

    @app.get("/me")
    def me():
        return jsonify(user=session.get("user"), visits=session.get("visits", 0), cart=session.get("cart", []))

    @app.get("/health")
    def health():
        return "ok"  # never touches the session: works while ferricd is down, stores nothing

    @app.errorhandler(SessionStoreUnavailable)
    def store_unavailable(error):
        return jsonify(error="sessions are unavailable, try again shortly"), 503

    @app.errorhandler(InternalServerError)
    def internal_error(error):
        # A failed session save surfaces after the view, as a 500 wrapping the original error.
        if isinstance(error.original_exception, SessionStoreUnavailable):
            return store_unavailable(error.original_exception)
        return jsonify(error="internal error"), 500

    return app
