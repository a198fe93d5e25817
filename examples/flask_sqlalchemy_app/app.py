"""Example Flask + Flask-SQLAlchemy app whose queries are cached in ferricd by ferric_sqlalchemy, with its sessions
in ferricd too (ferric_flask): a small bookshop.

Run under gunicorn from this directory (see README.md):
    ferricd & flask --app app init-db && gunicorn -w 4 'app:create_app()'
"""

import decimal
import os

from flask import Flask, abort, jsonify, request, session
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import ForeignKey, Numeric, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import ferric_flask
from ferric_sqlalchemy import QueryCache, cacheable


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
# One cache per process; its ferric_ipc.Client is made on first use, in each gunicorn worker after the fork.
query_cache = QueryCache()


@cacheable(strategy="read_only", region="reference")  # genres never change: updating one raises
class Genre(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)


@cacheable
class Author(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    books: Mapped[list["Book"]] = relationship(back_populates="author", order_by="Book.id")


@cacheable(ttl=600_000)
class Book(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    price: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2))
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    genre_id: Mapped[int] = mapped_column(ForeignKey("genre.id"))
    author: Mapped[Author] = relationship(back_populates="books")
    genre: Mapped[Genre] = relationship()


def book_json(book):
    return {"id": book.id, "title": book.title, "price": str(book.price), "author": book.author.name,
            "genre": book.genre.name}


def create_app(config=None):
    app = Flask(__name__)
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "dev only: set SECRET_KEY in production")
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get(
        "DATABASE_URL", "sqlite:///" + os.path.join(os.path.abspath(os.path.dirname(__file__)), "shop.db"))
    app.config["FERRIC_RUN_DIR"] = os.environ.get("FERRIC_RUN_DIR")  # None: ./ferric-run
    app.config.update(config or {})
    db.init_app(app)
    query_cache.attach(db.session)  # the one line that caches every select of the @cacheable models
    ferric_flask.init_app(app)

    @app.get("/books/<int:book_id>")
    def book(book_id):
        found = db.session.get(Book, book_id)  # a cache hit after the first request, in any worker
        if found is None:
            abort(404)
        viewed = session.setdefault("viewed", [])
        if book_id not in viewed:
            viewed.append(book_id)
        return jsonify(book_json(found))  # the author and genre lazy loads are cached too

    @app.get("/books")
    def books():
        statement = select(Book).join(Book.genre).order_by(Book.id)
        if "genre" in request.args:
            statement = statement.where(Genre.name == request.args["genre"])
        return jsonify([book_json(b) for b in db.session.scalars(statement.limit(20))])

    @app.get("/authors/<int:author_id>/books")
    def author_books(author_id):
        author = db.get_or_404(Author, author_id)
        return jsonify(author=author.name, books=[b.title for b in author.books])

    @app.get("/genres/count")
    def genre_counts():
        rows = db.session.execute(select(Genre.name, func.count(Book.id)).join(Book, Book.genre_id == Genre.id)
                                  .group_by(Genre.name).order_by(Genre.name))
        return jsonify({name: count for name, count in rows})

    @app.post("/books/<int:book_id>/price")
    def set_price(book_id):
        found = db.get_or_404(Book, book_id)
        found.price = decimal.Decimal(request.form["price"])
        db.session.commit()  # every worker's cached copy of this book, and the lists holding it, are gone now
        return jsonify(book_json(found))

    @app.get("/recently-viewed")
    def recently_viewed():
        return jsonify(session.get("viewed", []))

    @app.get("/cache-stats")
    def cache_stats():
        stats = query_cache.stats()  # this worker's counts
        counts = {key: stats[key] for key in ("hits", "misses", "stores", "invalidations")}
        return jsonify(pid=os.getpid(), **counts)

    @app.cli.command("init-db")
    def init_db():
        """Create the tables and a few books."""
        db.create_all()
        if db.session.get(Genre, 1) is None:
            seed()
        print("database ready")

    return app


def seed():
    genres = [Genre(id=1, name="fiction"), Genre(id=2, name="science")]
    authors = [Author(id=1, name="Ursula K. Le Guin"), Author(id=2, name="Carl Sagan")]
    db.session.add_all(genres + authors)
    db.session.add_all([
        Book(id=1, title="A Wizard of Earthsea", price=decimal.Decimal("9.99"), author_id=1, genre_id=1),
        Book(id=2, title="The Dispossessed", price=decimal.Decimal("12.50"), author_id=1, genre_id=1),
        Book(id=3, title="Cosmos", price=decimal.Decimal("15.00"), author_id=2, genre_id=2),
    ])
    db.session.commit()
