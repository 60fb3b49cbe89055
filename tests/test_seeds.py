"""'tenant-migrate <ini> seed': the app's seed function (tenantmigrate.seed)
in every tenant, as 'run' runs a function; and in each new tenant, from a
TenantCreated subscriber."""
import json

import sqlalchemy as sa
from pyramid.config import Configurator

from pyramid_tenantmigrate import TenantCreated, create_tenant
from pyramid_tenantmigrate.seeds import seed_new_tenant

from .conftest import create_schemas

OPTIONS = """
    op.create_table("options", sa.Column("key", sa.Text, primary_key=True),
                    sa.Column("value", sa.Text, nullable=False))
    """
SEED = "tests.apps:seed_options"


def options(db, *tenants):
    with db.connect() as connection:
        return {t: connection.exec_driver_sql(
            f"SELECT key, value FROM {t}.options ORDER BY key").all()
            for t in tenants}


def statuses(result):
    report = json.loads(result.stdout)
    assert report["command"] == "seed"
    return {s["schema"]: s["status"] for s in report["branches"][0]["schemas"]}


def seeded(project, db, *tenants):
    project.write_revision("tenant", "t1", None, OPTIONS)
    create_schemas(db, *tenants)
    project.cli("upgrade", check=0)
    project.write_ini(**{"tenantmigrate.seed": SEED})


def test_seed_runs_in_every_tenant_at_the_head_and_again_harmlessly(
        project, db):
    seeded(project, db, "tenant_a", "tenant_b", "tenant_c")
    project.write_revision("tenant", "t2", "t1", 'op.add_column("options", '
                           'sa.Column("note", sa.Text))')
    project.cli("upgrade", "--exclude-tenant", "tenant_b", check=0)

    result = project.cli("seed", "--json", check=1)

    assert statuses(result) == {"tenant_a": "done", "tenant_b": "behind",
                                "tenant_c": "done"}
    assert options(db, "tenant_a", "tenant_b", "tenant_c") == {
        "tenant_a": [("theme", "light")], "tenant_b": [],
        "tenant_c": [("theme", "light")]}
    result = project.cli("seed", check=1)
    assert "BEHIND tenant schema tenant_b: at t1, the tenant head is t2" \
        in result.stdout

    project.cli("upgrade", check=0)
    for _ in range(2):  # tenants seeded before are seeded again: no harm
        result = project.cli("seed", check=0)
        assert "tenants: 3 selected, run tests.apps:seed_options: 3 done" \
            in result.stdout
    assert options(db, "tenant_a", "tenant_b", "tenant_c") == dict.fromkeys(
        ("tenant_a", "tenant_b", "tenant_c"), [("theme", "light")])
    # The selection is run's.
    with db.begin() as connection:
        connection.exec_driver_sql("DELETE FROM tenant_a.options; "
                                   "DELETE FROM tenant_c.options")
    project.cli("seed", "--tenant", "tenant_c", check=0)
    assert options(db, "tenant_a", "tenant_c") == {
        "tenant_a": [], "tenant_c": [("theme", "light")]}
    # A failing tenant is named, with the seed command to run again.
    with db.begin() as connection:
        connection.exec_driver_sql("DROP TABLE tenant_c.options")
    result = project.cli("seed", check=1)
    assert "FAILED tenant schema tenant_c: UndefinedTable" in result.stdout
    assert f"re-run: tenant-migrate {project.ini} seed --tenant tenant_c" \
        in result.stdout


def test_seed_without_a_usable_setting_is_refused(project, db):
    seeded(project, db, "tenant_a")
    for setting, args, message in (
            (None, (), "no seed function: set tenantmigrate.seed"),
            ("tests.apps:nowhere", (),
             "setting tenantmigrate.seed = 'tests.apps:nowhere' cannot be "
             "imported"),
            ("tests.apps:not_a_function", (),
             "setting tenantmigrate.seed must name a callable"),
            (SEED, ("tests.apps:bump_counter",), "seed takes no argument"),
            (SEED, ("--tenant", "tenant_zz"), "unknown tenant(s): tenant_zz")):
        project.write_ini(**{"tenantmigrate.seed": setting})
        result = project.cli("seed", *args, check=2)
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert options(db, "tenant_a") == {"tenant_a": []}


def test_new_tenants_are_seeded_by_the_subscriber(project, db):
    seeded(project, db, "tenant_a")
    project.app_factory = "call:tests.apps:main_seeding_new_tenants"
    project.write_ini(**{"tenantmigrate.seed": SEED})

    project.cli("create-tenant", "tenant_new", check=0)

    assert options(db, "tenant_new") == {"tenant_new": [("theme", "light")]}
    with db.connect() as connection:  # not in the search_path's default
        assert connection.exec_driver_sql(
            "SELECT to_regclass('public.options')").scalar() is None
    project.cli("seed", check=0)
    assert options(db, "tenant_a", "tenant_new") == dict.fromkeys(
        ("tenant_a", "tenant_new"), [("theme", "light")])


def test_the_creating_transaction_gets_its_search_path_back(project, db):
    """A sign-up creates the tenant in its request's transaction, which
    goes on after the subscriber."""
    seeded(project, db, "tenant_a")
    settings = dict(project.settings, **{"tenantmigrate.seed": SEED})
    with Configurator(settings=settings) as config:
        config.include("pyramid_tenantmigrate")
        config.add_subscriber(seed_new_tenant, TenantCreated)
    migrator = config.registry.tenant_migrator
    try:
        with migrator.engine.connect() as connection:
            with connection.begin():
                before = connection.exec_driver_sql(
                    "SHOW search_path").scalar()
                create_tenant(migrator, "tenant_new", connection=connection,
                              registry=config.registry)
                assert connection.exec_driver_sql(
                    "SHOW search_path").scalar() == before
                assert connection.execute(sa.text(
                    "SELECT value FROM tenant_new.options")).scalar() \
                    == "light"
    finally:
        migrator.close()
    assert options(db, "tenant_new") == {"tenant_new": [("theme", "light")]}
