"""The demo app behind development.ini: shared tenants, per-tenant notes."""
from pyramid.config import Configurator
from pyramid.response import Response


def tenants_view(request):
    """List the tenants and the revision of each tenant schema."""
    migrator = request.registry.tenant_migrator
    from .. import commands
    status = commands.current(migrator)
    return Response(status.render_text(verbose=True),
                    content_type="text/plain")


def main(global_config, **settings):
    """Build the demo WSGI app."""
    from ..migrator import TenantMigrator
    with Configurator(settings=settings) as config:
        config.registry.tenant_migrator = TenantMigrator.from_settings(
            config.get_settings())
        config.add_route("tenants", "/")
        config.add_view(tenants_view, route_name="tenants")
    return config.make_wsgi_app()
