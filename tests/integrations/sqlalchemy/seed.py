"""Rows most ferric_sqlalchemy tests start from."""

import datetime
import decimal
import uuid
import zoneinfo

from tests.integrations.sqlalchemy.models import (
    Address,
    Comment,
    Country,
    Membership,
    Note,
    Product,
    Status,
    Tag,
    User,
)

TOKEN = uuid.UUID("12345678-1234-5678-1234-567812345678")


def seed(db, users=5):
    """``users`` users (ids 1..n) with two addresses each, tags, comments, and a few other rows."""
    with db.Session() as session:
        tags = [Tag(id=1, label="red"), Tag(id=2, label="blue")]
        for i in range(1, users + 1):
            session.add(User(
                id=i, name=f"user{i}", email=f"u{i}@example.com",
                created_at=datetime.datetime(2024, 5, i, 12, 30, 15, 123456, tzinfo=datetime.timezone.utc),
                balance=decimal.Decimal("1234.5600") + i, token=TOKEN if i == 1 else None,
                profile={"langs": ["en", "fr"], "n": i, "nested": {"ok": True}}, status=Status.active,
                avatar=b"\x00\x01\xff" * i, bio=f"bio of {i}",
                addresses=[Address(id=i * 10 + 1, email=f"a{i}@x"), Address(id=i * 10 + 2, email=f"b{i}@x")],
                tags=tags[: i % 3], comments=[Comment(id=i, body=f"comment {i}")],
            ))
        session.add_all([Country(code="fr", name="France"), Country(code="de", name="Germany")])
        session.add_all([Note(id=1, text="first"), Membership(user_id=1, group="a:b{c}", role="owner")])
        session.add_all([Product(id=1, name="pen", price=decimal.Decimal("1.50"))])
        session.commit()
    db.reset_counts()


PARIS = zoneinfo.ZoneInfo("Europe/Paris")
