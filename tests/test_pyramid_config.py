"""config.include('pyramid_tenantmigrate'): settings, migrator, directives."""
import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationExecutionError
from pyramid.request import Request, apply_request_extensions

from pyramid_tenantmigrate import ConfigurationError, TenantMigrator
from pyramid_tenantmigrate.directives import get_migrator

from .apps import tenant_list


def settings(**extra):
    values = {"sqlalchemy.url": "postgresql+psycopg2://nobody@/nowhere",
              "tenantmigrate.script_location": "/tmp"}
    values.update(extra)
    return values


def test_include_registers_one_migrator():
    config = Configurator(settings=settings(**{
        "tenantmigrate.startup": "CHECK",
        "tenantmigrate.startup_lock_wait": "12.5"}))
    config.include("pyramid_tenantmigrate")
    config.commit()  # make_wsgi_app() would run the startup check
    migrator = get_migrator(config.registry)
    assert isinstance(migrator, TenantMigrator)
    assert migrator.settings.startup == "check"
    assert migrator.settings.startup_lock_wait == 12.5
    request = Request.blank("/")
    request.registry = config.registry
    apply_request_extensions(request)
    assert request.tenant_migrator is migrator


@pytest.mark.parametrize("name, value", [
    ("startup", "sometimes"), ("startup_lock_wait", "-1"),
    ("startup_lock_wait", "soon"), ("fail_fast", "maybe"),
])
def test_bad_values_fail_at_config_time_naming_the_setting(name, value):
    config = Configurator(settings=settings(**{f"tenantmigrate.{name}":
                                               value}))
    with pytest.raises(ConfigurationError, match=f"tenantmigrate.{name}"):
        config.include("pyramid_tenantmigrate")


def test_set_tenant_source_in_code():
    config = Configurator(settings=settings())
    config.include("pyramid_tenantmigrate")
    config.set_tenant_source("tests.apps:tenant_list")
    app = config.make_wsgi_app()
    migrator = get_migrator(app.registry)
    assert migrator.settings.tenant_source is tenant_list
    assert migrator.settings.tenant_source_setting == "tenant_source"


def test_set_tenant_source_conflicts_with_a_setting():
    config = Configurator(settings=settings(**{
        "tenantmigrate.tenant_schema_prefix": "tenant_"}))
    config.include("pyramid_tenantmigrate")
    config.set_tenant_source(tenant_list)
    with pytest.raises(ConfigurationExecutionError,
                       match="tenantmigrate.tenant_schema_prefix"):
        config.commit()


def test_get_migrator_without_include_says_what_to_do():
    with pytest.raises(ConfigurationError, match="config.include"):
        get_migrator(Configurator().registry)
