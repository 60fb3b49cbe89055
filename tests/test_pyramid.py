"""The console script and an app that configures tenantmigrate in code."""
from .apps import tenant_list
from .conftest import create_schemas, version_of


def test_console_script_uses_a_tenant_source_set_in_code(project, db):
    project.write_standard_revisions()
    project.app_factory = "call:tests.apps:main_with_source"
    project.write_ini(**{"tenantmigrate.tenant_schema_prefix": None})
    listed = tenant_list(None)
    create_schemas(db, *listed, "tenant_unlisted")

    project.run("upgrade", check=0)

    for name in listed:
        assert version_of(db, name) == ["t2"]
    assert version_of(db, "tenant_unlisted") is None
    current = project.run("current", "--verbose", check=0).stdout
    assert "tenant_code" in current and "tenant_unlisted" not in current
