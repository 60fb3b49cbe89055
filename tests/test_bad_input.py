"""Bad input: exit 2 naming the setting or flag, nothing run, no traceback,
no hang."""
import pytest
import sqlalchemy as sa

from .conftest import create_schemas, schema_exists, version_of


@pytest.fixture
def ready(project, db):
    """Standard revisions, one tenant, nothing applied yet."""
    project.write_standard_revisions()
    create_schemas(db, "tenant_a")
    return project


def assert_nothing_ran(db):
    assert version_of(db, "public") is None
    assert version_of(db, "tenant_a") is None


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "1e10"])
def test_lock_wait_out_of_range(ready, db, value):
    ready.write_ini(**{"tenantmigrate.lock_wait": value})
    result = ready.cli("upgrade", check=2)
    assert "tenantmigrate.lock_wait" in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_ran(db)


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "1e10"])
def test_wait_flag_out_of_range(ready, db, value):
    result = ready.cli("upgrade", f"--wait={value}", check=2)
    assert "--wait" in result.stderr
    assert_nothing_ran(db)


@pytest.mark.parametrize("setting, value", [
    ("tenant_schema_pattern", "tenant_(["),
    ("version_table", "tenantmigrate_runs"),
    ("version_table", "tenantmigrate_spares"),
    ("lock_timeout", "30d"),
    ("statement_timeout", "9999999999"),
    ("lock_timeout", "nan"),
    ("statement_timeout", "infs"),
    ("workers", "0"),
    ("tenant_schemas_query",
     "SELECT nspname FROM pg_namespace; DROP TABLE public.canary"),
])
def test_bad_settings_are_named(ready, db, setting, value):
    overrides = {f"tenantmigrate.{setting}": value}
    if setting.startswith("tenant_schema"):
        overrides["tenantmigrate.tenant_schema_prefix"] = None
    ready.write_ini(**overrides)
    result = ready.cli("upgrade", check=2)
    assert f"tenantmigrate.{setting}" in result.stderr
    assert_nothing_ran(db)


@pytest.mark.parametrize("workers", ["0", "-3", "x"])
def test_workers_flag(ready, db, workers):
    result = ready.cli("upgrade", f"--workers={workers}", check=2)
    assert "--workers" in result.stderr
    assert_nothing_ran(db)


def test_tenants_from_invalid_utf8(ready, db, tmp_path):
    names = tmp_path / "tenants.txt"
    names.write_bytes(b"tenant_a\n\xff\xfe\n")
    result = ready.cli("upgrade", "--tenants-from", str(names), check=2)
    assert "--tenants-from" in result.stderr and "UTF-8" in result.stderr
    result = ready.cli("upgrade", "--tenants-from", "-", check=2,
                       input=b"tenant_a\n\xc3\x28\n")
    assert "--tenants-from -" in result.stderr
    assert_nothing_ran(db)


def source_none(connection):
    return None


def source_bytes(connection):
    return [b"tenant_a"]


def source_unhashable(connection):
    return [["tenant_a"]]


def source_string(connection):
    return "tenant_a"


def source_raises_midway(connection):
    yield "tenant_a"
    raise RuntimeError("the tenant service timed out")


@pytest.mark.parametrize("source", [
    "source_none", "source_bytes", "source_unhashable", "source_string",
    "source_raises_midway"])
def test_a_tenant_source_that_cannot_work(ready, db, source):
    ready.write_ini(**{
        "tenantmigrate.tenant_schema_prefix": None,
        "tenantmigrate.tenant_source": f"tests.test_bad_input:{source}"})
    result = ready.cli("upgrade", "--create-missing", check=2)
    assert "tenantmigrate.tenant_source" in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_ran(db)
    # A single string is not taken for a list of one-letter schemas.
    for letter in "_aent":
        assert not schema_exists(db, letter)


def test_a_target_with_an_equals_sign_is_not_an_ini_variable(ready, db):
    result = ready.cli("upgrade", "tenant@t1=", check=2)
    assert "t1=" in result.stderr
    assert_nothing_ran(db)


@pytest.mark.parametrize("rev_id", ["../escape", "a/b", "50%off", "a$b",
                                    "x" * 33, "a b"])
def test_revision_ids_the_replay_cannot_carry_are_refused(project, rev_id):
    result = project.cli("revision", "-m", "x", "--branch", "tenant",
                         "--rev-id", rev_id, check=2)
    assert "--rev-id" in result.stderr
    import os
    written = [name for root, _, files in os.walk(project.root)
               for name in files if name.endswith(".py") and "x_" in name]
    assert not written


def test_ini_variables_after_options(ready, db):
    ready.write_ini()
    with open(ready.ini) as f:
        text = f.read()
    with open(ready.ini, "w") as f:
        f.write(text + "tenantmigrate.lock_timeout = %(timeout)s\n")
    ready.cli("upgrade", "--json", "timeout=2s", check=0)
    assert version_of(db, "tenant_a") == ["t2"]
    ready.cli("downgrade", "tenant@base", "--json", "timeout=2s", check=0)
    assert version_of(db, "tenant_a") == []
    result = ready.cli("upgrade", "--json", check=2)
    assert "timeout" in result.stderr


def test_init_needs_neither_the_app_nor_a_database(project, tmp_path):
    project.app_factory = "call:no_such_module:main"
    project.write_ini(**{"sqlalchemy.url": None})
    target = tmp_path / "fresh"
    result = project.cli("init", str(target), check=0)
    assert (target / "env.py").exists()
    assert "Traceback" not in result.stderr


def test_relative_target_past_the_head_is_up_to_date(ready, db):
    ready.cli("upgrade", check=0)
    result = ready.cli("upgrade", "tenant@+1", check=0)
    assert "FAILED" not in result.stdout + result.stderr
    assert "1 up-to-date" in result.stdout


def test_a_canary_table_survives_everything(ready, db):
    with db.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE public.canary (id int)")
    ready.write_ini(**{
        "tenantmigrate.tenant_schema_prefix": None,
        "tenantmigrate.tenant_schemas_query":
            "SELECT 'tenant_a'; DROP TABLE public.canary"})
    ready.cli("upgrade", check=2)
    with db.connect() as connection:
        assert connection.execute(sa.text(
            "SELECT to_regclass('public.canary') IS NOT NULL")).scalar()


def test_two_heads_on_the_tenant_branch(project, db):
    project.write_standard_revisions()
    project.write_revision("tenant", "t3", "t1", """
        op.add_column("notes", sa.Column("slug", sa.Text))
        """, 'op.drop_column("notes", "slug")')
    create_schemas(db, "tenant_a")
    for args in (("upgrade",), ("upgrade", "tenant"), ("upgrade", "heads")):
        result = project.cli(*args, check=2)
        assert ("the tenant branch has 2 heads (t2, t3): write a merge "
                "revision") in result.stderr
        assert "Traceback" not in result.stderr
    # Where tenants stand is still shown: three steps to both heads.
    current = project.cli("current", check=0).stdout
    assert "tenant head t2,t3" in current
    assert "base (behind by 3): 1 (tenant_a)" in current
    # Naming one head works.
    project.cli("upgrade", "shared", check=0)
    project.cli("upgrade", "tenant@t2", check=0)
