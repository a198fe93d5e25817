"""A second-level cache for SQLAlchemy on ferricd: ``QueryCache`` and ``@cacheable`` (docs/sqlalchemy.md)."""

from ferric_sqlalchemy.cacheable import cacheable
from ferric_sqlalchemy.errors import NotCacheableError, QueryCacheError, ReadOnlyEntityError
from ferric_sqlalchemy.query_cache import CACHE_ONLY, OPTION, REFRESH, QueryCache

__all__ = ["CACHE_ONLY", "NotCacheableError", "OPTION", "QueryCache", "QueryCacheError", "REFRESH",
           "ReadOnlyEntityError", "cacheable"]
