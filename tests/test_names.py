"""Hostile and invalid schema names: rejected by name, nothing runs for
them, and what does run always quotes identifiers."""
import json

import pytest
import sqlalchemy as sa

from pyramid_tenantmigrate.names import quote_schema, schema_name_problem

from .conftest import create_schemas, version_of

HOSTILE_NAMES = [
    "",
    "pg_catalog",
    "pg_tenant",
    "information_schema",
    "public",
    'tenant"; DROP SCHEMA public CASCADE; --',
    "tenant'",
    "tenant;drop",
    "Tenant_Upper",
    "tenant a",
    "tenant-a",
    "1tenant",
    "t" * 64,
    "ténant",
    "tenant\x00x",
    "tenant\nx",
    "tenant$",
    "tenant.x",
    "tenant)",
    "tenant*",
    "tenant/*",
    "tenant\\",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused(name):
    assert schema_name_problem(name) is not None


@pytest.mark.parametrize("name", ["tenant_a", "t", "_x", "a" * 63, "t2b"])
def test_plain_names_are_accepted(name):
    assert schema_name_problem(name) is None


def test_quoting_escapes_quotes():
    assert quote_schema('a"b') == '"a""b"'


def hostile_source(connection):
    return ["tenant_ok", *HOSTILE_NAMES[1:]]


def test_hostile_names_from_a_source_are_reported_and_never_touched(
        project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_ok", 'tenant"; DROP SCHEMA public CASCADE; --',
                   "Tenant_Upper")
    project.write_ini(**{
        "tenantmigrate.tenant_schema_prefix": None,
        "tenantmigrate.tenant_source": "tests.test_names:hostile_source",
    })

    result = project.run("upgrade", "--json", check=1)

    schemas = json.loads(result.stdout)["branches"][1]["schemas"]
    statuses = {s["schema"]: s["status"] for s in schemas}
    assert statuses["tenant_ok"] == "done"
    for name in HOSTILE_NAMES[1:]:
        assert statuses[name] == "rejected", name
    assert version_of(db, "tenant_ok") == ["t2"]
    # The oddly named schemas exist but were not touched; public survived.
    assert version_of(db, 'tenant"; DROP SCHEMA public CASCADE; --') is None
    assert version_of(db, "Tenant_Upper") is None
    with db.connect() as connection:
        assert connection.execute(sa.text(
            "SELECT to_regclass('public.accounts') IS NOT NULL")).scalar()


@pytest.mark.parametrize("name", ['x"; DROP TABLE y; --', "pg_toast",
                                  "Tenant", "a b"])
def test_hostile_names_on_the_command_line_are_usage_errors(project, db,
                                                            name):
    project.write_standard_revisions()
    result = project.run("upgrade", "--tenant", name, check=2)
    assert "invalid tenant name" in result.stderr
    assert version_of(db, "public") is None
