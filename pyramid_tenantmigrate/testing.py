"""pytest fixtures for an app that includes pyramid_tenantmigrate.

In the app's ``tests/conftest.py``::

    pytest_plugins = ["pyramid_tenantmigrate.testing"]

The fixtures, each overridable by one of the same name:

- ``tenantmigrate_ini``: the ini file (``--ini``, as the cookiecutter's
  option, else ``testing.ini``);
- ``tenantmigrate_settings`` (session): its app settings, with the
  database URL pointing at a **throwaway database** made on the server the
  ini names (``embedded://`` too) for this test session and dropped after
  it; build the app under test from these settings;
- ``tenantmigrate_migrator`` (session): the migrator on that database,
  the shared branch upgraded once, and ``tenantmigrate.spare_schemas``
  spares made ready;
- ``tenant`` (per test): a new tenant at the tenant head, dropped after
  the test, with the app's migrator and subscribers when
  ``tenantmigrate_registry`` returns the app's registry (override it).
  With spares, creating it is a rename. Its name comes from
  ``tenantmigrate_tenant_name`` (``<prefix>test_<n>`` for a prefix
  source, else ``tenant_test_<n>``); a tenant source reading the app's
  tenants table needs the row too: add it in a ``TenantCreated``
  subscriber, as the app does when it signs tenants up;
- ``tenant_testapp(app)`` (per test): a function wrapping a WSGI app in a
  WebTest ``TestApp`` whose requests name ``tenant`` the way
  ``tenantmigrate.tenant_from`` says (the subdomain of
  ``tenantmigrate.tenant_domain``, or the header); with ``matchdict``,
  put the tenant in the URLs (``tenant_testapp.tenant``).
"""
import itertools
import os
import secrets

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from .embedded import resolve_url
from .migrator import TenantMigrator
from .settings import PREFIX, parse_settings

_numbers = itertools.count(1)


def pytest_addoption(parser):
    try:
        parser.addoption("--ini", action="store", metavar="INI_FILE",
                         help="the app's ini file (default: testing.ini)")
    except ValueError:
        pass  # the app's conftest has it already (the cookiecutter's)


@pytest.fixture(scope="session")
def tenantmigrate_ini(request):
    """The ini file the fixtures read."""
    return os.path.abspath(request.config.getoption("--ini", None)
                           or "testing.ini")


@pytest.fixture(scope="session")
def tenantmigrate_settings(tenantmigrate_ini):
    """The ini file's app settings, on a database of this session's own."""
    from pyramid.paster import get_appsettings

    settings = dict(get_appsettings(tenantmigrate_ini))
    parsed = parse_settings(settings, require_script_location=False)
    server = make_url(resolve_url(parsed.url))
    name = f"{server.database or 'postgres'}_test_{secrets.token_hex(4)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = server.set(database=name).render_as_string(hide_password=False)
        settings["sqlalchemy.url"] = url
        settings[PREFIX + "url"] = url
        yield settings
        with admin.connect() as connection:
            connection.exec_driver_sql(
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def tenantmigrate_migrator(tenantmigrate_settings):
    """The migrator on the session's database: shared branch at its head,
    spares ready."""
    from . import commands
    from .plan import branch_has_revisions

    migrator = TenantMigrator.from_settings(tenantmigrate_settings)
    target = ("shared" if branch_has_revisions(migrator.script, "shared")
              else None)
    # A test database: tenantmigrate.lint_before_upgrade is for deploys.
    report = commands.upgrade(migrator, target, force=True) if target else None
    if report is not None and not report.ok:
        pytest.fail("upgrading the shared branch failed:\n"
                    + report.render_text(), pytrace=False)
    if migrator.settings.spare_schemas:
        commands.fill_spares(migrator)
    yield migrator
    migrator.close()


@pytest.fixture
def tenantmigrate_tenant_name(tenantmigrate_migrator):
    """The next test tenant's name."""
    prefix = tenantmigrate_migrator.settings.tenant_schema_prefix
    return f"{prefix or 'tenant_'}test_{next(_numbers)}"


@pytest.fixture
def tenantmigrate_registry():
    """The app's registry, when the tests build one (override it:
    ``return app.registry``): tenants are then made with the app's
    migrator, its ``TenantCreated`` subscribers run, and its requests know
    the new tenant at once."""
    return None


@pytest.fixture
def tenant(tenantmigrate_migrator, tenantmigrate_tenant_name,
           tenantmigrate_registry):
    """A new tenant at the tenant head for this test, dropped after it."""
    from .provisioning import create_tenant, drop_tenant

    registry = tenantmigrate_registry
    migrator = getattr(registry, "tenant_migrator", None) or (
        tenantmigrate_migrator)
    schema = create_tenant(migrator, tenantmigrate_tenant_name,
                           registry=registry)
    yield schema
    drop_tenant(migrator, schema, registry=registry)


@pytest.fixture
def tenant_testapp(tenantmigrate_migrator, tenant):
    """``tenant_testapp(app)``: a WebTest ``TestApp`` on ``app`` whose
    requests name ``tenant`` as ``tenantmigrate.tenant_from`` says."""
    import webtest

    def wrap(app, **kw):
        environ = dict(kw.pop("extra_environ", {}))
        settings = tenantmigrate_migrator.settings
        kind, argument = settings.tenant_from or (None, None)
        if kind == "subdomain":
            environ["HTTP_HOST"] = f"{tenant}.{settings.tenant_domain}"
        elif kind == "header":
            key = "HTTP_" + argument.upper().replace("-", "_")
            environ[key] = tenant
        testapp = webtest.TestApp(app, extra_environ=environ, **kw)
        testapp.tenant = tenant
        return testapp

    return wrap
