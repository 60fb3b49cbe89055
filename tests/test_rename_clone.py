"""rename-tenant and clone-tenant: the schema, its version and rows, its
events in the same transaction, and what is refused."""
import sqlalchemy as sa

from pyramid_tenantmigrate import (
    TenantCloned,
    TenantRenamed,
    clone_tenant,
    commands,
    rename_tenant,
)
from pyramid_tenantmigrate.engine.sql import tenant_lock_sql

from .conftest import create_schemas, schema_exists, version_of

HISTORY = {
    "t1": """
        op.create_table("people",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.Text, nullable=False))
        op.create_table("notes",
            sa.Column("id", sa.Integer, sa.Identity(always=True),
                      primary_key=True),
            sa.Column("person_id", sa.Integer,
                      sa.ForeignKey("people.id"), nullable=False),
            sa.Column("title", sa.Text, nullable=False),
            sa.Column("shout", sa.Text,
                      sa.Computed("upper(title)", persisted=True)))
        """,
    "t2": 'op.add_column("notes", sa.Column("pinned", sa.Boolean))',
}


def history(project, db, *tenants, upto="t2"):
    project.write_revision("tenant", "t1", None, HISTORY["t1"])
    project.write_revision("tenant", "t2", "t1", HISTORY["t2"])
    create_schemas(db, *tenants)
    project.cli("upgrade", f"tenant@{upto}", check=0)


def rows(db, schema):
    with db.connect() as connection:
        return connection.exec_driver_sql(
            f"SELECT p.name, n.id, n.title, n.shout FROM {schema}.notes n "
            f"JOIN {schema}.people p ON p.id = n.person_id "
            "ORDER BY n.id").all()


def fill(db, schema):
    with db.begin() as connection:
        connection.exec_driver_sql(
            f"INSERT INTO {schema}.people (id, name) VALUES (1, 'ann'); "
            f"INSERT INTO {schema}.notes (person_id, title) VALUES "
            "(1, 'one'), (1, 'two')")


def test_clone_at_the_sources_revision_with_rows(project, db):
    history(project, db, "tenant_a", upto="t1")
    fill(db, "tenant_a")
    migrator = project.migrator()

    clone_tenant(migrator, "tenant_a", "tenant_copy", data=True)
    clone_tenant(migrator, "tenant_a", "tenant_empty")

    assert version_of(db, "tenant_copy") == ["t1"]  # not the head
    assert rows(db, "tenant_copy") == rows(db, "tenant_a")
    assert rows(db, "tenant_empty") == []
    # The identity sequence goes on where the source's is.
    with db.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO tenant_copy.notes (person_id, title) "
            "VALUES (1, 'three')")
    assert [r[1] for r in rows(db, "tenant_copy")] == [1, 2, 3]
    # A copy is a tenant like the others: the next upgrade takes it on.
    commands.upgrade(migrator)
    assert version_of(db, "tenant_copy") == ["t2"]
    migrator.close()


def test_rename_keeps_everything_and_events_share_the_transaction(
        project, db):
    history(project, db, "tenant_a")
    fill(db, "tenant_a")
    before = rows(db, "tenant_a")
    seen = []
    project.write_revision("shared", "s1", None, """
        op.create_table("tenants", sa.Column("schema_name", sa.Text),
                        schema="public")
        """)
    migrator = project.migrator()
    commands.upgrade(migrator, "shared")

    class Registry:
        def notify(self, event):
            assert isinstance(event, (TenantRenamed, TenantCloned))
            seen.append((type(event).__name__, event.source, event.schema))
            event.connection.execute(sa.text(
                "INSERT INTO public.tenants VALUES (:schema)"),
                {"schema": event.schema})

    rename_tenant(migrator, "tenant_a", "tenant_b", registry=Registry())
    clone_tenant(migrator, "tenant_b", "tenant_c", registry=Registry())

    assert not schema_exists(db, "tenant_a")
    assert version_of(db, "tenant_b") == ["t2"]
    assert rows(db, "tenant_b") == before
    assert seen == [("TenantRenamed", "tenant_a", "tenant_b"),
                    ("TenantCloned", "tenant_b", "tenant_c")]
    with db.connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT schema_name FROM public.tenants ORDER BY 1"
        ).scalars().all() == ["tenant_b", "tenant_c"]
    migrator.close()


def test_a_rename_waits_for_the_tenants_migration(project, db):
    """The rename takes the tenant's lock, the one its migration holds:
    it never renames a schema in the middle of a migration."""
    import threading

    history(project, db, "tenant_a")
    holder = db.connect()
    holder.begin()
    holder.exec_driver_sql(tenant_lock_sql("tenant_a"))
    migrator = project.migrator()
    done = []
    renamer = threading.Thread(target=lambda: done.append(rename_tenant(
        migrator, "tenant_a", "tenant_b")))
    renamer.start()
    renamer.join(1.0)
    assert renamer.is_alive() and schema_exists(db, "tenant_a")
    holder.rollback()
    holder.close()
    renamer.join(60)
    assert done == ["tenant_b"] and schema_exists(db, "tenant_b")
    migrator.close()


def test_bad_names_and_clashes_are_refused_and_nothing_changes(project, db):
    history(project, db, "tenant_a", "tenant_b")
    for args, message in (
            (("rename-tenant", "tenant_a"), "takes the tenant and"),
            (("rename-tenant", "tenant_nope", "tenant_x"),
             "'tenant_nope' does not exist"),
            (("rename-tenant", "tenant_a", "tenant_b"),
             "'tenant_b' already exists"),
            (("rename-tenant", "tenant_a", "public"), "public"),
            (("rename-tenant", "tenant_a", 'x"; drop'), "invalid"),
            (("clone-tenant", "tenant_a", "tenant_b", "--data"),
             "'tenant_b' already exists"),
            (("clone-tenant", "tenant_nope", "tenant_x"),
             "'tenant_nope' does not exist")):
        result = project.cli(*args, check=2)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert schema_exists(db, "tenant_a") and schema_exists(db, "tenant_b")
    assert not schema_exists(db, "tenant_x")

    result = project.cli("clone-tenant", "tenant_a", "tenant_x", "--data",
                         check=0)
    assert "Made tenant schema tenant_x as a copy of tenant_a" in \
        result.stdout
    result = project.cli("rename-tenant", "tenant_x", "tenant_y", check=0)
    assert version_of(db, "tenant_y") == ["t2"]


def test_clone_with_rows_replaces_what_data_revisions_seeded(project, db):
    project.write_revision("tenant", "t1", None, HISTORY["t1"] + """
        op.execute("INSERT INTO people (id, name) VALUES (1, 'seeded')")
        """)
    create_schemas(db, "tenant_a")
    project.cli("upgrade", check=0)
    with db.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE tenant_a.people SET name = 'renamed by the tenant'")
        connection.exec_driver_sql(
            "INSERT INTO tenant_a.people (id, name) VALUES (2, 'added')")
    clone_tenant(project.migrator(), "tenant_a", "tenant_copy", data=True)
    with db.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT id, name FROM tenant_copy.people ORDER BY id").all()
    assert [tuple(r) for r in rows] == [(1, "renamed by the tenant"),
                                        (2, "added")]
