"""``@cacheable``: which mapped classes the cache holds, for how long, under which strategy and region."""

import datetime
import weakref
from typing import NamedTuple

DEFAULT_REGION = "default"


class Strategy(NamedTuple):
    """What a strategy promises; docs/sqlalchemy.md states each guarantee in words."""

    #: Generations are read before the database query, so a result computed while a write committed is
    #: stored under generations that write replaced: no reader ever finds it (race-free population).
    generations_before_query: bool
    #: One process recomputes a missing entry while the others wait for it (a lease on the entry's shard).
    lease: bool
    #: UPDATE and DELETE are allowed (read_only raises ReadOnlyEntityError before they reach the database).
    updates_allowed: bool
    #: ``get`` entries depend on the row's own generation (read_only rows never change, so they do not).
    row_generations: bool


STRATEGIES = {
    "read_write": Strategy(generations_before_query=True, lease=True, updates_allowed=True, row_generations=True),
    "nonstrict_read_write": Strategy(generations_before_query=False, lease=False, updates_allowed=True,
                                     row_generations=True),
    "read_only": Strategy(generations_before_query=True, lease=True, updates_allowed=False, row_generations=False),
}
#: When one statement reads tables of several strategies, the first of these present decides.
STRICTNESS = ("read_only", "read_write", "nonstrict_read_write")


class CacheSettings(NamedTuple):
    """The ``@cacheable`` options of one class."""

    ttl_ms: int | None  # None: the QueryCache's default_ttl_ms
    strategy: str
    region: str
    enabled: bool


#: Every class decorated in this process (weakly: a class that goes away leaves the catalog).
decorated_classes: "weakref.WeakSet[type]" = weakref.WeakSet()
_ATTRIBUTE = "__ferric_cache__"


def cacheable(cls=None, *, ttl=None, strategy="read_write", region=DEFAULT_REGION, enabled=True):
    """Mark a mapped class as cached: ``@cacheable`` or ``@cacheable(ttl=60_000, strategy="read_only")``.

    ``ttl`` is milliseconds (int) or a timedelta (default: the QueryCache's
    ``default_ttl_ms``); ``strategy`` is "read_write"
    (default), "nonstrict_read_write" or "read_only"; ``region`` names a group
    that ``QueryCache.invalidate_region`` clears at once; ``enabled=False``
    keeps the class out of the cache. Subclasses inherit the settings unless
    decorated themselves.
    """
    settings = CacheSettings(None if ttl is None else _ttl_ms(ttl), _strategy(strategy), _region(region),
                             _enabled(enabled))

    def decorate(target):
        if not isinstance(target, type):
            raise TypeError(f"@cacheable decorates a mapped class, not {target!r}")
        setattr(target, _ATTRIBUTE, settings)
        decorated_classes.add(target)
        return target

    return decorate if cls is None else decorate(cls)


def settings_of(cls) -> CacheSettings | None:
    """The settings a class has (its own or inherited), or None if it is not cacheable at all."""
    return getattr(cls, _ATTRIBUTE, None)


def _ttl_ms(ttl) -> int:
    if isinstance(ttl, datetime.timedelta):
        milliseconds = ttl // datetime.timedelta(milliseconds=1)
    elif type(ttl) is int:
        milliseconds = ttl
    else:
        raise TypeError(f"ttl must be milliseconds (int) or a timedelta, not {ttl!r}")
    if milliseconds <= 0:
        raise ValueError(f"ttl must be at least 1 ms, not {ttl!r}; use enabled=False to keep a class out of the cache")
    return milliseconds


def _strategy(strategy) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, not {strategy!r}")
    return strategy


def _region(region) -> str:
    if not isinstance(region, str) or not region:
        raise TypeError(f"region must be a non-empty str, not {region!r}")
    return region


def _enabled(enabled) -> bool:
    if type(enabled) is not bool:
        raise TypeError(f"enabled must be True or False, not {enabled!r}")
    return enabled
