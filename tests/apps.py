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
