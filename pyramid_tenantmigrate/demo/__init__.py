"""The demo app behind development.ini: shared tenants, per-tenant notes.

``POST /signup`` (name, schema) provisions a tenant inside the request;
``GET/POST /t/{tenant}/notes`` use a tenant-scoped session; ``/status``
shows every schema's revision. ``tenantmigrate.startup`` in
development.ini brings the database to the heads when pserve starts.
"""
from pyramid.config import Configurator


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
    return config.make_wsgi_app()
