"""The replay path: revisions rendered once, replayed per tenant."""
import json

import sqlalchemy as sa

from pyramid_tenantmigrate.engine.execute import execute_branch
from pyramid_tenantmigrate.plan import StepPlanner, plan_branch
from pyramid_tenantmigrate.versions import SchemaVersion

from .conftest import (
    catalog_snapshot,
    columns_of,
    create_schemas,
    tables_of,
    version_of,
)

RICH_TENANT_HISTORY = [
    ("t1", None, """
        op.create_table("projects",
            sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
            sa.Column("name", sa.Text, nullable=False),
            sa.Column("state", sa.Enum("open", "closed", name="project_state"),
                      nullable=False, server_default="open"),
            sa.Column("created", sa.DateTime(timezone=True),
                      server_default=sa.func.now()))
        op.create_table("tasks",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("project_id", sa.BigInteger,
                      sa.ForeignKey("projects.id", ondelete="CASCADE"),
                      nullable=False),
            sa.Column("account_id", sa.Integer,
                      sa.ForeignKey("public.accounts.id")),
            sa.Column("title", sa.String(200), nullable=False),
            sa.UniqueConstraint("project_id", "title", name="uq_task"))
        op.create_index("ix_tasks_title", "tasks", ["title"])
        """),
    ("t2", "t1", """
        op.add_column("tasks", sa.Column("done", sa.Boolean,
                      server_default=sa.false(), nullable=False))
        op.create_index("ix_tasks_open", "tasks", ["project_id"],
                        postgresql_where=sa.text("NOT done"))
        op.execute("COMMENT ON TABLE tasks IS 'work, 100% of it'")
        """),
    ("t3", "t2", """
        op.alter_column("tasks", "title", type_=sa.Text)
        op.create_check_constraint("ck_title", "tasks", "length(title) > 0")
        """),
]


def write_rich_history(project):
    project.write_revision("shared", "s1", None, """
        op.create_table("accounts",
            sa.Column("id", sa.Integer, primary_key=True))
        """)
    for revision, down, body in RICH_TENANT_HISTORY:
        project.write_revision("tenant", revision, down, body,
                               'raise NotImplementedError')


def test_replay_builds_the_same_schema_as_alembic(project, db):
    write_rich_history(project)
    create_schemas(db, "tenant_replayed", "tenant_alembic")

    project.run("upgrade", "--tenant", "tenant_replayed", check=0)
    project.write_ini(**{"tenantmigrate.replay": "false"})
    project.run("upgrade", "--tenant", "tenant_alembic", check=0)

    replayed = catalog_snapshot(db, "tenant_replayed")
    assert replayed["versions"] == ["t3"]
    assert len(replayed["constraints"]) >= 6 and replayed["indexes"]
    assert replayed == catalog_snapshot(db, "tenant_alembic")
    with db.connect() as connection:
        comment = connection.execute(sa.text(
            "SELECT obj_description('tenant_replayed.tasks'::regclass)"
        )).scalar()
    assert comment == "work, 100% of it"


