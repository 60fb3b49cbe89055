"""Exactly once, or reported: every tenant step runs once whatever else
runs, and ``exit 0`` means every tenant is at the target.

Real processes on a real server: overlapping runs and shards of different
N, the startup hook, a run losing its lock, sign-ups from app code one
revision older during a deploy, a killed run retried. Each asserts on the
catalog and on data: a counter that a tenant revision increments must read
1 in every tenant.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa

from .conftest import create_schemas, version_of
from .test_operations import wait_for, wait_for_idle_database

COUNTERS = """
    op.create_table("counters", sa.Column("n", sa.Integer, nullable=False))
    op.execute("INSERT INTO counters VALUES (0)")
    op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True))
    """
#: The step that must run once: replayed (op.execute only) ...
INCREMENT = """
    op.execute("UPDATE counters SET n = n + 1")
    op.add_column("notes", sa.Column("slug", sa.Text))
    op.execute("SELECT pg_sleep({sleep})")
    """
#: ... or through Alembic in each tenant (it reads).
INCREMENT_READING = """
    n = op.get_bind().execute(sa.text("SELECT n FROM counters")).scalar()
    op.execute(sa.text("UPDATE counters SET n = :n").bindparams(n=n + 1))
    op.add_column("notes", sa.Column("slug", sa.Text))
    op.execute("SELECT pg_sleep({sleep})")
    """


def counter_history(project, db, count, sleep="0.01", body=INCREMENT,
                    prefix="tenant_"):
    """``count`` tenants at t1; t2 increments each tenant's counter."""
    project.write_revision("shared", "s1", None, "pass")
    project.write_revision("tenant", "t1", None, COUNTERS)
    tenants = [f"{prefix}{n:03d}" for n in range(count)]
    create_schemas(db, *tenants)
    project.cli("upgrade", check=0)
    project.write_revision("tenant", "t2", "t1", body.format(sleep=sleep))
    return tenants


def counters(db, tenants):
    """``{n: how many tenants}``, and the tenants not at t2."""
    values, behind = {}, []
    with db.connect() as connection:
        for tenant in tenants:
            n = connection.exec_driver_sql(
                f"SELECT n FROM {tenant}.counters").scalar()
            values[n] = values.get(n, 0) + 1
    for tenant in tenants:
        if version_of(db, tenant) != ["t2"]:
            behind.append(tenant)
    return values, behind


def tenant_schemas(db, prefix="tenant_"):
    with db.connect() as connection:
        return connection.execute(sa.text(
            "SELECT nspname FROM pg_namespace WHERE "
            "left(nspname, length(:p)) = :p ORDER BY 1"),
            {"p": prefix}).scalars().all()


def finish(process, timeout=300):
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


LOAD_APP = ("import sys; from pyramid.paster import get_app; "
            "get_app(sys.argv[1])")


def start_app(project):
    """An app process whose startup hook runs (get_app passes no
    __script__, as gunicorn and uWSGI)."""
    return subprocess.Popen(
        [sys.executable, "-c", LOAD_APP, project.ini],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=project.root, env=project.env())


@pytest.mark.parametrize("body", [INCREMENT, INCREMENT_READING],
                         ids=["replayed", "through-alembic"])
def test_overlapping_runs_shards_and_the_startup_hook_run_each_step_once(
        project, db, body):
    project.app_factory = "call:tests.apps:main"
    tenants = counter_history(project, db, 120, body=body)
    project.write_ini(**{"tenantmigrate.startup": "all",
                         "tenantmigrate.startup_lock_wait": "300"})
    runs = [project.start("upgrade", "--wait", "300", "--json"),
            project.start("upgrade", "--shard", "1/2", "--wait", "300",
                          "--json"),
            project.start("upgrade", "--shard", "2/2", "--wait", "300",
                          "--json"),
            project.start("upgrade", "--shard", "1/3", "--wait", "300",
                          "--json"),
            project.start("upgrade", "tenant@head", "--shard", "3/3",
                          "--wait", "300", "--json"),
            start_app(project)]

    outcomes = [finish(process) for process in runs]

    for code, stdout, stderr in outcomes:
        assert code == 0, stdout + stderr
    values, behind = counters(db, tenants)
    assert values == {1: len(tenants)} and not behind
    done = 0
    for _, stdout, _ in outcomes[:5]:
        report = json.loads(stdout)
        tenant_branch = [b for b in report["branches"]
                         if b["branch"] == "tenant"][0]
        done += tenant_branch["counts"].get("done", 0)
    # The app process migrated the rest, if anything was left.
    assert done <= len(tenants)


