"""Settings, tenant sources and the errors a user sees for bad input."""
import json

import pytest

from pyramid_tenantmigrate.errors import ConfigurationError
from pyramid_tenantmigrate.settings import parse_settings

from .conftest import create_schemas, version_of


def tenant_list(connection):
    """A tenant source callable used by the tests below."""
    return ["tenant_from_callable"]


def test_missing_script_location_exits_2_naming_the_setting(project):
    project.write_ini(**{"tenantmigrate.script_location": None})
    result = project.run("upgrade", check=2)
    assert "tenantmigrate.script_location is missing" in result.stderr


def test_two_tenant_sources_are_contradictory(project):
    project.write_ini(**{"tenantmigrate.tenant_schemas_query": "SELECT 'a'"})
    result = project.run("current", check=2)
    assert "contradictory settings" in result.stderr
    assert "tenantmigrate.tenant_schemas_query" in result.stderr
    assert "tenantmigrate.tenant_schema_prefix" in result.stderr


def test_no_tenant_source_is_an_error_when_tenants_are_needed(project, db):
    project.write_standard_revisions()
    project.write_ini(**{"tenantmigrate.tenant_schema_prefix": None})
    result = project.run("upgrade", check=2)
    assert "no tenant source" in result.stderr
    # Said before anything runs: the shared branch is not half a run.
    assert version_of(db, "public") is None


def test_bad_values_name_their_setting():
    with pytest.raises(ConfigurationError, match="tenantmigrate.fail_fast"):
        parse_settings({"sqlalchemy.url": "postgresql://x/y",
                        "tenantmigrate.script_location": "/tmp",
                        "tenantmigrate.fail_fast": "perhaps"})
    with pytest.raises(ConfigurationError,
                       match="tenantmigrate.tenant_source"):
        parse_settings({"sqlalchemy.url": "postgresql://x/y",
                        "tenantmigrate.script_location": "/tmp",
                        "tenantmigrate.tenant_source": "no.such.module:f"})
    with pytest.raises(ConfigurationError, match="sqlalchemy.url"):
        parse_settings({"tenantmigrate.script_location": "/tmp"})
    with pytest.raises(ConfigurationError, match="shared_schema"):
        parse_settings({"sqlalchemy.url": "postgresql://x/y",
                        "tenantmigrate.script_location": "/tmp",
                        "tenantmigrate.shared_schema": 'x"; drop'})


def test_script_location_as_asset_spec():
    settings = parse_settings({
        "sqlalchemy.url": "postgresql://x/y",
        "tenantmigrate.script_location":
            "pyramid_tenantmigrate.demo:migrations",
    })
    assert settings.script_location.endswith("demo/migrations")


def test_broken_revision_file_is_a_clear_error(project, db):
    project.write_standard_revisions()
    with open(project.migrations + "/versions/tenant/t9.py", "w") as f:
        f.write("this is not python\n")
    result = project.run("upgrade", check=2)
    assert "cannot load the revision file" in result.stderr
    assert "t9.py" in result.stderr
    assert version_of(db, "public") is None


def test_missing_migrations_folder(project):
    project.write_ini(**{"tenantmigrate.script_location":
                         project.root + "/nowhere"})
    result = project.run("upgrade", check=2)
    assert "does not exist" in result.stderr and "init" in result.stderr


@pytest.mark.parametrize("setting,value", [
    ("tenantmigrate.tenant_schema_prefix", "tenant_"),
    ("tenantmigrate.tenant_schema_pattern", "^tenant_[a-z]+$"),
    ("tenantmigrate.tenant_schemas_query",
     "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant%' "
     "AND nspname::text <> 'tenant_9'"),
])
def test_catalog_and_query_tenant_sources(project, db, setting, value):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b", "tenant_9", "other")
    overrides = {"tenantmigrate.tenant_schema_prefix": None, setting: value}
    project.write_ini(**overrides)

    project.run("upgrade", check=0)

    assert version_of(db, "tenant_a") == ["t2"]
    assert version_of(db, "other") is None
    expected = None if setting != "tenantmigrate.tenant_schema_prefix" else [
        "t2"]
    assert version_of(db, "tenant_9") == expected


