"""The demo app behind development.ini: shared tenants, per-tenant notes.

``POST /signup`` (name, schema) provisions a tenant inside the request;
``GET/POST /t/{tenant}/notes`` use a tenant-scoped session; ``/status``
shows every schema's revision. ``tenantmigrate.startup`` in
development.ini brings the database to the heads when pserve starts,
after which the demo logs the URLs to open.
"""
import configparser
import logging

from pyramid.config import Configurator

log = logging.getLogger(__name__)


def main(global_config, **settings):
    """Build the demo WSGI app."""
    # /t/{tenant}/...: the request's tenant, and its session scoped to it.
    settings.setdefault("tenantmigrate.tenant_from", "matchdict tenant")
    with Configurator(settings=settings) as config:
        config.include("pyramid_tenantmigrate")
        config.set_tenantmigrate_global_config(global_config)
        config.include(".models")
        config.add_route("home", "/")
        config.add_route("status", "/status")
        config.add_route("signup", "/signup")
        config.add_route("notes", "/t/{tenant}/notes")
        config.scan(".views")
    app = config.make_wsgi_app()
    _log_urls(app.registry, global_config)
    return app


def _log_urls(registry, global_config):
    # Waitress says where it listens at INFO, which development.ini's root
    # logger (WARN) does not show; this logger's INFO it does.
    from ..startup import is_serving
    config_file = global_config.get("__file__")
    if config_file is None or not is_serving(global_config.get("__script__")):
        return
    base = served_url(config_file, global_config)
    if base is not None:
        log.info("%s", urls_to_open(registry, base))


def served_url(config_file, defaults=None):
    """The demo's address, from the ini file's ``[server:main]``
    (waitress's first ``listen``, or ``host`` and ``port``); ``None`` when
    it cannot be told."""
    import plaster
    try:
        server = plaster.get_settings(config_file, "server:main",
                                      defaults=defaults)
    except (configparser.Error, OSError, LookupError, ValueError):
        return None  # a %(var)s pserve was not given ...
    if not server:
        return None  # served from another section (pserve -n)
    listen = (server.get("listen") or "").split()
    address = listen[0] if listen else (
        f"{server.get('host', '0.0.0.0')}:{server.get('port', '8080')}")
    host, _, port = address.rpartition(":")
    if host in ("", "*", "0.0.0.0", "[::]"):
        host = "localhost"  # every interface: this one answers too
    return f"http://{host}:{port}"


def urls_to_open(registry, base):
    """What to open in the demo served at ``base``: its pages, each
    tenant's notes (from the tenants table), how to sign up."""
    import sqlalchemy as sa
    from pyramid.request import Request

    from .models import Tenant
    request = Request.blank("/", base_url=base)
    request.registry = registry
    try:
        with registry.tenant_migrator.engine.connect() as connection:
            schemas = connection.execute(sa.select(
                Tenant.schema_name).order_by(Tenant.schema_name)).scalars()
            schemas = list(schemas)
    except sa.exc.DBAPIError:
        schemas = []  # not migrated yet (tenantmigrate.startup = off)
    lines = [f"The demo is served at {request.route_url('home')} (its "
             f"tenants); {request.route_url('status')} shows each schema's "
             "revision; a tenant's notes:"]
    lines += [f"  {request.route_url('notes', tenant=schema)}"
              for schema in schemas]
    lines.append(f"Sign up: curl -d name=Umbrella -d schema=tenant_umbrella "
                 f"{request.route_url('signup')}")
    return "\n".join(lines)
