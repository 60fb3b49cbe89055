"""Operating in production: run records, retries, selection, sharding,
and faults (kill -9, a server restart, concurrent runs, hostile names)."""
import json
import signal
import time

import pytest
import sqlalchemy as sa

from pyramid_tenantmigrate.tenants import in_shard

from .conftest import columns_of, create_schemas, tables_of, version_of


def data_dependent_failure(project, db, tenants, failing):
    """Tenants at t2; t3 adds a unique title constraint that the data of
    ``failing`` violates."""
    project.write_standard_revisions()
    create_schemas(db, *tenants)
    project.run("upgrade", check=0)
    with db.begin() as connection:
        for tenant in failing:
            connection.exec_driver_sql(
                f"INSERT INTO {tenant}.notes (title) VALUES ('x'), ('x')")
    project.write_revision("tenant", "t3", "t2", """
        op.add_column("notes", sa.Column("slug", sa.Text))
        op.create_unique_constraint("uq_title", "notes", ["title"])
        """)


def test_every_run_is_recorded_and_reported(project, db, tmp_path):
    data_dependent_failure(project, db, ["tenant_a", "tenant_b"],
                           ["tenant_b"])
    report_path = tmp_path / "report.json"

    project.run("upgrade", "--report", str(report_path), check=1)

    report = json.loads(report_path.read_text())
    tenants = {s["schema"]: s for s in report["branches"][1]["schemas"]}
    assert tenants["tenant_b"]["status"] == "failed"
    assert tenants["tenant_b"]["failed_revision"] == "t3"
    assert tenants["tenant_a"]["from"] == ["t2"]
    assert tenants["tenant_a"]["to"] == ["t3"]
    with db.connect() as connection:
        row = connection.execute(sa.text(
            "SELECT id, status, counts, failures, finished IS NOT NULL "
            "FROM public.tenantmigrate_runs ORDER BY id DESC LIMIT 1")).one()
    assert row.id == report["run_id"]
    assert row.status == "failed"
    assert row.counts == {"shared:up-to-date": 1, "tenant:done": 1,
                          "tenant:failed": 1}
    assert [f["schema"] for f in row.failures] == ["tenant_b"]

    runs = project.run("runs", check=0).stdout
    assert f"#{row.id} " in runs and "upgrade" in runs and "failed" in runs
    assert "failed tenant_b" in runs
    listed = json.loads(project.run("runs", "--json", check=0).stdout)
    assert listed[0]["id"] == row.id and listed[0]["status"] == "failed"


def test_retry_failed_takes_exactly_the_tenants_that_failed(project, db):
    data_dependent_failure(project, db, ["tenant_a", "tenant_b", "tenant_c"],
                           ["tenant_b", "tenant_c"])
    project.run("upgrade", check=1)
    with db.begin() as connection:
        connection.exec_driver_sql(
            "DELETE FROM tenant_b.notes WHERE ctid IN "
            "(SELECT ctid FROM tenant_b.notes LIMIT 1)")
    # Someone moved tenant_a back meanwhile: --retry-failed leaves it alone.
    project.run("downgrade", "tenant@t2", "--tenant", "tenant_a", check=0)

    result = project.run("upgrade", "--retry-failed", "--json", check=1)

    schemas = {s["schema"]: s["status"] for s in
               json.loads(result.stdout)["branches"][1]["schemas"]}
    assert schemas == {"tenant_b": "done", "tenant_c": "failed"}
    assert version_of(db, "tenant_a") == ["t2"]
    assert version_of(db, "tenant_b") == ["t3"]

    with db.begin() as connection:
        connection.exec_driver_sql("TRUNCATE tenant_c.notes")
    project.run("upgrade", "--retry-failed", check=0)
    result = project.run("upgrade", "--retry-failed", check=0)
    assert "nothing to retry" in result.stdout


def test_tenants_from_a_file(project, db, tmp_path):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b", "tenant_c")
    names = tmp_path / "tenants.txt"
    names.write_text("# canary tenants\ntenant_a\n\ntenant_c\n")

    project.run("upgrade", "--tenants-from", str(names), check=0)

    assert version_of(db, "tenant_a") == ["t2"]
    assert version_of(db, "tenant_b") is None
    assert version_of(db, "tenant_c") == ["t2"]
    result = project.run("upgrade", "--tenants-from",
                         str(tmp_path / "nope.txt"), check=2)
    assert "cannot read --tenants-from" in result.stderr


