"""pyramid_tenantmigrate: Alembic migrations for schema-per-tenant PostgreSQL.

Layout, in the order data flows: settings -> tenants -> versions -> plan
-> execute -> report; the console script and Pyramid are shells around it.

Foundations:

- :mod:`.settings`    every ``tenantmigrate.*`` setting, parsed in one place
- :mod:`.errors`      what this package raises, and how errors are shown
- :mod:`.reserved`    names and lock keys this package reserves in a database
- :mod:`.names`       validation and quoting of schema names
- :mod:`.migrator`    the object holding engine, scripts, settings, programs
- :mod:`.environment` the bridge to a project's ``env.py``; Alembic contexts

A run, stage by stage:

- :mod:`.tenants`     where tenants come from, and which ones a run is for
- :mod:`.versions`    every schema's revision, read in a few round trips
- :mod:`.plan`        who is behind and which revisions each schema needs
- :mod:`.engine`      executing a plan: capture, programs, one transaction
  per schema (:mod:`.engine.transaction`), the pool
  (:mod:`.engine.execute`), offline SQL
- :mod:`.workers`     the one job runner; :mod:`.retry` the one retry policy
- :mod:`.report`      what a run did, as text and JSON
- :mod:`.run`         a run: select -> read -> plan -> execute -> record
- :mod:`.locking`     the run lock; :mod:`.runlog` the record of runs;
  :mod:`.tenanthead` the tenant head recorded for older app code

Around runs:

- :mod:`.commands`     one function per command, as ``alembic.command``
- :mod:`.provisioning` creating/dropping a tenant in the caller's transaction
- :mod:`.spares`       tenant schemas made ahead, so a sign-up is a rename
- :mod:`.autogenerate` comparing each branch's models with the database
- :mod:`.tasks`        an app's function run in each tenant (``run``)
- :mod:`.seeds`        the app's seed, in each tenant (``seed``) and in new
  ones
- :mod:`.testing`      pytest fixtures for the app's own tests

Shells:

- :mod:`.scripts.tenant_migrate` the ``tenant-migrate`` console script
- Pyramid: :func:`includeme` (below), :mod:`.directives` (what
  ``config.include`` adds), :mod:`.startup` (the hook run when served),
  :mod:`.sessions` (sessions scoped to one tenant), :mod:`.events`
  (``TenantCreated`` / ``TenantDropped``), :mod:`.directory` (which
  schemas are tenants, cached for the app), :mod:`.resolution` (the
  request's tenant, and its session scoped to it), :mod:`.shell`
  (``pshell`` in one tenant)
- :mod:`.embedded`    the embedded development database
"""
import importlib

from .errors import (  # noqa: F401
    ConfigurationError,
    DatabaseUnavailable,
    InvalidSchemaName,
    ProvisioningFailed,
    StartupRefused,
    TenantExists,
    TenantMigrateError,
    TenantNotFound,
    TenantSourceUnavailable,
    UnknownTenant,
    UsageError,
)
from .events import (  # noqa: F401
    TenantCloned,
    TenantCreated,
    TenantDropped,
    TenantRenamed,
)

#: The rest of the public API, imported when first used: ``tenant-migrate
#: --help`` should not pay for Alembic and SQLAlchemy.
_LAZY = {
    "TenantMigrator": ".migrator",
    "create_tenant": ".provisioning",
    "drop_tenant": ".provisioning",
    "rename_tenant": ".provisioning",
    "clone_tenant": ".provisioning",
    "get_tenant_session": ".sessions",
    "set_tenant": ".sessions",
    "clear_tenant": ".sessions",
    "tenant_of": ".sessions",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(
            f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


def includeme(config):
    """Set up tenant migrations for a Pyramid app.

    ``config.include('pyramid_tenantmigrate')``:

    - reads every ``tenantmigrate.*`` setting now, through the table in
      :mod:`.settings` (plus ``sqlalchemy.url``); a bad value is a
      ``ConfigurationError`` naming the setting, at config time;
    - builds one :class:`TenantMigrator` for the app, the object every
      ``tenant-migrate`` command takes: ``registry.tenant_migrator`` and
      ``request.tenant_migrator`` (reified). Its ``engine`` (created on first
      use; ``embedded://`` URLs start the embedded server) is the one to
      give the app's sessions, so there is one pool;
    - adds the directives ``config.set_tenant_source(callable)`` (tenants
      from code instead of settings) and
      ``config.set_tenantmigrate_global_config(global_config)`` (lets the
      startup hook tell ``pserve`` from scripts);
    - adds ``request.create_tenant(name)`` and ``request.drop_tenant(name)``,
      which provision in the request's transaction (``request.dbsession``,
      ``request.tm``), keep the app's cached list of tenants current, and
      send ``TenantCreated`` / ``TenantDropped``;
    - adds ``request.tenant`` (reified): the tenant the request names
      (``tenantmigrate.tenant_from`` or ``config.set_tenant_resolver``),
      checked against the tenant source. After routing, a request naming
      anything that is not a tenant gets a 404, and the request's session
      is scoped to its tenant (see :mod:`.resolution`); the view predicate
      ``tenant=True`` / ``tenant=False`` serves a view to requests naming
      a tenant / naming none only;
    - subscribes to ``ApplicationCreated``: when the app is served, the
      ``tenantmigrate.startup`` hook checks or upgrades the database
      (``off`` by default; see :mod:`.startup`) before the first request.

    Sessions of other tenants than the request's: :func:`set_tenant` /
    :func:`get_tenant_session` on the app's own sessions.
    """
    from pyramid.events import ApplicationCreated, BeforeTraversal

    from . import directives, resolution
    from .migrator import TenantMigrator
    from .startup import on_application_created

    migrator = TenantMigrator.from_settings(config.get_settings())
    config.registry.tenant_migrator = migrator
    config.registry.tenant_resolver = resolution.resolver_for(
        migrator.settings)
    config.add_directive("set_tenant_source", directives.set_tenant_source)
    config.add_directive("set_tenant_resolver",
                         directives.set_tenant_resolver)
    config.add_directive("set_tenantmigrate_global_config",
                         directives.set_tenantmigrate_global_config)
    config.add_request_method(directives.request_migrator,
                              "tenant_migrator", reify=True)
    config.add_request_method(directives.request_create_tenant,
                              "create_tenant")
    config.add_request_method(directives.request_drop_tenant, "drop_tenant")
    config.add_request_method(resolution.request_tenant, "tenant",
                              reify=True)
    config.add_view_predicate("tenant", resolution.TenantPredicate)
    config.add_subscriber(resolution.scope_request, BeforeTraversal)
    config.add_subscriber(on_application_created, ApplicationCreated)
