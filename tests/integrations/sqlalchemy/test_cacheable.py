"""@cacheable's arguments, and what the catalog makes of the classes: strategies, regions, TTLs, secondary tables
and the tables a database cascade reaches."""

import datetime

import pytest

from ferric_sqlalchemy import cacheable
from ferric_sqlalchemy.catalog import Catalog
from tests.integrations.sqlalchemy import models


@pytest.mark.parametrize("kwargs, error", [
    ({"ttl": 0}, ValueError), ({"ttl": -5}, ValueError), ({"ttl": 1.5}, TypeError), ({"ttl": "60"}, TypeError),
    ({"strategy": "write_through"}, ValueError), ({"region": ""}, TypeError), ({"region": 3}, TypeError),
    ({"enabled": "yes"}, TypeError),
])
def test_bad_arguments_are_refused_when_the_class_is_defined(kwargs, error):
    with pytest.raises(error):
        cacheable(**kwargs)


def test_a_timedelta_ttl_and_a_non_class_target():
    decorate = cacheable(ttl=datetime.timedelta(minutes=2))
    with pytest.raises(TypeError, match="mapped class"):
        decorate(lambda: None)


def test_the_catalog_of_the_test_models():
    catalog = Catalog()
    assert catalog.table("users").strategy == "read_write"
    assert catalog.table("countries").strategy == "read_only"
    assert catalog.table("notes").strategy == "nonstrict_read_write"
    assert catalog.table("products").regions == ("catalog",) and catalog.table("products").ttl_ms == 60_000
    assert catalog.table("users").ttl_ms is None  # the QueryCache's default applies
    assert catalog.table("user_tags") is not None  # secondary of a relationship between cacheable classes
    assert catalog.table("drafts") is None and catalog.table("audit_log") is None  # enabled=False / not decorated
    assert catalog.dependents("users", "delete") == {"comments", "user_tags"}  # ON DELETE CASCADE
    assert catalog.dependents("users", "update") == set()
    assert catalog.enum_classes[f"{models.Status.__module__}.{models.Status.__qualname__}"] is models.Status
