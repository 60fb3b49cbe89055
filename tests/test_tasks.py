"""'tenant-migrate <ini> run': an app's function in each tenant, one
transaction each, never beside a migration of that tenant."""
import json
import threading

import sqlalchemy as sa

from pyramid_tenantmigrate.engine.sql import tenant_lock_sql

from .conftest import create_schemas, version_of

COUNTERS = """
    op.create_table("counters", sa.Column("n", sa.Integer, nullable=False))
    op.execute("INSERT INTO counters VALUES (0)")
    """


def counters(db, *tenants):
    with db.connect() as connection:
        return {t: connection.exec_driver_sql(
            f"SELECT n FROM {t}.counters").scalar() for t in tenants}


def at_head(project, db, *tenants):
    project.write_revision("tenant", "t1", None, COUNTERS)
    create_schemas(db, *tenants)
    project.cli("upgrade", check=0)


def statuses(result):
    report = json.loads(result.stdout)
    return {s["schema"]: s["status"] for s in report["branches"][0]["schemas"]}


def test_a_function_runs_once_in_each_tenant(project, db):
    at_head(project, db, "tenant_a", "tenant_b", "tenant_c")

    result = project.cli("run", "tests.apps:bump_counter", "5", "--json",
                         check=0)

    assert statuses(result) == dict.fromkeys(
        ("tenant_a", "tenant_b", "tenant_c"), "done")
    assert counters(db, "tenant_a", "tenant_b", "tenant_c") == dict.fromkeys(
        ("tenant_a", "tenant_b", "tenant_c"), 5)
    # The ORM session works on the tenant's tables; selection as upgrade.
    result = project.cli("run", "tests.apps:record_through_the_session",
                         "--tenant", "tenant_a", "--tenant", "tenant_c",
                         "--exclude-tenant", "tenant_c", check=0)
    assert "tenants: 1 selected, run tests.apps:record_through_the_session" \
        ": 1 done" in result.stdout
    assert counters(db, "tenant_a", "tenant_b") == {
        "tenant_a": 15, "tenant_b": 5}


def test_a_failing_tenant_is_rolled_back_and_the_others_go_on(project, db):
    at_head(project, db, "tenant_a", "tenant_b", "tenant_c")

    result = project.cli("run", "tests.apps:bump_then_fail_in_b", check=1)

    assert "FAILED tenant schema tenant_b" in result.stdout
    assert "RuntimeError: no counters for b" in result.stdout
    assert counters(db, "tenant_a", "tenant_b", "tenant_c") == {
        "tenant_a": 1, "tenant_b": 0, "tenant_c": 1}

    result = project.cli("run", "tests.apps:bump_then_fail_in_b",
                         "--fail-fast", "--workers", "1", "--json", check=1)
    assert statuses(result) == {"tenant_a": "done", "tenant_b": "failed",
                                "tenant_c": "not-run"}


def test_a_tenant_behind_the_head_is_reported_not_run(project, db):
    at_head(project, db, "tenant_a", "tenant_b")
    project.write_revision("tenant", "t2", "t1",
                           'op.add_column("counters", sa.Column("m", '
                           'sa.Integer))')
    project.cli("upgrade", "--tenant", "tenant_a", check=0)

    result = project.cli("run", "tests.apps:bump_counter", check=1)

    assert "BEHIND tenant schema tenant_b: at t1, the tenant head is t2: " \
        "run upgrade first" in result.stdout
    assert counters(db, "tenant_a", "tenant_b") == {
        "tenant_a": 1, "tenant_b": 0}


def test_the_function_waits_for_the_tenants_migration(project, db):
    """The tenant's lock is the one its migrations take: a tenant behind
    when run starts, migrated meanwhile under that lock, runs the function
    at the head, once."""
    at_head(project, db, "tenant_a")
    project.write_revision("tenant", "t2", "t1",
                           'op.add_column("counters", sa.Column("m", '
                           'sa.Integer))')
    holder = db.connect()
    holder.begin()
    holder.exec_driver_sql(tenant_lock_sql("tenant_a"))
    results = []
    runner = threading.Thread(target=lambda: results.append(
        project.cli("run", "tests.apps:bump_counter")))
    runner.start()
    with db.connect() as connection:
        for _ in range(600):  # the run waits on the tenant's lock
            if connection.execute(sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = "
                    "'advisory' AND NOT granted")).scalar():
                break
            threading.Event().wait(0.05)
        else:
            raise AssertionError("run never waited for the tenant's lock")
    # What a migration does under that lock:
    holder.exec_driver_sql(
        "ALTER TABLE tenant_a.counters ADD COLUMN m integer; "
        "UPDATE tenant_a.alembic_version SET version_num = 't2'")
    holder.commit()
    holder.close()
    runner.join(60)

    assert results[0].returncode == 0, results[0].stdout
    assert version_of(db, "tenant_a") == ["t2"]
    assert counters(db, "tenant_a") == {"tenant_a": 1}


def test_a_script_file_runs_in_each_tenant(project, db, tmp_path):
    at_head(project, db, "tenant_a", "tenant_b")
    script = tmp_path / "fix.py"
    script.write_text(
        "from sqlalchemy import text\n\n"
        "def run(task):\n"
        "    task.connection.execute(text('UPDATE counters SET n = n + 2'))\n"
        "\n"
        "def by_arg(task):\n"
        "    task.connection.execute(text('UPDATE counters SET n = n + '\n"
        "                                 + task.args[0]))\n")
    project.cli("run", str(script), check=0)
    project.cli("run", f"{script}:by_arg", "3", "--tenant", "tenant_b",
                check=0)
    assert counters(db, "tenant_a", "tenant_b") == {"tenant_a": 2,
                                                   "tenant_b": 5}
    for spec, message in ((f"{script}:nope", "defines no function nope"),
                          (str(tmp_path / "none.py"), "no such script")):
        result = project.cli("run", spec, check=2)
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    script.write_text("raise RuntimeError('broken at import')\n")
    result = project.cli("run", str(script), check=2)
    assert "broken at import" in result.stderr


def test_bad_usage_is_named(project, db):
    at_head(project, db, "tenant_a")
    for args, message in (
            ((), "run needs the function to call"),
            (("tests.apps:nowhere",), "cannot import tests.apps:nowhere"),
            (("tests.apps:not_a_function",), "is not a function"),
            (("tests.apps:bump_counter", "--tenant", "tenant_zz"),
             "unknown tenant(s): tenant_zz"),
            (("tests.apps:bump_counter", "--sql"), "unrecognized arguments")):
        result = project.cli("run", *args, check=2)
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert counters(db, "tenant_a") == {"tenant_a": 0}
