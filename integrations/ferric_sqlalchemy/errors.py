"""Exceptions ferric_sqlalchemy raises; each message says what to do about it."""

from ferric_ipc import FerricError


class QueryCacheError(FerricError):
    """Base class of the query cache's own errors."""


class ReadOnlyEntityError(QueryCacheError):
    """An UPDATE or DELETE reached a table whose class is cached with strategy="read_only"; nothing was written."""


class NotCacheableError(QueryCacheError, ValueError):
    """``ferric_cache="cache_only"`` was asked of a statement the cache never holds (the message says why)."""


class NotEncodable(QueryCacheError, TypeError):
    """A value has no exact msgpack form here (the result is then not cached; callers never see this)."""