def lock_backend(db):
    with db.connect() as connection:
        return connection.execute(sa.text(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE "
            "'tenant-migrate upgrade pid=%' AND datname = current_database()"
        )).scalar()


def test_a_run_that_loses_its_lock_stops_and_says_so(project, db):
    tenants = counter_history(project, db, 80, sleep="0.05")
    first = project.start("upgrade", "--workers", "2", "--json")
    assert wait_for(lambda: counters(db, tenants)[0].get(1, 0) >= 6)
    pid = lock_backend(db)
    with db.connect() as connection:
        connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"),
                           {"pid": pid})
    second = project.start("upgrade", "--wait", "120", "--json")

    code, stdout, stderr = finish(first)
    assert code == 1, stdout + stderr
    report = json.loads(stdout)
    assert "run lock was lost" in report["aborted"]
    assert "lock was lost" in stderr + stdout
    code, stdout, stderr = finish(second)
    assert code == 0, stdout + stderr

    values, behind = counters(db, tenants)
    assert values == {1: len(tenants)} and not behind
    wait_for_idle_database(db)
    with db.connect() as connection:
        statuses = connection.exec_driver_sql(
            "SELECT status FROM public.tenantmigrate_runs ORDER BY id"
        ).scalars().all()
    assert "running" not in statuses
    assert statuses[-2:] == ["aborted", "ok"]


def test_idle_session_timeout_does_not_take_the_run_lock(
        project, db, server_version):
    if int(server_version) < 140000:
        pytest.skip("idle_session_timeout is PostgreSQL 14+")
    tenants = counter_history(project, db, 30, sleep="0.1")
    database = db.url.database
    with db.connect() as connection:
        connection.exec_driver_sql(
            f'ALTER DATABASE "{database}" SET idle_session_timeout = 300')
        connection.commit()
    db.dispose()
    try:
        first = project.start("upgrade", "--workers", "1", "--json")
        assert wait_for(lambda: counters(db, tenants)[0].get(1, 0) >= 8)
        # Well past the timeout, the lock is still held.
        second = project.run("upgrade", check=1)
        assert "holds the lock" in second.stderr
        code, stdout, stderr = finish(first)
        assert code == 0, stdout + stderr
    finally:
        with db.connect() as connection:
            connection.exec_driver_sql(
                f'ALTER DATABASE "{database}" RESET idle_session_timeout')
            connection.commit()
    values, behind = counters(db, tenants)
    assert values == {1: len(tenants)} and not behind


def test_retry_failed_after_kill_9_takes_the_unfinished_tenants(
        project, db):
    import signal

    tenants = counter_history(project, db, 120, sleep="0.03")
    process = project.start("upgrade", "--workers", "2")
    try:
        assert wait_for(lambda: counters(db, tenants)[0].get(1, 0) >= 10)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    wait_for_idle_database(db)
    values, behind = counters(db, tenants)
    assert behind and values == {1: len(tenants) - len(behind),
                                 0: len(behind)}

    runs = project.cli("runs", check=0).stdout.splitlines()
    assert "interrupted" in runs[0]
    assert f"{len(behind)} of its tenants are not at its target" in (
        project.cli("runs", "--json", check=0).stdout)

    result = project.cli("upgrade", "--retry-failed", "--json", check=0)
    report = json.loads(result.stdout)
    tenant_branch = [b for b in report["branches"]
                     if b["branch"] == "tenant"][0]
    assert tenant_branch["counts"] == {"done": len(behind)}
    values, behind = counters(db, tenants)
    assert values == {1: len(tenants)} and not behind