def test_shards_split_tenants_stably_and_run_side_by_side(project, db):
    from pyramid_tenantmigrate.locking import RunLock

    project.write_standard_revisions()
    tenants = [f"tenant_{n:02d}" for n in range(24)]
    create_schemas(db, *tenants)
    shares = [{t for t in tenants if in_shard(t, (i, 3))} for i in (1, 2, 3)]
    assert set().union(*shares) == set(tenants)
    assert sum(len(share) for share in shares) == len(tenants)

    # The shared schema first; a shard refuses to run before it.
    result = project.run("upgrade", "--shard", "1/3", check=2)
    assert "upgrade shared" in result.stderr
    project.run("upgrade", "shared", check=0)

    # Shard 1 is busy elsewhere; shards 2 and 3 are not held up by it.
    migrator = project.migrator()
    with RunLock(migrator, "upgrade", shard=(1, 3)):
        project.run("upgrade", "--shard", "1/3", check=1)
        for index in (2, 3):
            result = project.run("upgrade", "--shard", f"{index}/3",
                                 "--json", check=0)
            done = {s["schema"] for s in
                    json.loads(result.stdout)["branches"][0]["schemas"]}
            assert done == shares[index - 1]
    migrator.close()
    assert all(version_of(db, t) is None for t in shares[0])
    project.run("upgrade", "--shard", "1/3", check=0)
    assert all(version_of(db, t) == ["t2"] for t in tenants)
    project.run("upgrade", "--shard", "4/3", check=2)


def slow_history(project, db, tenant_count, sleep="0.02"):
    """t3 takes a while per tenant, so a run can be interrupted."""
    project.write_standard_revisions()
    tenants = [f"tenant_{n:03d}" for n in range(tenant_count)]
    create_schemas(db, *tenants)
    project.run("upgrade", check=0)
    project.write_revision("tenant", "t3", "t2", f"""
        op.add_column("notes", sa.Column("slug", sa.Text))
        op.execute("SELECT pg_sleep({sleep})")
        op.create_index("ix_notes_slug", "notes", ["slug"])
        """)
    return tenants


def count_at(db, tenants, revision):
    return sum(1 for t in tenants if version_of(db, t) == [revision])


def wait_for(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def wait_for_idle_database(db):
    """Backends of a killed client may still be finishing their query."""
    def idle():
        with db.connect() as connection:
            return connection.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                "current_database() AND pid <> pg_backend_pid()")
            ).scalar() == 0
    assert wait_for(idle)


def assert_each_tenant_is_whole(db, tenants):
    """Old revision and old tables, or new revision and new tables."""
    for tenant in tenants:
        version = version_of(db, tenant)
        columns = columns_of(db, tenant, "notes")
        if version == ["t3"]:
            assert "slug" in columns, tenant
        else:
            assert version == ["t2"], (tenant, version)
            assert "slug" not in columns, tenant


def test_kill_9_mid_run_leaves_every_tenant_whole_and_a_rerun_finishes(
        project, db):
    tenants = slow_history(project, db, 200)
    process = project.start("upgrade", "--workers", "2")
    try:
        assert wait_for(lambda: count_at(db, tenants, "t3") >= 20)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    wait_for_idle_database(db)

    assert count_at(db, tenants, "t3") < len(tenants)
    assert_each_tenant_is_whole(db, tenants)
    runs = project.run("runs", check=0).stdout.splitlines()
    assert "interrupted" in runs[0]

    project.run("upgrade", check=0)
    assert count_at(db, tenants, "t3") == len(tenants)
    assert_each_tenant_is_whole(db, tenants)


def test_server_restart_mid_run_is_reported_and_a_rerun_finishes(
        project, db, test_server):
    if test_server.restart is None:
        pytest.skip("this server cannot be restarted by the suite (set "
                    "TENANTMIGRATE_TEST_RESTART)")
    tenants = slow_history(project, db, 120, sleep="0.05")
    process = project.start("upgrade", "--workers", "2", "--json")
    assert wait_for(lambda: count_at(db, tenants, "t3") >= 10)
    test_server.restart()
    stdout, stderr = process.communicate(timeout=300)

    assert process.returncode == 1, stderr
    assert stdout, stderr
    report = json.loads(stdout)
    assert report["ok"] is False
    failed = [s for s in report["branches"][1]["schemas"]
              if s["status"] in ("failed", "not-run")]
    assert failed
    assert any("connection" in (s["error"] or "") or "went away" in (
        s["error"] or "") or "terminat" in (s["error"] or "")
        for s in failed), failed[:3]
    assert_each_tenant_is_whole(db, tenants)

    project.run("upgrade", check=0)
    assert count_at(db, tenants, "t3") == len(tenants)


