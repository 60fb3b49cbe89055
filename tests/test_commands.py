"""init, revision, current, history, heads and offline (--sql) mode."""
import json
import os

import pytest
import sqlalchemy as sa

from .conftest import create_schemas, tables_of, version_of


def test_init_writes_an_environment_and_refuses_to_overwrite(project):
    for name in ("env.py", "script.py.mako", "versions/shared",
                 "versions/tenant"):
        assert os.path.exists(os.path.join(project.migrations, name)), name
    with open(os.path.join(project.migrations, "env.py")) as f:
        env_py = f.read()
    assert "run_env(context)" in env_py
    assert "for " not in env_py.split('"""')[-1]  # no tenant loop in user code

    result = project.run("init", check=2)
    assert "already exists" in result.stderr

    other = os.path.join(project.root, "other")
    project.run("init", other, check=0)
    assert os.path.exists(os.path.join(other, "env.py"))


def test_revision_starts_each_branch_with_its_label_then_follows_head(
        project):
    first = project.run("revision", "-m", "add notes", "--branch", "tenant",
                        "--rev-id", "aaa1", check=0)
    assert "tenant branch" in first.stdout
    project.run("revision", "-m", "more notes", "--branch", "tenant",
                "--rev-id", "aaa2", check=0)
    project.run("revision", "-m", "accounts", "--branch", "shared",
                "--rev-id", "bbb1", check=0)

    migrator = project.migrator()
    script = migrator.script
    first, second, shared = (script.get_revision(r)
                             for r in ("aaa1", "aaa2", "bbb1"))
    assert first.down_revision is None and first.branch_labels == {"tenant"}
    assert second.down_revision == "aaa1"
    assert shared.down_revision is None
    assert "shared" in shared.branch_labels
    assert os.path.dirname(first.path).endswith(os.path.join("versions",
                                                             "tenant"))
    assert os.path.dirname(shared.path).endswith(os.path.join("versions",
                                                              "shared"))
    with open(second.path) as f:
        source = f.read()
    assert "from alembic import op" in source and "def upgrade()" in source

    heads = project.run("heads", check=0).stdout
    assert "aaa2 (tenant) (head)" in heads and "bbb1 (shared) (head)" in heads
    history = project.run("history", check=0).stdout
    assert "aaa1 -> aaa2 (tenant) (head), more notes" in history


def test_revisions_written_by_the_command_run(project, db):
    project.run("revision", "-m", "empty", "--branch", "tenant",
                "--rev-id", "r1", check=0)
    create_schemas(db, "tenant_a")
    project.run("upgrade", check=0)
    assert version_of(db, "tenant_a") == ["r1"]


