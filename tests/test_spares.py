"""Spare tenant schemas: made ahead, renamed by create_tenant (spares.py)."""
import itertools
import json
import os

import sqlalchemy as sa

from pyramid_tenantmigrate.provisioning import create_tenant
from pyramid_tenantmigrate.spares import claim_spare

from .conftest import catalog_snapshot, create_schemas, schema_exists
from .test_replay import write_rich_history

_roles = itertools.count()


def spares_in_catalog(db):
    """``{spare schema name: oid}`` as the catalog has them."""
    with db.connect() as connection:
        return dict(connection.execute(sa.text(
            "SELECT nspname, oid::int FROM pg_namespace "
            "WHERE nspname LIKE 'tenantmigrate\\_spare\\_%'")).fetchall())


def spares_listed(db):
    """``{spare schema name: heads}`` as the spares table lists them."""
    with db.connect() as connection:
        return {name: sorted(heads) for name, heads in connection.execute(
            sa.text("SELECT schema_name, heads "
                    "FROM public.tenantmigrate_spares")).fetchall()}


def schema_oid(db, name):
    with db.connect() as connection:
        return connection.execute(sa.text(
            "SELECT oid::int FROM pg_namespace WHERE nspname = :n"),
            {"n": name}).scalar()


def setup_rich(project, db):
    """The rich history, a tenant made by plain Alembic to compare with,
    and two spares."""
    # An app without the demo's TenantCreated subscriber (it seeds notes).
    project.app_factory = "call:tests.apps:main"
    write_rich_history(project)
    project.run("upgrade", "shared", check=0)
    create_schemas(db, "tenant_alembic")
    project.write_ini(**{"tenantmigrate.replay": "false"})
    project.run("upgrade", "--tenant", "tenant_alembic", check=0)
    project.settings["tenantmigrate.spare_schemas"] = "2"
    project.write_ini()
    result = project.run("fill-spares", "--json", check=0)
    assert len(json.loads(result.stdout)["created"]) == 2


def test_create_tenant_renames_a_spare_into_what_a_full_replay_makes(
        project, db):
    setup_rich(project, db)
    spares = spares_in_catalog(db)
    assert len(spares) == 2
    assert spares_listed(db) == {name: ["t3"] for name in spares}
    # Tenant discovery (prefix 'tenant') never sees the spares.
    current = json.loads(project.run("current", "--json", check=0).stdout)
    tenant = [b for b in current["branches"] if b["branch"] == "tenant"][0]
    assert [s["schema"] for s in tenant["schemas"]] == ["tenant_alembic"]

    project.run("create-tenant", "tenant_new", check=0)

    # It is one of the spares, renamed (same oid), not a new schema ...
    assert schema_oid(db, "tenant_new") in spares.values()
    left = spares_in_catalog(db)
    assert len(left) == 1 and set(left) < set(spares)
    assert spares_listed(db) == {name: ["t3"] for name in left}
    # ... and identical to the tenant plain Alembic made.
    expected = catalog_snapshot(db, "tenant_alembic")
    assert catalog_snapshot(db, "tenant_new") == expected
    with db.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO tenant_new.projects (name) VALUES ('x')")
        assert connection.exec_driver_sql(
            "SELECT state FROM tenant_new.projects").scalar() == "open"


def test_without_a_spare_at_the_head_create_tenant_replays(project, db):
    setup_rich(project, db)
    project.run("fill-spares", "--count", "0", check=0)
    assert spares_in_catalog(db) == {} and spares_listed(db) == {}
    project.run("create-tenant", "tenant_new", check=0)
    assert catalog_snapshot(db, "tenant_new") == catalog_snapshot(
        db, "tenant_alembic")


def test_a_rolled_back_signup_puts_the_spare_back(project, db):
    setup_rich(project, db)
    before = spares_in_catalog(db)
    migrator = project.migrator(**{"tenantmigrate.spare_schemas": "2"})
    with migrator.connect() as connection:
        transaction = connection.begin()
        create_tenant(migrator, "tenant_new", connection=connection)
        assert schema_oid(db, "tenant_new") is None  # not committed yet
        transaction.rollback()
    migrator.close()
    assert not schema_exists(db, "tenant_new")
    assert spares_in_catalog(db) == before
    assert set(spares_listed(db)) == set(before)


def test_two_signups_at_once_get_different_spares_without_waiting(
        project, db):
    setup_rich(project, db)
    migrator = project.migrator(**{"tenantmigrate.spare_schemas": "2"})
    with migrator.connect() as first, migrator.connect() as second:
        with first.begin(), second.begin():
            first.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
            second.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
            assert claim_spare(migrator, first, "tenant_a")
            assert claim_spare(migrator, second, "tenant_b")
    migrator.close()
    assert schema_exists(db, "tenant_a") and schema_exists(db, "tenant_b")
    assert spares_in_catalog(db) == {} and spares_listed(db) == {}