OLD_APP = '''
import os, sys, time
from pyramid_tenantmigrate import TenantMigrator, create_tenant
from pyramid_tenantmigrate.errors import ProvisioningFailed
settings = {
    "sqlalchemy.url": sys.argv[1],
    "tenantmigrate.script_location": sys.argv[2],
    "tenantmigrate.tenant_schema_prefix": "tenant_",
    "tenantmigrate.spare_schemas": sys.argv[3],
}
stop, prefix = sys.argv[4], sys.argv[5]
migrator = TenantMigrator.from_settings(settings)
n = 0
while not os.path.exists(stop):
    create_tenant(migrator, "%s%04d" % (prefix, n))
    n += 1
    time.sleep(0.01)
print(n)
'''


def start_old_app(project, tmp_path, spares, stop, prefix="tenant_s"):
    """An app process running the old code: the migrations folder as it
    was before t2, signing up a tenant every few milliseconds until
    ``stop`` exists."""
    old = tmp_path / "old_migrations"
    if not old.exists():
        shutil.copytree(project.migrations, old)
        os.remove(old / "versions" / "tenant" / "t2.py")
    script = tmp_path / "old_app.py"
    script.write_text(textwrap.dedent(OLD_APP))
    if stop.exists():
        stop.unlink()
    # Its log (a warning per tenant created behind the head) goes to a
    # file: a full pipe would stall it in the middle of a sign-up.
    log = open(tmp_path / "old_app.log", "a")
    return subprocess.Popen(
        [sys.executable, str(script), project.database_url, str(old),
         spares, str(stop), prefix], stdout=subprocess.PIPE, stderr=log,
        text=True, cwd=project.root, env=project.env())


@pytest.mark.parametrize("spares", ["0", "5"])
def test_sign_ups_from_old_code_during_a_deploy_end_at_the_head(
        project, db, tmp_path, spares):
    """The deploy sequence of the README: upgrade while the old code still
    serves sign-ups, then the new code starts (its startup hook)."""
    project.app_factory = "call:tests.apps:main"
    project.write_ini(**{"tenantmigrate.spare_schemas": spares})
    tenants = counter_history(project, db, 60, sleep="0.02")
    stop = tmp_path / "stop"

    # Sign-ups go on during the whole run.
    app = start_old_app(project, tmp_path, spares, stop)
    assert wait_for(lambda: len(tenant_schemas(db)) >= 65)
    upgrade = project.start("upgrade", "--workers", "2", "--json")
    assert wait_for(lambda: counters(db, tenants)[0].get(1, 0) >= 30)
    stop.write_text("")
    code, signed_up, _ = finish(app)
    assert code == 0, (tmp_path / "old_app.log").read_text()[-2000:]
    code, stdout, stderr = finish(upgrade)
    assert code == 0, stdout + stderr

    # Exit 0: every tenant there when the run ended is at the head, and
    # was in the run's report.
    everyone = tenant_schemas(db)
    assert len(everyone) > 65
    values, behind = counters(db, everyone)
    assert values == {1: len(everyone)} and not behind, (values, behind)
    report = json.loads(stdout)
    tenant_branch = [b for b in report["branches"]
                     if b["branch"] == "tenant"][0]
    assert {s["schema"] for s in tenant_branch["schemas"]} == set(everyone)

    # After the run the old code still signs up a while; then the new
    # code starts, and its startup hook catches up.
    app = start_old_app(project, tmp_path, spares, stop, prefix="tenant_p")
    assert wait_for(lambda: len(tenant_schemas(db)) >= len(everyone) + 5)
    stop.write_text("")
    code, _, _ = finish(app)
    assert code == 0, (tmp_path / "old_app.log").read_text()[-2000:]
    project.write_ini(**{"tenantmigrate.startup": "all",
                         "tenantmigrate.spare_schemas": spares})
    code, stdout, stderr = finish(start_app(project))
    assert code == 0, stderr

    everyone = tenant_schemas(db)
    values, behind = counters(db, everyone)
    assert values == {1: len(everyone)} and not behind, (values, behind)
    current = json.loads(project.cli("current", "--json", check=0).stdout)
    assert current["behind"] == 0
