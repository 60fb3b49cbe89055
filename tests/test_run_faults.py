"""Reports that match the database, and runs that go on with what they
have: unreadable tenants, connection limits, a connection lost while
committing, a run record that could not be written, and misuse said
plainly."""
import json

import sqlalchemy as sa

from pyramid_tenantmigrate import TenantMigrator, create_tenant

from .conftest import create_schemas, version_of
from .faults import CommitCutter
from .test_exactly_once import counter_history, counters
from .test_operations import wait_for


def tenant_branch(stdout):
    report = json.loads(stdout)
    return [b for b in report["branches"] if b["branch"] == "tenant"][0]


def test_an_unreadable_tenant_is_named_with_the_grant_and_others_go_on(
        project, roles, db):
    deploy_url = roles.url(roles.deploy)
    project.settings["sqlalchemy.url"] = deploy_url
    project.write_ini()
    project.write_standard_revisions()
    deploy = sa.create_engine(deploy_url)
    create_schemas(deploy, "tenant_a", "tenant_b")
    project.cli("upgrade", check=0)
    with deploy.begin() as connection:
        connection.exec_driver_sql(
            f'GRANT REFERENCES ON public.accounts TO "{roles.app}"')
    deploy.dispose()
    # The web app, connected as a least-privilege role, signs a tenant up.
    app = TenantMigrator.from_settings(dict(project.settings, **{
        "sqlalchemy.url": roles.url(roles.app)}))
    create_tenant(app, "tenant_app")
    app.close()
    project.write_revision("tenant", "t3", "t2", """
        op.add_column("notes", sa.Column("slug", sa.Text))
        """)

    result = project.cli("upgrade", "--json", check=1)

    schemas = {s["schema"]: s for s in tenant_branch(result.stdout)[
        "schemas"]}
    assert schemas["tenant_a"]["status"] == "done"
    assert schemas["tenant_b"]["status"] == "done"
    unreadable = schemas["tenant_app"]
    assert unreadable["status"] == "unreadable"
    assert f"GRANT {roles.app} TO {roles.deploy}" in unreadable["error"]
    current = project.cli("current", check=0).stdout
    assert "unreadable tenant_app" in current
    assert f"GRANT {roles.app} TO {roles.deploy}" in current

    # The fix it names works.
    with db.connect() as connection:
        connection.exec_driver_sql(
            f'GRANT "{roles.app}" TO "{roles.deploy}"')
        connection.commit()
    project.cli("upgrade", check=0)
    assert version_of(db, "tenant_app") == ["t3"]


def test_twenty_workers_get_twenty_connections(project, db):
    tenants = counter_history(project, db, 40, sleep="0.3")
    seen = []

    def workers_now():
        with db.connect() as connection:
            count = connection.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE "
                "application_name LIKE 'tenant-migrate worker%'")).scalar()
        seen.append(count)
        return count >= 20

    process = project.start("upgrade", "--workers", "20", "--json")
    assert wait_for(workers_now)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    branch = tenant_branch(stdout)
    assert branch["workers"] == 20 and branch["counts"] == {"done": 40}
    values, behind = counters(db, tenants)
    assert values == {1: 40} and not behind


def test_a_connection_limit_lowers_the_workers_with_a_warning(
        project, roles, db):
    deploy_url = roles.url(roles.deploy)
    project.settings["sqlalchemy.url"] = deploy_url
    project.write_ini()
    deploy = sa.create_engine(deploy_url)
    tenants = counter_history(project, deploy, 30, sleep="0.05")
    deploy.dispose()
    with db.connect() as connection:
        connection.exec_driver_sql(
            f'ALTER ROLE "{roles.deploy}" CONNECTION LIMIT 4')
        connection.commit()

    result = project.cli("upgrade", "--workers", "8", "--json", check=0)

    branch = tenant_branch(result.stdout)
    assert branch["counts"] == {"done": 30}
    assert 1 <= branch["workers"] < 8
    assert any("connections" in w and "too many" in w
               for w in json.loads(result.stdout)["warnings"])
    values, behind = counters(db, tenants)
    assert values == {1: 30} and not behind


def test_a_connection_lost_while_committing_is_read_again(project, db):
    tenants = counter_history(project, db, 10)
    with CommitCutter(project.database_url) as proxy:
        project.write_ini(**{"sqlalchemy.url": proxy.url})
        proxy.arm()
        result = project.cli("upgrade", "--workers", "1", "--json", check=0)
        assert proxy.cut.is_set()

    schemas = tenant_branch(result.stdout)["schemas"]
    noted = [s for s in schemas if s.get("note")]
    assert len(noted) == 1 and noted[0]["status"] == "done"
    assert "after the server committed" in noted[0]["note"]
    assert all(s["status"] == "done" for s in schemas)
    values, behind = counters(db, tenants)
    assert values == {1: 10} and not behind


def test_a_run_record_whose_last_write_failed_is_corrected(project, db):
    tenants = counter_history(project, db, 5)
    with db.begin() as connection:
        connection.exec_driver_sql("""
            CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN RAISE EXCEPTION 'the disk is full'; END $$""")
        connection.exec_driver_sql("""
            CREATE TRIGGER refuse BEFORE UPDATE ON public.tenantmigrate_runs
            FOR EACH ROW WHEN (NEW.status <> 'running')
            EXECUTE FUNCTION public.refuse()""")

    result = project.cli("upgrade", check=0)
    assert "could not be recorded" in result.stdout
    with db.begin() as connection:
        connection.exec_driver_sql(
            "DROP TRIGGER refuse ON public.tenantmigrate_runs")

    listed = json.loads(project.cli("runs", "--json", check=0).stdout)
    assert listed[0]["status"] == "ok"
    assert "every tenant it selected is at its target" in listed[0]["note"]
    values, behind = counters(db, tenants)
    assert values == {1: 5} and not behind


def test_upgrade_to_a_revision_below_the_tenant_says_downgrade(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a")
    project.cli("upgrade", check=0)

    result = project.cli("upgrade", "tenant@t1", "--json", check=1)

    schema = tenant_branch(result.stdout)["schemas"][0]
    assert schema["status"] == "ahead"
    assert "downgrade tenant@t1" in schema["error"]
    assert version_of(db, "tenant_a") == ["t2"]


def test_stamp_that_moves_versions_needs_yes(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b")
    project.cli("upgrade", check=0)

    result = project.cli("stamp", "tenant@t1", check=2)
    assert "--yes" in result.stderr and "nothing was changed" in result.stderr
    assert version_of(db, "tenant_a") == ["t2"]
    project.cli("stamp", "tenant@t1", "--yes", check=0)
    assert version_of(db, "tenant_a") == ["t1"]
    # Stamping a schema that has no version yet (adopting it) asks nothing.
    create_schemas(db, "tenant_c")
    project.cli("stamp", "tenant@t1", "--tenant", "tenant_c", check=0)
    assert version_of(db, "tenant_c") == ["t1"]


def test_a_shared_target_refuses_tenant_options(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a")
    for args in (["stamp", "s1", "--tenant", "tenant_a"],
                 ["upgrade", "shared", "--tenant", "tenant_a"],
                 ["upgrade", "shared@head", "--shard", "1/2"]):
        result = project.cli(*args, check=2)
        assert "shared schema only" in result.stderr, args
    assert version_of(db, "public") is None