def test_current_groups_tenants_and_shows_who_is_behind(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b", "tenant_c")
    project.run("upgrade", "--tenant", "tenant_a", "--tenant", "tenant_b",
                check=0)
    project.run("downgrade", "tenant@t1", "--tenant", "tenant_b", check=0)

    text = project.run("current", check=0).stdout
    assert "shared (public): s1 (head)" in text
    assert "t2 (head): 1 (tenant_a)" in text
    assert "t1 (behind by 1): 1 (tenant_b)" in text
    assert "base (behind by 2): 1 (tenant_c)" in text

    verbose = project.run("current", "--verbose", check=0).stdout
    assert "    tenant_b" in verbose

    data = json.loads(project.run("current", "--json", check=0).stdout)
    tenants = {s["schema"]: s for s in data["branches"][1]["schemas"]}
    assert tenants["tenant_b"] == {"schema": "tenant_b", "revision": ["t1"],
                                   "behind": 1, "exists": True}
    assert data["behind"] == 2


def test_offline_sql_sets_each_tenants_schema_and_changes_nothing(
        project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b")
    project.run("upgrade", "shared", check=0)
    project.run("upgrade", "tenant@t1", "--tenant", "tenant_b", check=0)

    result = project.run("upgrade", "--sql", check=0)
    sql = result.stdout

    # Nothing ran.
    assert version_of(db, "tenant_a") is None
    assert version_of(db, "tenant_b") == ["t1"]
    # One section per tenant, from its own current revision.
    assert "-- tenant schema tenant_a: upgrade base -> t2" in sql
    assert "-- tenant schema tenant_b: upgrade t1 -> t2" in sql
    section_a, section_b = sql.split("-- tenant schema tenant_b")
    assert 'SET LOCAL search_path TO "tenant_a"' in section_a
    assert "CREATE TABLE notes" in section_a
    assert 'SET LOCAL search_path TO "tenant_b"' in section_b
    assert "CREATE TABLE notes" not in section_b
    assert "summary" not in sql and "selected" in result.stderr

    # The script does what it says when run.
    with db.begin() as connection:
        connection.exec_driver_sql(sql.replace("%", "%%"))
    assert version_of(db, "tenant_a") == ["t2"]
    assert version_of(db, "tenant_b") == ["t2"]
    assert "notes" in tables_of(db, "tenant_a")
    assert version_of(db, "public") == ["s1"]


def test_offline_sql_with_a_range_needs_no_database(project):
    project.write_standard_revisions()
    project.write_ini(**{"sqlalchemy.url":
                         "postgresql+psycopg2://nobody@/none?host=/nonexistent"})
    result = project.run("upgrade", "t1:t2", "--sql", "--tenant", "tenant_x",
                         check=0)
    assert "-- tenant schema tenant_x: upgrade t1 -> t2" in result.stdout
    assert "ALTER TABLE notes ADD COLUMN pinned" in result.stdout


def test_downgrade_sql_renders_from_the_current_revision(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a")
    project.run("upgrade", check=0)

    sql = project.run("downgrade", "tenant@t1", "--sql", check=0).stdout

    assert "DROP INDEX ix_notes_pinned" in sql
    assert version_of(db, "tenant_a") == ["t2"]
    with db.connect() as connection:
        assert connection.execute(sa.text(
            "SELECT count(*) FROM pg_indexes WHERE indexname = "
            "'ix_notes_pinned'")).scalar() == 1


def test_upgrading_a_branch_without_revisions_does_nothing(project, db):
    """A history of tenant revisions only: 'upgrade shared' (and the
    startup hook's shared mode) has nothing to do, not a traceback."""
    project.write_revision("tenant", "t1", None, "pass")
    result = project.cli("upgrade", "shared", check=0)
    assert "Traceback" not in result.stderr
    assert version_of(db, "public") is None


def test_json_is_json_dumps_with_a_list_item_to_a_line():
    from pyramid_tenantmigrate.scripts.tenant_migrate import json_text
    tenants = [{"schema": f"tenant_{i}", "status": "ok", "revision": ["t2"],
                "differences": []} for i in range(3)]
    branch = {"branch": "tenant", "schemas": [
        {"schema": f"tenant_{i:04d}", "revisions": ["t1", "t2"]}
        for i in range(200)]}
    document = {"ok": True, "counts": {"ok": 3}, "tenants": tenants,
                "branches": [branch], "empty": [], "none": None,
                "text": "é\n\"", 1: "a number key"}
    text = json_text(document)
    assert json.loads(text) == json.loads(json.dumps(document))
    lines = text.splitlines()
    # One tenant to a line, as json writes it; the long branch indented,
    # its schemas one to a line.
    assert f"    {json.dumps(tenants[1])}," in lines
    assert f"        {json.dumps(branch['schemas'][7])}," in lines
    assert '  "1": "a number key"' in lines
    with pytest.raises(TypeError):
        json_text({("a", "tuple"): 0})


def test_the_cli_leaves_what_its_caller_froze_frozen(project, db):
    import gc
    project.write_standard_revisions()
    gc.freeze()
    try:
        project.cli("current", check=0)
        # Still frozen (a few may have been freed meanwhile).
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    # On its own, it freezes for the command and unfreezes after.
    project.cli("current", check=0)
    assert gc.get_freeze_count() == 0
