"""upgrade: shared once to public, tenant branch to every tenant schema."""
import json

import sqlalchemy as sa

from pyramid_tenantmigrate import commands

from .conftest import (
    columns_of,
    create_schemas,
    schema_exists,
    tables_of,
    version_of,
)


def test_upgrade_applies_shared_once_and_tenant_branch_to_each_tenant(
        project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b")

    result = project.run("upgrade", check=0)

    assert "shared (public): upgrade base -> s1" in result.stdout
    assert "2 done" in result.stdout
    # public holds the shared table and only the shared branch's version.
    assert tables_of(db, "public") == ["accounts", "alembic_version",
                                      "tenantmigrate_runs",
                                      "tenantmigrate_state"]
    assert version_of(db, "public") == ["s1"]
    for tenant in ("tenant_a", "tenant_b"):
        # Tenant ops written without a schema landed in the tenant...
        assert tables_of(db, tenant) == ["alembic_version", "notes"]
        assert columns_of(db, tenant, "notes") == [
            "id", "account_id", "title", "pinned"]
        # ...each tenant keeps its own version, of the tenant branch only.
        assert version_of(db, tenant) == ["t2"]
    # The reference to the shared table names the shared schema.
    with db.connect() as connection:
        referenced = connection.execute(sa.text("""
            SELECT confrelid::regclass::text FROM pg_constraint
            WHERE contype = 'f' AND conrelid = 'tenant_a.notes'::regclass
        """)).scalar()
    assert referenced == "accounts"  # public is on the search_path
    with db.connect() as connection:
        namespace = connection.execute(sa.text("""
            SELECT n.nspname FROM pg_constraint c
            JOIN pg_class r ON r.oid = c.confrelid
            JOIN pg_namespace n ON n.oid = r.relnamespace
            WHERE c.contype = 'f' AND c.conrelid = 'tenant_a.notes'::regclass
        """)).scalar()
    assert namespace == "public"


def test_fresh_tenant_never_reads_or_writes_public_version_table(
        project, db):
    project.write_standard_revisions()
    project.run("upgrade", check=0)
    assert version_of(db, "public") == ["s1"]

    # A tenant created later has no version table; public has one, and a
    # search_path including public would make Alembic see it.
    create_schemas(db, "tenant_late")
    project.run("upgrade", check=0)

    assert version_of(db, "public") == ["s1"]
    assert version_of(db, "tenant_late") == ["t2"]
    assert "notes" in tables_of(db, "tenant_late")
    assert "notes" not in tables_of(db, "public")


def test_what_is_reported_as_applied_is_committed(project, db):
    # The gist under SQLAlchemy 2 logs "Running upgrade" and rolls back.
    project.write_standard_revisions()
    create_schemas(db, "tenant_a")
    migrator = project.migrator()
    report = commands.upgrade(migrator)
    migrator.close()

    assert report.ok
    (tenant_result,) = report.branches[1].results
    assert tenant_result.status == "done"
    assert tenant_result.revisions == ("t1", "t2")
    # A separate connection sees it.
    assert version_of(db, "tenant_a") == ["t2"]
    assert "notes" in tables_of(db, "tenant_a")


def test_failing_revision_in_one_tenant_leaves_it_untouched_and_others_go_on(
        project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b", "tenant_c")
    project.run("upgrade", check=0)
    # Data that makes the next revision fail in tenant_b only.
    with db.begin() as connection:
        for tenant in ("tenant_a", "tenant_b", "tenant_c"):
            connection.exec_driver_sql(
                f"INSERT INTO {tenant}.notes (title) VALUES ('x')")
        connection.exec_driver_sql(
            "INSERT INTO tenant_b.notes (title) VALUES ('x')")
    project.write_revision("tenant", "t3", "t2", """
        op.add_column("notes", sa.Column("slug", sa.Text))
        op.create_unique_constraint("uq_notes_title", "notes", ["title"])
        """, message="unique note titles")

    result = project.run("upgrade", "--json", check=1)

    report = json.loads(result.stdout)
    assert report["ok"] is False
    tenants = {s["schema"]: s for s in report["branches"][1]["schemas"]}
    assert tenants["tenant_b"]["status"] == "failed"
    assert tenants["tenant_b"]["failed_revision"] == "t3"
    assert "uq_notes_title" in tenants["tenant_b"]["error"]
    assert tenants["tenant_a"]["status"] == "done"
    assert tenants["tenant_c"]["status"] == "done"
    assert "FAILED tenant tenant_b at revision t3" in result.stderr
    # The failed tenant is exactly where it was: no half-added column.
    assert version_of(db, "tenant_b") == ["t2"]
    assert "slug" not in columns_of(db, "tenant_b", "notes")
    # The others moved on, for real.
    assert version_of(db, "tenant_a") == ["t3"]
    assert "slug" in columns_of(db, "tenant_c", "notes")

    # Human output names the tenant, the revision and what to do next.
    text = project.run("upgrade", check=1)
    assert "FAILED tenant schema tenant_b at revision t3" in text.stdout
    assert "--tenant tenant_b" in text.stdout
    assert "still at its previous revision" in text.stdout


def test_fail_fast_stops_at_first_failure(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b", "tenant_c")
    project.run("upgrade", check=0)
    project.write_revision("tenant", "t3", "t2", """
        op.execute("SELECT 1/0")
        """)

    result = project.run("upgrade", "--fail-fast", "--workers", "1",
                         "--json", check=1)

    statuses = {s["schema"]: s["status"]
                for s in json.loads(result.stdout)["branches"][1]["schemas"]}
    assert statuses == {"tenant_a": "failed", "tenant_b": "not-run",
                        "tenant_c": "not-run"}
    for tenant in ("tenant_a", "tenant_b", "tenant_c"):
        assert version_of(db, tenant) == ["t2"]


def test_shared_failure_stops_before_any_tenant(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a")
    project.write_revision("shared", "s2", "s1", 'op.execute("SELECT 1/0")')

    result = project.run("upgrade", check=1)

    assert "FAILED shared schema public at revision s2" in result.stdout
    assert "no tenant was migrated" in result.stdout
    assert version_of(db, "public") is None  # rolled back: s1 and s2
    assert version_of(db, "tenant_a") is None


def test_tenants_at_target_are_skipped_without_entering_alembic(
        project, db, tmp_path):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b")
    project.run("upgrade", check=0)
    # env.py leaves a mark each time Alembic's environment is entered.
    marker = tmp_path / "env-ran"
    env_py = project.migrations + "/env.py"
    with open(env_py) as f:
        source = f.read()
    with open(env_py, "w") as f:
        f.write(source.replace(
            "run_env(context)",
            f"open({str(marker)!r}, 'a').write('x')\nrun_env(context)"))

    result = project.run("upgrade", check=0)

    assert "2 up-to-date" in result.stdout
    assert not marker.exists()


def test_target_selection_branch_revision_and_tenants(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b", "tenant_c")

    project.run("upgrade", "shared@head", check=0)
    assert version_of(db, "public") == ["s1"]
    assert version_of(db, "tenant_a") is None

    project.run("upgrade", "tenant@t1", "--exclude-tenant", "tenant_c",
                check=0)
    assert version_of(db, "tenant_a") == ["t1"]
    assert version_of(db, "tenant_b") == ["t1"]
    assert version_of(db, "tenant_c") is None

    project.run("upgrade", "t2", "--tenant", "tenant_b", check=0)
    assert version_of(db, "tenant_a") == ["t1"]
    assert version_of(db, "tenant_b") == ["t2"]

    project.run("upgrade", "tenant@+1", "--tenant", "tenant_a", check=0)
    assert version_of(db, "tenant_a") == ["t2"]


def test_downgrade_runs_tenants_then_shared(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b")
    project.run("upgrade", check=0)

    project.run("downgrade", "tenant@-1", "--tenant", "tenant_a", check=0)
    assert version_of(db, "tenant_a") == ["t1"]
    assert "pinned" not in columns_of(db, "tenant_a", "notes")
    assert version_of(db, "tenant_b") == ["t2"]

    result = project.run("downgrade", "base", check=0)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tenants:") and lines[1].startswith("shared")
    assert tables_of(db, "tenant_a") == ["alembic_version"]
    assert version_of(db, "tenant_b") == []
    assert "accounts" not in tables_of(db, "public")


def test_stamp_sets_versions_without_running_migrations(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b")

    project.run("stamp", "tenant@t1", "--tenant", "tenant_a", check=0)

    assert version_of(db, "tenant_a") == ["t1"]
    assert tables_of(db, "tenant_a") == ["alembic_version"]
    assert version_of(db, "tenant_b") is None
    assert version_of(db, "public") is None


def test_missing_schema_is_reported_or_created_on_request(project, db):
    project.write_standard_revisions()
    project.write_ini(**{
        "tenantmigrate.tenant_schema_prefix": None,
        "tenantmigrate.tenant_schemas_query":
            "SELECT name FROM (VALUES ('tenant_a'), ('tenant_gone')) v(name)",
    })
    create_schemas(db, "tenant_a")

    result = project.run("upgrade", check=1)
    assert "tenant_gone" in result.stdout and "does not exist" in result.stdout
    assert not schema_exists(db, "tenant_gone")
    assert version_of(db, "tenant_a") == ["t2"]

    project.run("upgrade", "--create-missing", check=0)
    assert version_of(db, "tenant_gone") == ["t2"]


def test_zero_tenants_is_fine(project, db):
    project.write_standard_revisions()
    result = project.run("upgrade", check=0)
    assert "0 selected" in result.stdout
    assert version_of(db, "public") == ["s1"]


def test_a_second_run_exits_naming_the_lock_holder_or_waits(project, db):
    from pyramid_tenantmigrate.locking import RunLock

    project.write_standard_revisions()
    create_schemas(db, "tenant_a")
    migrator = project.migrator()
    with RunLock(migrator, "upgrade"):
        result = project.run("upgrade", check=1)
        assert "another migration run holds the lock" in result.stderr
        assert "tenant-migrate upgrade pid=" in result.stderr
        assert version_of(db, "public") is None
        result = project.run("upgrade", "--wait", "0.5", check=1)
        assert "after waiting 0.5s" in result.stderr
    migrator.close()
    # Released: the next run goes through.
    project.run("upgrade", "--wait", "5", check=0)
    assert version_of(db, "tenant_a") == ["t2"]