def test_callable_tenant_source(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_from_callable", "tenant_other")
    project.write_ini(**{
        "tenantmigrate.tenant_schema_prefix": None,
        "tenantmigrate.tenant_source":
            "tests.test_configuration:tenant_list",
    })
    project.run("upgrade", check=0)
    assert version_of(db, "tenant_from_callable") == ["t2"]
    assert version_of(db, "tenant_other") is None


def test_unknown_tenant_and_unknown_revision_exit_2_and_change_nothing(
        project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a")
    result = project.run("upgrade", "--tenant", "tenant_zz", check=2)
    assert "unknown tenant(s): tenant_zz" in result.stderr
    result = project.run("upgrade", "tenant@nope", check=2)
    assert "nope" in result.stderr
    result = project.run("upgrade", "nope", check=2)
    assert "unknown revision 'nope'" in result.stderr
    result = project.run("downgrade", "-1", check=2)
    assert "tenant@-1" in result.stderr
    assert version_of(db, "tenant_a") is None
    assert version_of(db, "public") is None


def test_unreachable_database_is_a_clear_failure(project):
    project.write_standard_revisions()
    project.write_ini(**{"sqlalchemy.url":
                         "postgresql+psycopg2://nobody@/none?host=/nonexistent"})
    result = project.run("upgrade", "--json", check=1)
    assert "cannot connect to the database" in result.stderr
    assert result.stdout == ""


def test_config_vars_fill_the_ini(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "acme_a")
    project.write_ini(**{"tenantmigrate.tenant_schema_prefix": "%(prefix)s"})
    # write_ini escapes %, so write the placeholder by hand.
    with open(project.ini) as f:
        text = f.read().replace("%%(prefix)s", "%(prefix)s")
    with open(project.ini, "w") as f:
        f.write(text)
    result = project.run("upgrade", "--json", "prefix=acme_", check=0)
    tenants = [s["schema"] for s in
               json.loads(result.stdout)["branches"][1]["schemas"]]
    assert tenants == ["acme_a"]


def test_a_url_without_a_driver_runs_on_psycopg2(project, db):
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3 (a test
    # dependency, not one of ours); the tool makes psycopg2 explicit.
    bare = project.database_url.replace("postgresql+psycopg2://",
                                        "postgresql://", 1)
    project.write_standard_revisions()
    create_schemas(db, "tenant_a")
    project.write_ini(**{"sqlalchemy.url": bare})
    project.run("upgrade", check=0)
    assert version_of(db, "public") == ["s1"]
    assert version_of(db, "tenant_a") == ["t2"]
    assert project.migrator(**{"sqlalchemy.url": bare}).engine.url.drivername \
        == "postgresql+psycopg2"


@pytest.mark.parametrize("setting, url, message", [
    ("sqlalchemy.url", "postgresql+asyncpg://app:s3cret@db/app",
     "sqlalchemy.url = postgresql+asyncpg://app:***@db/app asks for the "
     "asyncpg driver; tenant-migrate runs on psycopg2: set tenantmigrate.url"
     " = postgresql+psycopg2://... for the tool and keep your app's driver"),
    ("tenantmigrate.url", "postgresql+psycopg://app@db/app?password=s3cret",
     "asks for the psycopg driver; tenant-migrate runs on psycopg2: write "
     "postgresql:// or postgresql+psycopg2://"),
    ("sqlalchemy.url", "mysql://app:s3cret@db/app",
     "sqlalchemy.url = mysql://app:***@db/app is not PostgreSQL"),
    ("sqlalchemy.url", "postgresql//app:s3cret@db/app",
     "setting sqlalchemy.url is not a database URL"),
    ("tenantmigrate.url", "postgresql://app:s3cret@db:notaport/app",
     "setting tenantmigrate.url is not a database URL"),
])
def test_an_unusable_url_exits_2_without_showing_the_password(
        project, db, setting, url, message):
    project.write_ini(**{setting: url})
    result = project.run("current", check=2)
    assert message in result.stderr
    assert "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_an_engine_on_another_driver_is_refused(database_url):
    import sqlalchemy as sa

    from pyramid_tenantmigrate.migrator import TenantMigrator
    engine = sa.create_engine(database_url.replace(
        "postgresql+psycopg2://", "postgresql+psycopg://", 1))
    try:
        with pytest.raises(ConfigurationError,
                           match="uses the psycopg driver"):
            TenantMigrator.from_settings(
                {"sqlalchemy.url": database_url,
                 "tenantmigrate.script_location": "/nowhere"},
                engine=engine)
    finally:
        engine.dispose()


def test_a_missing_ini_variable_exits_2(project):
    with open(project.ini, "a") as f:
        f.write("myapp.greeting = %(nowhere)s\n")
    result = project.run("current", check=2)
    assert "cannot read" in result.stderr and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr


def test_heroku_style_urls_name_postgresql_on_psycopg2():
    from pyramid_tenantmigrate.migrator import engine_url
    url = engine_url("postgres://app:pw@db.example:5433/app")
    assert url.drivername == "postgresql+psycopg2"
    assert (url.host, url.port, url.database, url.password) == (
        "db.example", 5433, "app", "pw")