def test_revisions_that_read_data_run_through_alembic_per_tenant(
        project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b")
    project.run("upgrade", check=0)
    with db.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO tenant_a.notes (title) VALUES ('a1'), ('a2')")
        connection.exec_driver_sql(
            "INSERT INTO tenant_b.notes (title) VALUES ('b1')")
    # Reads each tenant's own rows: cannot be rendered once for all.
    project.write_revision("tenant", "t3", "t2", """
        op.add_column("notes", sa.Column("position", sa.Integer))
        bind = op.get_bind()
        count = bind.execute(sa.text("SELECT count(*) FROM notes")).scalar()
        op.execute(sa.text("UPDATE notes SET position = :n").bindparams(
            n=count))
        """)

    project.run("upgrade", check=0)

    with db.connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT DISTINCT position FROM tenant_a.notes").scalar() == 2
        assert connection.exec_driver_sql(
            "SELECT DISTINCT position FROM tenant_b.notes").scalar() == 1
    assert version_of(db, "tenant_a") == ["t3"]


def test_a_tenant_that_moved_since_planning_is_planned_again(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b")
    project.run("upgrade", "shared", check=0)
    project.run("upgrade", "tenant@t1", check=0)
    migrator = project.migrator()
    # Planned from t1, but tenant_b moved to t2 meanwhile.
    project.run("upgrade", "--tenant", "tenant_b", check=0)
    planner = StepPlanner(migrator.script, "upgrade", "tenant@head")
    stale = {name: SchemaVersion(name, True, ("t1",), True)
             for name in ("tenant_a", "tenant_b")}
    plan = plan_branch(planner, "tenant", stale, ["tenant_a", "tenant_b"])

    report, aborted = execute_branch(migrator, plan, planner,
                                     migrator.programs, workers=2)
    migrator.close()

    statuses = {r.schema: r for r in report.results}
    assert aborted is None
    assert statuses["tenant_a"].status == "done"
    assert statuses["tenant_b"].status == "up-to-date"
    assert "another process" in statuses["tenant_b"].note
    assert version_of(db, "tenant_a") == ["t2"]
    assert version_of(db, "tenant_b") == ["t2"]
    # The guard ran before anything: tenant_b was not touched twice.
    assert columns_of(db, "tenant_b", "notes").count("pinned") == 1


def test_a_locked_tenant_is_retried_then_reported_and_others_go_on(
        project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b", "tenant_c")
    project.run("upgrade", "shared", check=0)
    project.run("upgrade", "tenant@t1", check=0)
    project.write_ini(**{"tenantmigrate.lock_timeout": "100ms",
                         "tenantmigrate.lock_retries": "2"})
    # An application transaction reading tenant_b.notes holds a lock that
    # ALTER TABLE must wait for.
    app = db.connect()
    app.begin()
    app.exec_driver_sql("SELECT * FROM tenant_b.notes")
    try:
        result = project.run("upgrade", "--json", check=1)
    finally:
        app.rollback()
        app.close()

    statuses = {s["schema"]: s for s in
                json.loads(result.stdout)["branches"][1]["schemas"]}
    assert statuses["tenant_a"]["status"] == "done"
    assert statuses["tenant_c"]["status"] == "done"
    assert statuses["tenant_b"]["status"] == "failed"
    assert "lock timeout" in statuses["tenant_b"]["error"]
    assert "after 3 attempts" in statuses["tenant_b"]["error"]
    assert statuses["tenant_b"]["failed_revision"] == "t2"
    assert version_of(db, "tenant_b") == ["t1"]
    assert "pinned" not in columns_of(db, "tenant_b", "notes")

    # Once the application lets go, a re-run completes it.
    project.run("upgrade", check=0)
    assert version_of(db, "tenant_b") == ["t2"]


def test_many_tenants_on_several_workers(project, db):
    project.write_standard_revisions()
    tenants = [f"tenant_{n:03d}" for n in range(40)]
    create_schemas(db, *tenants)

    result = project.run("upgrade", "--workers", "4", "--json", check=0)

    report = json.loads(result.stdout)["branches"][1]
    assert report["workers"] == 4
    assert report["counts"] == {"done": 40}
    for tenant in tenants:
        assert version_of(db, tenant) == ["t2"]
        assert tables_of(db, tenant) == ["alembic_version", "notes"]


def test_downgrade_replays_too(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b")
    project.run("upgrade", check=0)
    before = catalog_snapshot(db, "tenant_a")

    project.run("downgrade", "tenant@base", check=0)
    assert tables_of(db, "tenant_a") == ["alembic_version"]
    assert version_of(db, "tenant_a") == []

    project.run("upgrade", check=0)
    assert catalog_snapshot(db, "tenant_a") == before


def test_offline_sql_keeps_percent_signs(project):
    project.write_revision("tenant", "t1", None, """
        op.execute("UPDATE x SET y = 'a%b' WHERE z LIKE '%c'")
        """)
    result = project.run("upgrade", "base:t1", "--sql", "--tenant",
                         "tenant_a", check=0)
    assert "UPDATE x SET y = 'a%b' WHERE z LIKE '%c';" in result.stdout


def test_provisioning_replay_is_identical_to_a_full_alembic_replay(
        project, db):
    from pyramid_tenantmigrate.engine.schema import migrate_in_transaction

    write_rich_history(project)
    project.run("upgrade", "shared", check=0)
    create_schemas(db, "tenant_alembic")
    project.write_ini(**{"tenantmigrate.replay": "false"})
    project.run("upgrade", "--tenant", "tenant_alembic", check=0)

    migrator = project.migrator()
    for name in ("tenant_new1", "tenant_new2"):
        with migrator.connect() as connection:
            with connection.begin():
                connection.exec_driver_sql(f"CREATE SCHEMA {name}")
                migrate_in_transaction(migrator, connection, name,
                                       "tenant@head")
                # The caller's settings are back as they were.
                assert connection.exec_driver_sql(
                    "SHOW search_path").scalar() == '"$user", public'
                assert connection.exec_driver_sql(
                    "SHOW lock_timeout").scalar() == "0"
    # Captured once, kept for the next tenant.
    assert len(migrator.programs) == 1
    migrator.close()

    expected = catalog_snapshot(db, "tenant_alembic")
    assert catalog_snapshot(db, "tenant_new1") == expected
    assert catalog_snapshot(db, "tenant_new2") == expected
