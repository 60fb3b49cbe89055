"""What ``config.include('pyramid_tenantmigrate')`` adds to a Configurator
and to requests: directives, request methods, the registry's migrator."""
import dataclasses

from .errors import ConfigurationError
from .provisioning import create_tenant, drop_tenant
from .settings import PREFIX


def get_migrator(registry):
    """The app's :class:`~pyramid_tenantmigrate.migrator.TenantMigrator`.

    Raises :class:`~pyramid_tenantmigrate.errors.ConfigurationError` if
    the app did not include ``pyramid_tenantmigrate``.
    """
    migrator = getattr(registry, "tenant_migrator", None)
    if migrator is None:
        raise ConfigurationError(
            "no tenant migrator in this registry: call "
            "config.include('pyramid_tenantmigrate') in the app factory")
    return migrator


def set_tenant_source(config, source):
    """Set where tenants come from, in code: ``source(connection)`` returns
    the tenant schema names (a callable or its dotted name).

    Added as a method of a Configurator by ``config.include(
    'pyramid_tenantmigrate')``. It replaces the ``tenantmigrate.*`` tenant
    source settings; setting both is a configuration error, since the
    ``tenant-migrate`` commands that only read settings would then list
    other tenants than the app.
    """
    source = config.maybe_dotted(source)
    if not callable(source):
        raise ConfigurationError(
            "set_tenant_source() needs a callable taking a connection and "
            f"returning schema names, got {source!r}")

    def register():
        migrator = get_migrator(config.registry)
        already = migrator.settings.tenant_source_setting
        if already is not None:
            raise ConfigurationError(
                f"config.set_tenant_source() and the setting {PREFIX}"
                f"{already} both set a tenant source; keep one")
        migrator.settings = dataclasses.replace(
            migrator.settings, tenant_source=source)

    config.action(("tenantmigrate", "tenant_source"), register)


def set_tenant_resolver(config, resolver):
    """Set how a request names its tenant, in code: ``resolver(request)``
    returns a schema name or ``None`` (a callable or its dotted name).

    Added as a method of a Configurator by ``config.include(
    'pyramid_tenantmigrate')``; replaces the ``tenantmigrate.tenant_from``
    setting (setting both is a configuration error). ``request.tenant``
    checks what it returns against the tenant source (see
    :mod:`.resolution`).
    """
    resolver = config.maybe_dotted(resolver)
    if not callable(resolver):
        raise ConfigurationError(
            "set_tenant_resolver() needs a callable taking the request and "
            f"returning a tenant schema name or None, got {resolver!r}")

    def register():
        if get_migrator(config.registry).settings.tenant_from is not None:
            raise ConfigurationError(
                f"config.set_tenant_resolver() and the setting {PREFIX}"
                "tenant_from both say where a request's tenant comes from; "
                "keep one")
        config.registry.tenant_resolver = resolver

    config.action(("tenantmigrate", "tenant_resolver"), register)


def set_tenantmigrate_global_config(config, global_config):
    """Tell the startup hook how the app is loaded: pass the app factory's
    ``global_config``. Its ``__script__`` (set by ``pserve``, ``pshell``,
    ``bootstrap``...) lets the hook run for servers only.

    Added as a method of a Configurator by ``config.include(
    'pyramid_tenantmigrate')``.
    """
    config.registry.tenantmigrate_global_config = dict(global_config or {})


def request_migrator(request):
    """``request.tenant_migrator``: the app's migrator (reified)."""
    return get_migrator(request.registry)


def _request_dbsession(request, dbsession):
    if dbsession is not None:
        return dbsession
    dbsession = getattr(request, "dbsession", None)
    if dbsession is None:
        raise ConfigurationError(
            "request.create_tenant() runs in the request's transaction: pass "
            "dbsession=, or give requests a 'dbsession' (the cookiecutter's "
            "models/__init__.py does)")
    return dbsession


def request_create_tenant(request, name, dbsession=None):
    """``request.create_tenant(name, dbsession=None)``: create and migrate
    a tenant schema in the request's transaction (``request.dbsession``
    unless given; ``request.tm``), sending ``TenantCreated``."""
    return create_tenant(
        request.tenant_migrator, name,
        dbsession=_request_dbsession(request, dbsession),
        transaction_manager=getattr(request, "tm", None),
        request=request)


def request_drop_tenant(request, name, dbsession=None):
    """``request.drop_tenant(name, dbsession=None)``: drop a tenant schema
    in the request's transaction, sending ``TenantDropped``."""
    return drop_tenant(
        request.tenant_migrator, name,
        dbsession=_request_dbsession(request, dbsession),
        transaction_manager=getattr(request, "tm", None),
        request=request)
