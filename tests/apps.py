"""Small Pyramid apps the integration tests load from ini files."""
from pyramid.config import Configurator
from pyramid.response import Response


def ok_view(request):
    return Response("ok")


def main(global_config, **settings):
    """An app that includes pyramid_tenantmigrate the documented way."""
    with Configurator(settings=settings) as config:
        config.include("pyramid_tenantmigrate")
        config.set_tenantmigrate_global_config(global_config)
        config.add_route("home", "/")
        config.add_view(ok_view, route_name="home")
    return config.make_wsgi_app()


def tenant_list(connection):
    """A tenant source set in code by main_with_source."""
    return ["tenant_code"]


def main_with_source(global_config, **settings):
    """Like :func:`main`, with the tenant source set in code."""
    with Configurator(settings=settings) as config:
        config.include("pyramid_tenantmigrate")
        config.set_tenantmigrate_global_config(global_config)
        config.set_tenant_source("tests.apps:tenant_list")
    return config.make_wsgi_app()


# Functions for 'tenant-migrate <ini> run' (tests/test_tasks.py).

def bump_counter(task):
    """Add the first argument (default 1) to the tenant's counter."""
    from sqlalchemy import text
    step = int(task.args[0]) if task.args else 1
    task.connection.execute(text("UPDATE counters SET n = n + :step"),
                            {"step": step})


def bump_then_fail_in_b(task):
    """Bump the counter, then fail in tenant_b (which is rolled back)."""
    bump_counter(task)
    if task.schema == "tenant_b":
        raise RuntimeError("no counters for b")


def record_through_the_session(task):
    """The ORM session: a table without a schema is the tenant's."""
    import sqlalchemy as sa
    counters = sa.table("counters", sa.column("n"))
    n = task.session.execute(sa.select(counters.c.n)).scalar()
    task.session.execute(sa.update(counters).values(n=n + 10))
    assert task.registry is not None and task.migrator is not None


not_a_function = 42


def main_without_global_config(global_config, **settings):
    """An app factory that forgot set_tenantmigrate_global_config."""
    with Configurator(settings=settings) as config:
        config.include("pyramid_tenantmigrate")
    return config.make_wsgi_app()


# The seed of 'tenant-migrate <ini> seed' (tests/test_seeds.py).

def seed_options(task):
    """Idempotent: the tenant's default option, once. Raw SQL, so the
    search_path must be the tenant's."""
    task.connection.exec_driver_sql(
        "INSERT INTO options (key, value) VALUES ('theme', 'light') "
        "ON CONFLICT DO NOTHING")


def main_seeding_new_tenants(global_config, **settings):
    """Like :func:`main`, with new tenants seeded by tenantmigrate.seed."""
    with Configurator(settings=settings) as config:
        config.include("pyramid_tenantmigrate")
        config.set_tenantmigrate_global_config(global_config)
        config.add_subscriber("pyramid_tenantmigrate.seeds.seed_new_tenant",
                              "pyramid_tenantmigrate.TenantCreated")
    return config.make_wsgi_app()


# A pshell setup for 'tenant-migrate <ini> shell' (tests/test_shell.py).

def pshell_setup(env):
    """What the request looks like when the setup hook runs."""
    from pyramid_tenantmigrate import tenant_of
    request = env["request"]
    env["seen_by_setup"] = (request.tenant, tenant_of(request.dbsession))


# New tenants greeted by a subscriber (tests/test_isolation.py).

def welcome_note(event):
    """Writes into the new tenant through event.connection (with
    isolation, as the tenant's role)."""
    import sqlalchemy as sa
    notes = sa.Table("notes", sa.MetaData(),  # no schema: the new tenant's
                     sa.Column("title", sa.Text))
    event.connection.execute(notes.insert().values(title="welcome"))


def main_greeting_new_tenants(global_config, **settings):
    with Configurator(settings=settings) as config:
        config.include("pyramid_tenantmigrate")
        config.set_tenantmigrate_global_config(global_config)
        config.add_subscriber(welcome_note,
                              "pyramid_tenantmigrate.TenantCreated")
    return config.make_wsgi_app()


def fleet_placements(connection):
    """A fleet's placement source: tenant_bN on b, the others on a."""
    names = [row[0] for row in connection.exec_driver_sql(
        "SELECT name FROM public.app_tenants")]
    return [(name, "b" if name.startswith("tenant_b") else "a")
            for name in names]
