"""Mapped classes the ferric_sqlalchemy tests cache: every strategy, column type and relationship kind."""

import datetime
import decimal
import enum
import uuid

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ferric_sqlalchemy import cacheable


class Base(DeclarativeBase):
    pass


class Status(enum.Enum):
    active = "active"
    banned = "banned"


user_tags = Table(
    "user_tags", Base.metadata,
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True),
)


@cacheable
class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    balance: Mapped[decimal.Decimal | None] = mapped_column(Numeric(14, 4))
    token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    profile: Mapped[dict | None] = mapped_column(JSON)
    status: Mapped[Status] = mapped_column(Enum(Status), default=Status.active)
    avatar: Mapped[bytes | None] = mapped_column(LargeBinary)
    bio: Mapped[str | None] = mapped_column(Text, deferred=True)
    addresses: Mapped[list["Address"]] = relationship(back_populates="user", order_by="Address.id")
    tags: Mapped[list["Tag"]] = relationship(secondary=user_tags, order_by="Tag.id")
    comments: Mapped[list["Comment"]] = relationship(passive_deletes=True, order_by="Comment.id")

    def __repr__(self):
        return f"User({self.id})"


@cacheable
class Address(Base):
    __tablename__ = "addresses"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    user: Mapped[User | None] = relationship(back_populates="addresses")


@cacheable
class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(50))


@cacheable
class Comment(Base):
    """Deleted by the database when its user is (ON DELETE CASCADE), never by the ORM."""

    __tablename__ = "comments"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    body: Mapped[str] = mapped_column(String(200))


@cacheable(strategy="read_only")
class Country(Base):
    __tablename__ = "countries"
    code: Mapped[str] = mapped_column(String(2), primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


@cacheable(strategy="nonstrict_read_write")
class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


@cacheable
class Membership(Base):
    """A composite primary key, one part a string."""

    __tablename__ = "memberships"
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group: Mapped[str] = mapped_column(String(50), primary_key=True)
    role: Mapped[str] = mapped_column(String(50))


@cacheable(region="catalog", ttl=60_000)
class Product(Base):
    __tablename__ = "products"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    price: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2))


@cacheable(enabled=False)
class Draft(Base):
    __tablename__ = "drafts"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(200))


class AuditLog(Base):
    """Not cacheable at all."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    message: Mapped[str] = mapped_column(String(200))


@cacheable
class Box(Base):
    """Counters in boxes: what the multi-process race test writes and reads."""

    __tablename__ = "boxes"
    id: Mapped[int] = mapped_column(primary_key=True)
    counters: Mapped[list["Counter"]] = relationship(order_by="Counter.id")


@cacheable
class Counter(Base):
    __tablename__ = "counters"
    id: Mapped[int] = mapped_column(primary_key=True)
    box_id: Mapped[int] = mapped_column(ForeignKey("boxes.id"))
    value: Mapped[int] = mapped_column(Integer, default=0)


@cacheable(strategy="nonstrict_read_write")
class SlowNote(Base):
    """Read by the stampede test without a lease (nonstrict_read_write takes none)."""

    __tablename__ = "slow_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