def test_upgrade_replaces_spares_made_at_an_old_head(project, db):
    project.write_standard_revisions()
    project.settings["tenantmigrate.spare_schemas"] = "2"
    project.write_ini()
    result = project.run("upgrade", "--json", check=0)
    first = json.loads(result.stdout)["spares"]
    assert len(first["created"]) == 2 and first["ready"] == 2
    assert spares_listed(db) == {name: ["t2"] for name in first["created"]}

    project.write_revision("tenant", "t3", "t2", """
        op.add_column("notes", sa.Column("body", sa.Text))
        """, 'op.drop_column("notes", "body")')
    assert ("spares: 0 ready at the tenant head, 2 made at another "
            "revision") in project.run("current", check=0).stdout
    result = project.run("upgrade", check=0)
    assert "spares: 2 ready at the tenant head (2 created, 2 dropped)" in (
        result.stdout)
    listed = spares_listed(db)
    assert set(listed).isdisjoint(first["created"])
    assert listed == {name: ["t3"] for name in listed}
    assert set(spares_in_catalog(db)) == set(listed)
    for name in listed:
        assert catalog_snapshot(db, name)["versions"] == ["t3"]
    current = json.loads(project.run("current", "--json", check=0).stdout)
    assert current["spares"] == {"ready": 2, "stale": 0}

    # A spare-named schema the table does not list is dropped by the fill.
    create_schemas(db, "tenantmigrate_spare_left_by_hand")
    project.run("fill-spares", check=0)
    assert "tenantmigrate_spare_left_by_hand" not in spares_in_catalog(db)
    assert set(spares_in_catalog(db)) == set(listed)


def test_spare_names_are_reserved(project, db):
    project.write_standard_revisions()
    project.run("upgrade", check=0)
    for args in (("create-tenant", "tenantmigrate_spare_x"),
                 ("upgrade", "--tenant", "tenantmigrate_spare_x")):
        result = project.run(*args, check=2)
        assert "reserved for spare schemas" in result.stderr
    assert not schema_exists(db, "tenantmigrate_spare_x")


def test_an_app_role_claims_only_spares_it_may_rename(project, db):
    setup_rich(project, db)
    spares = spares_in_catalog(db)
    role = f"tm_app_{os.getpid()}_{next(_roles)}"
    database = db.url.database
    with db.begin() as connection:
        connection.exec_driver_sql(f'CREATE ROLE "{role}"')
        connection.exec_driver_sql(
            f'GRANT CREATE ON DATABASE "{database}" TO "{role}"')
        connection.exec_driver_sql(
            f'GRANT USAGE ON SCHEMA public TO "{role}"')
        connection.exec_driver_sql(
            f'GRANT REFERENCES ON public.accounts TO "{role}"')
        owner = connection.exec_driver_sql(
            "SELECT current_user").scalar()
    migrator = project.migrator(**{"tenantmigrate.spare_schemas": "2"})

    def create_as_role(name):
        with migrator.connect() as connection:
            with connection.begin():
                connection.exec_driver_sql(f'SET LOCAL ROLE "{role}"')
                create_tenant(migrator, name, connection=connection)

    try:
        # No rights on the spares table: an ordinary replay.
        create_as_role("tenant_one")
        assert schema_oid(db, "tenant_one") not in spares.values()
        with db.begin() as connection:
            connection.exec_driver_sql(
                "GRANT SELECT, UPDATE, DELETE ON public.tenantmigrate_spares"
                f' TO "{role}"')
        # Rights on the table, but the spares are not its to rename.
        create_as_role("tenant_two")
        assert schema_oid(db, "tenant_two") not in spares.values()
        assert spares_in_catalog(db) == spares
        # With the owner's privileges it claims one.
        with db.begin() as connection:
            connection.exec_driver_sql(f'GRANT "{owner}" TO "{role}"')
        create_as_role("tenant_three")
        assert schema_oid(db, "tenant_three") in spares.values()
        assert len(spares_in_catalog(db)) == 1
        expected = catalog_snapshot(db, "tenant_alembic")
        for name in ("tenant_one", "tenant_two", "tenant_three"):
            assert catalog_snapshot(db, name) == expected
    finally:
        migrator.close()
        with db.begin() as connection:
            for name in ("tenant_one", "tenant_two", "tenant_three"):
                connection.exec_driver_sql(
                    f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            connection.exec_driver_sql(f'DROP OWNED BY "{role}"')
            connection.exec_driver_sql(f'DROP ROLE "{role}"')
