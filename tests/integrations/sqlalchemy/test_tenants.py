"""The tenant (database, user, schema translation) is part of every key: tenants never share or invalidate
each other's entries."""

import pytest
from sqlalchemy import event, make_url
from sqlalchemy.orm import sessionmaker

from ferric_sqlalchemy.tenant import describe, tenant_id
from tests.integrations.sqlalchemy.models import Base, User

@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_schema_translation_separates_tenants(db, tmp_path):
    """Two schemas (SQLite attached databases) with the same tables, reached through schema_translate_map."""
    def attach(dbapi_connection, record):
        for name in ("north", "south"):
            dbapi_connection.execute(f"ATTACH DATABASE '{tmp_path / name}.db' AS {name}")
    event.listen(db.engine, "connect", attach)
    db.engine.dispose()
    makers = {}
    for schema in ("north", "south"):
        engine = db.engine.execution_options(schema_translate_map={None: schema})
        Base.metadata.create_all(engine)
        makers[schema] = sessionmaker(engine, expire_on_commit=False)
        db.cache.attach(makers[schema])
        with makers[schema]() as session:
            session.add(User(id=1, name=f"{schema} user"))
            session.commit()
    try:
        def name(schema):
            with makers[schema]() as session:
                return session.get(User, 1).name
        for _ in range(2):
            assert name("north") == "north user"
            assert name("south") == "south user"
        with makers["north"]() as session:
            session.get(User, 1).name = "north renamed"
            session.commit()
        db.reset_counts()
        assert name("south") == "south user"
        assert db.selects() == 0  # south's entry untouched by north's write
        assert name("north") == "north renamed"
    finally:
        for maker in makers.values():
            db.cache.detach(maker)


def test_the_tenant_names_backend_user_host_port_database_query_and_schema_map_not_password_or_driver():
    base = make_url("postgresql+psycopg://app:secret@db:5432/shop?sslmode=require")
    assert describe(base, None) == ["postgresql", "app", "db", 5432, "shop", [("sslmode", "require")], []]
    assert tenant_id(base, None) == tenant_id(base.set(password="other", drivername="postgresql+psycopg2"), None)
    different = [base.set(username="admin"), base.set(host="db2"), base.set(port=5433), base.set(database="x"),
                 base.update_query_dict({"options": "-csearch_path=a"})]
    ids = {tenant_id(url, None) for url in different} | {tenant_id(base, {None: "tenant_a"}), tenant_id(base, None)}
    assert len(ids) == len(different) + 2


def test_sqlite_files_are_named_by_absolute_path_and_memory_by_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = describe(make_url("sqlite:///shop.db"), None)
    assert relative[4] == str(tmp_path / "shop.db")
    assert describe(make_url("sqlite://"), None)[4].startswith("memory:")