def test_two_upgrades_started_together_never_both_run(project, db):
    from pyramid_tenantmigrate.locking import RunLock

    tenants = slow_history(project, db, 30)
    # A run holds the lock (this test, deterministically): another one
    # exits at once naming it, having changed nothing.
    migrator = project.migrator()
    with RunLock(migrator, "upgrade"):
        loser = project.run_process("upgrade", "--workers", "1", check=1)
    migrator.close()
    assert "another migration run holds the lock" in loser.stderr
    assert "tenant-migrate upgrade pid=" in loser.stderr
    assert count_at(db, tenants, "t3") == 0
    project.run("upgrade", check=0)
    assert count_at(db, tenants, "t3") == len(tenants)

    # Waiting instead: both succeed, and the work is done exactly once.
    project.write_revision("tenant", "t4", "t3", """
        op.execute("SELECT pg_sleep(0.02)")
        op.add_column("notes", sa.Column("extra", sa.Text))
        """)
    first = project.start("upgrade", "--wait", "120", "--json")
    second = project.start("upgrade", "--wait", "120", "--json")
    reports = []
    for process in (first, second):
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        reports.append(json.loads(stdout))
    done = sum(report["branches"][1]["counts"].get("done", 0)
               for report in reports)
    assert done == len(tenants)
    assert count_at(db, tenants, "t4") == len(tenants)


HOSTILE = [
    'x"; DROP TABLE public.canary; --',
    "x'; DROP TABLE public.canary; --",
    "tenant_a; DROP TABLE public.canary",
    'tenant_a"',
    "pg_temp",
    "pg_toast",
    "pg_catalog",
    "information_schema",
    "public",
    "",
    " ",
    "a" * 64,
    "Tenant",
    "tenant-a",
    "tenant a",
    "tenant.a",
    "ténant",
    "租户",
    "tenant\ttab",
    "tenant\nnewline",
    "tenant/*comment*/",
    "$1",
    "1tenant",
    "tenant%s",
    "tenant\\",
]


def test_wrong_credentials_are_a_clear_failure(project, db):
    project.write_standard_revisions()
    url = sa.engine.make_url(project.database_url).set(
        username="no_such_role")
    project.write_ini(**{"sqlalchemy.url":
                         url.render_as_string(hide_password=False)})
    result = project.run("upgrade", check=1)
    assert "cannot connect to the database" in result.stderr
    assert "no_such_role" in result.stderr
    assert version_of(db, "public") is None


def hostile_source(connection):
    return ["tenant_ok", *HOSTILE]


def catalog_fingerprint(db):
    with db.connect() as connection:
        return sorted(connection.execute(sa.text(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname NOT IN "
            "('pg_catalog', 'information_schema', 'pg_toast')")).all())


@pytest.mark.parametrize("entry", ["query", "callable", "command_line",
                                   "create_tenant"])
def test_hostile_names_through_every_entry_point(project, db, tmp_path,
                                                 entry):
    assert len(HOSTILE) >= 20
    project.write_standard_revisions()
    create_schemas(db, "tenant_ok")
    project.run("upgrade", check=0)
    with db.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE public.canary (id int)")
    before = catalog_fingerprint(db)

    if entry == "query":
        values = ", ".join("('" + n.replace("'", "''") + "')"
                           for n in ["tenant_ok", *HOSTILE])
        project.write_ini(**{
            "tenantmigrate.tenant_schema_prefix": None,
            "tenantmigrate.tenant_schemas_query":
                f"SELECT n FROM (VALUES {values}) v(n)".replace("\n", "\\n"),
        })
        result = project.run("upgrade", "--json", check=1)
        statuses = {s["schema"]: s["status"] for s in
                    json.loads(result.stdout)["branches"][1]["schemas"]}
    elif entry == "callable":
        project.write_ini(**{
            "tenantmigrate.tenant_schema_prefix": None,
            "tenantmigrate.tenant_source":
                "tests.test_operations:hostile_source",
        })
        result = project.run("upgrade", "--json", check=1)
        statuses = {s["schema"]: s["status"] for s in
                    json.loads(result.stdout)["branches"][1]["schemas"]}
    elif entry == "create_tenant":
        for name in HOSTILE:
            result = project.run("create-tenant", name, check=2)
            assert "invalid tenant schema name" in result.stderr, name
        statuses = None
    else:
        for name in HOSTILE:
            result = project.run("upgrade", "--tenant", name, check=2)
            assert "invalid tenant name" in result.stderr, name
        names = tmp_path / "hostile.txt"
        names.write_text("\n".join(n for n in HOSTILE if "\n" not in n))
        result = project.run("upgrade", "--tenants-from", str(names),
                             check=2)
        assert "invalid tenant name" in result.stderr
        statuses = None

    if statuses is not None:
        assert statuses.pop("tenant_ok") == "up-to-date"
        listed = {n for n in HOSTILE
                  if entry == "callable" or "\n" not in n}
        for name in listed:
            if name in statuses:
                assert statuses[name] == "rejected", name
    # Nothing but the intended statements reached the server: the catalog
    # is exactly as it was, the canary included.
    assert catalog_fingerprint(db) == before
    assert tables_of(db, "tenant_ok") == ["alembic_version", "notes"]
