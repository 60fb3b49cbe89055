"""tenant-migrate lint: squawk's findings on the SQL replay runs, weighed by
the tenants that will run it; the upgrade gate."""
import json

import pytest

from pyramid_tenantmigrate import lint
from pyramid_tenantmigrate.errors import UsageError
from pyramid_tenantmigrate.lint import BYTES_PER_SECOND

from .conftest import create_schemas, version_of


def _squawk_installed():
    try:
        return bool(lint.squawk_path())
    except UsageError:
        return False


pytestmark = pytest.mark.skipif(
    not _squawk_installed(),
    reason="squawk-cli is not installed (the lint extra)")


def test_without_squawk_lint_says_how_to_get_it(project, db, monkeypatch):
    monkeypatch.setattr(lint, "SQUAWK", "squawk-not-installed")
    result = project.cli("lint", check=2)
    assert "lint needs squawk" in result.stderr
    assert "pyramid_tenantmigrate[lint]" in result.stderr


def _tenants_with_rows(project, db):
    """Shared accounts, tenant notes; tenant_big has 500 notes, tenant_small
    10, tenant_late is not created yet; all analyzed."""
    project.write_revision("shared", "s1", None, """
        op.create_table("accounts",
            sa.Column("id", sa.Integer, primary_key=True))
        """)
    project.write_revision("tenant", "t1", None, """
        op.create_table("notes",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("account_id", sa.Integer),
            sa.Column("title", sa.Text))
        """)
    create_schemas(db, "tenant_big", "tenant_small")
    project.run("upgrade", check=0)
    with db.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO public.accounts SELECT generate_series(1, 10)")
        for schema, rows in (("tenant_big", 500), ("tenant_small", 10)):
            connection.exec_driver_sql(
                f"INSERT INTO {schema}.notes (account_id, title) "
                f"SELECT 1, repeat('x', 200) FROM generate_series(1, {rows})")
    with db.connect() as connection:
        connection = connection.execution_options(
            isolation_level="AUTOCOMMIT")
        for table in ("public.accounts", "tenant_big.notes",
                      "tenant_small.notes"):
            connection.exec_driver_sql(f"ANALYZE {table}")


def _risky_revisions(project):
    project.write_revision("tenant", "t2", "t1", """
        op.create_index("ix_notes_title", "notes", ["title"])
        """)
    project.write_revision("tenant", "t3", "t2", """
        op.alter_column("notes", "account_id", type_=sa.BigInteger)
        """)
    project.write_revision("tenant", "t4", "t3", """
        op.create_foreign_key("fk_notes_account", "notes", "accounts",
                              ["account_id"], ["id"],
                              referent_schema="public")
        """)


def test_findings_name_revision_rule_tenants_rows_and_shared_lock(
        project, db):
    _tenants_with_rows(project, db)
    _risky_revisions(project)

    result = project.cli("lint", check=1)
    text = result.stdout
    assert "t2 (tenant, runs in 2 tenant(s))" in text
    assert "require-concurrent-index-creation" in text
    assert "changing-column-type" in text
    assert "largest tenant tenant_big has 500 rows" in text
    assert "locks shared table public.accounts once in each of 2" in text
    assert "error: tenant-locks-shared-table" in text
    assert "public.accounts: shared table has 10 rows" in text
    # Grouped by revision, errors before warnings within one.
    t4 = text[text.index("t4 (tenant"):]
    assert t4.index("error:") < t4.index("warning:")

    document = json.loads(project.cli("lint", "--json", check=1).stdout)
    assert document["ok"] is False
    revisions = {r["revision"]: r for r in document["revisions"]}
    assert list(revisions) == ["t2", "t3", "t4"]
    assert all(r["runs_in"] == 2 and r["branch"] == "tenant"
               for r in revisions.values())
    index = next(f for f in revisions["t2"]["findings"]
                 if f["rule"] == "require-concurrent-index-creation")
    # squawk calls it a warning; tenantmigrate.lint_errors (by default)
    # an error.
    assert index["severity"] == "error"
    assert "CREATE INDEX ix_notes_title" in index["statement"]
    stats = index["tables"]["notes"]
    assert stats["schema"] == "tenant_big" and stats["rows"] == 500
    assert stats["bytes"] > 0
    assert index["estimated_lock_seconds"] == round(
        stats["bytes"] / BYTES_PER_SECOND, 3)
    shared_lock = next(f for f in revisions["t4"]["findings"]
                       if f["rule"] == "tenant-locks-shared-table")
    assert shared_lock["severity"] == "error"
    assert shared_lock["shared_tables_locked"] == ["public.accounts"]
    assert shared_lock["tables"]["public.accounts"]["rows"] == 10


def test_tenant_count_is_those_behind_each_revision(project, db):
    _tenants_with_rows(project, db)
    _risky_revisions(project)
    project.run("upgrade", "tenant@t2", "--tenant", "tenant_big", check=0)

    document = json.loads(project.cli("lint", "--json", check=1).stdout)
    runs_in = {r["revision"]: r["runs_in"] for r in document["revisions"]}
    assert runs_in == {"t2": 1, "t3": 2, "t4": 2}


def test_a_clean_revision_exits_0_and_shared_revisions_run_once(project, db):
    _tenants_with_rows(project, db)
    project.write_revision("shared", "s2", "s1", """
        op.add_column("accounts", sa.Column("name", sa.Text))
        """)
    project.write_revision("tenant", "t2", "t1", """
        op.add_column("notes", sa.Column("body", sa.Text))
        """)
    result = project.cli("lint", check=0)
    assert "s2 (shared, runs once in the shared schema)" in result.stdout
    assert "t2 (tenant, runs in 2 tenant(s))" in result.stdout
    assert "0 error(s)" in result.stdout

    assert "nothing to lint" in project.cli("lint", "s2:s2", check=0).stdout


def test_a_range_lints_those_revisions_only(project, db):
    _tenants_with_rows(project, db)
    _risky_revisions(project)
    document = json.loads(project.cli("lint", "t2:t3", "--json",
                                      check=1).stdout)
    assert [r["revision"] for r in document["revisions"]] == ["t3"]


@pytest.mark.parametrize("rev_range", ["nope:t2", "t1", "t1:missing"])
def test_a_bad_range_exits_2(project, db, rev_range):
    _tenants_with_rows(project, db)
    _risky_revisions(project)
    result = project.cli("lint", rev_range, check=2)
    assert "lint range" in result.stderr
    assert "Traceback" not in result.stderr


def test_upgrade_gate_refuses_then_force_goes_through(project, db):
    _tenants_with_rows(project, db)
    _risky_revisions(project)
    project.write_ini(**{"tenantmigrate.lint_before_upgrade": "true"})

    refused = project.cli("upgrade", check=1)
    # The first error: t2's index built without CONCURRENTLY; the report
    # above it lists t4's lock of a shared table too.
    assert ("refusing to upgrade: revision t2 has 3 lint error(s) "
            "(require-concurrent-index-creation" in refused.stderr)
    assert "tenant-locks-shared-table" in refused.stderr
    assert "--force" in refused.stderr
    assert version_of(db, "tenant_big") == ["t1"]

    project.cli("upgrade", "--force", check=0)
    assert version_of(db, "tenant_big") == ["t4"]
    assert version_of(db, "tenant_small") == ["t4"]


def test_shared_revisions_run_once_and_blocks_are_outside_the_transaction(
        project, db):
    _tenants_with_rows(project, db)
    project.write_revision("shared", "s2", "s1", """
        op.create_index("ix_accounts_id2", "accounts", ["id"])
        """)
    project.write_revision("tenant", "t2", "t1", """
        with op.get_context().autocommit_block():
            op.create_index("ix_notes_title", "notes", ["title"],
                            postgresql_concurrently=True)
        """)
    # s2's index on a shared table, built without CONCURRENTLY, is an
    # error (once, not per tenant).
    document = json.loads(project.cli("lint", "--json", check=1).stdout)
    s2, t2 = document["revisions"]
    assert (s2["revision"], s2["branch"], s2["runs_in"]) == ("s2", "shared", 1)
    index = next(f for f in s2["findings"]
                 if f["rule"] == "require-concurrent-index-creation")
    assert index["tables"]["accounts"] == {
        "schema": "public", "rows": 10, "bytes": index["tables"][
            "accounts"]["bytes"], "shared": True}
    assert t2["revision"] == "t2" and t2["rendered"]
    assert t2["statements"] == 1
    assert not [f for f in t2["findings"] if "concurrent" in f["rule"]], (
        t2["findings"])


def test_a_revision_that_cannot_be_rendered_says_so(project, db):
    _tenants_with_rows(project, db)
    project.write_revision("tenant", "t2", "t1", """
        op.execute("SELECT 1/0")
        """)
    result = project.cli("lint", check=0)
    assert "t2 (tenant, runs in 2 tenant(s))" in result.stdout
    assert "could not be rendered" in result.stdout
    assert "division by zero" in result.stdout


def test_a_tenant_revision_needing_a_pending_shared_one(project, db):
    _tenants_with_rows(project, db)
    project.write_revision("shared", "s2", "s1", """
        op.create_table("plans", sa.Column("id", sa.Integer,
                                           primary_key=True))
        """)
    project.write_revision("tenant", "t2", "t1", """
        op.add_column("notes", sa.Column("plan_id", sa.Integer,
                      sa.ForeignKey("public.plans.id")))
        """)
    before = json.loads(project.cli("lint", "--json", check=0).stdout)
    t2 = before["revisions"][1]
    assert t2["revision"] == "t2" and not t2["rendered"]
    assert "plans" in t2["note"]

    project.run("upgrade", "shared", check=0)
    after = json.loads(project.cli("lint", "--json", check=1).stdout)
    [t2] = after["revisions"]
    assert [f["shared_tables_locked"] for f in t2["findings"]
            if f["rule"] == "tenant-locks-shared-table"] == [["public.plans"]]


def test_lint_errors_says_which_rules_are_errors(project, db):
    _tenants_with_rows(project, db)
    _risky_revisions(project)
    project.write_ini(**{"tenantmigrate.lint_errors": "changing-column-type"})

    document = json.loads(project.cli("lint", "--json", check=1).stdout)

    severities = {(r["revision"], f["rule"]): f["severity"]
                  for r in document["revisions"] for f in r["findings"]}
    assert severities[("t3", "changing-column-type")] == "error"
    assert severities[("t2", "require-concurrent-index-creation")] == (
        "warning")
    assert severities[("t4", "tenant-locks-shared-table")] == "warning"


def _shared_lock(document, revision):
    [finding] = [f for r in document["revisions"] if r["revision"] == revision
                 for f in r["findings"]
                 if f["rule"] == "tenant-locks-shared-table"]
    return finding


def test_a_foreign_key_that_checks_no_rows_is_a_warning(project, db):
    """The lock on the shared table is brief where PostgreSQL checks no
    existing rows: a new table, NOT VALID, a new column without a default,
    a tenant table empty in every tenant."""
    _tenants_with_rows(project, db)
    project.write_revision("tenant", "t2", "t1", """
        op.create_table("tags",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("account_id", sa.Integer,
                      sa.ForeignKey("public.accounts.id")))
        """)
    project.write_revision("tenant", "t3", "t2", """
        op.create_foreign_key("fk_notes_account", "notes", "accounts",
                              ["account_id"], ["id"],
                              referent_schema="public",
                              postgresql_not_valid=True)
        """)
    project.write_revision("tenant", "t4", "t3", """
        op.execute("ALTER TABLE notes ADD COLUMN owner_id integer "
                   "REFERENCES public.accounts (id)")
        """)
    project.write_revision("tenant", "t5", "t4", """
        op.create_foreign_key("fk_tags_account", "tags", "accounts",
                              ["account_id"], ["id"],
                              referent_schema="public")
        """)
    result = project.cli("lint", check=0)
    assert "0 error(s)" in result.stdout
    assert ("brief, it checks no existing rows (a new table)"
            in result.stdout)

    document = json.loads(project.cli("lint", "--json", check=0).stdout)
    for revision in ("t2", "t3", "t4", "t5"):
        finding = _shared_lock(document, revision)
        assert finding["severity"] == "warning", (revision, finding)
        assert finding["shared_tables_locked"] == ["public.accounts"]
        assert "blocks its writers" in finding["message"]
        assert "each time until that tenant commits" in finding["message"]
        # Nothing after it reads or rewrites a table in the transaction.
        assert finding["estimated_lock_seconds"] == 0.0
    assert "(NOT VALID)" in _shared_lock(document, "t3")["message"]
    assert "(a new column without a default)" in _shared_lock(
        document, "t4")["message"]
    assert "(tags is empty in every tenant)" in _shared_lock(
        document, "t5")["message"]

    # The same foreign key on tags once tags has rows: checked, an error.
    project.run("upgrade", "tenant@t4", check=0)
    with db.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO tenant_big.tags SELECT g, 1 "
            "FROM generate_series(1, 100) g")
        connection.exec_driver_sql("ANALYZE tenant_big.tags")
    finding = _shared_lock(json.loads(project.cli(
        "lint", "--json", check=1).stdout), "t5")
    assert finding["severity"] == "error"
    assert "checks the tenant table's existing rows" in finding["message"]
    assert "NOT VALID" in finding["help"]


def test_a_checked_foreign_key_is_an_error_with_its_lock_time(project, db):
    _tenants_with_rows(project, db)
    project.write_revision("tenant", "t2", "t1", """
        op.create_foreign_key("fk_notes_account", "notes", "accounts",
                              ["account_id"], ["id"],
                              referent_schema="public")
        """)
    # Later in the same transaction: a rewrite of notes, which keeps the
    # shared table locked; after an autocommit block, nothing does.
    project.write_revision("tenant", "t3", "t2", """
        op.alter_column("notes", "title", type_=sa.String(300))
        with op.get_context().autocommit_block():
            op.create_index("ix_notes_title", "notes", ["title"],
                            postgresql_concurrently=True)
        op.alter_column("notes", "account_id", type_=sa.BigInteger)
        """)
    document = json.loads(project.cli("lint", "--json", check=1).stdout)
    finding = _shared_lock(document, "t2")
    assert finding["severity"] == "error"
    notes = finding["tables"]["notes"]
    accounts = finding["tables"]["public.accounts"]
    assert notes["schema"] == "tenant_big" and notes["rows"] == 500
    checking = (notes["bytes"] + accounts["bytes"]) / BYTES_PER_SECOND
    [t3] = [r for r in document["revisions"] if r["revision"] == "t3"]
    [rewrite] = [f for f in t3["findings"]
                 if f["rule"] == "changing-column-type"
                 and f["statement_index"] == 0]
    assert finding["estimated_lock_seconds"] == pytest.approx(
        checking + rewrite["estimated_lock_seconds"], abs=0.002)
    assert "up to ~2 x that over the run" in finding["message"]


def test_empty_tenant_tables_make_a_checked_foreign_key_a_warning(
        project, db):
    project.write_revision("shared", "s1", None, """
        op.create_table("accounts",
            sa.Column("id", sa.Integer, primary_key=True))
        """)
    project.write_revision("tenant", "t1", None, """
        op.create_table("notes",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("account_id", sa.Integer))
        """)
    create_schemas(db, "tenant_a", "tenant_b")
    project.run("upgrade", check=0)
    project.write_revision("tenant", "t2", "t1", """
        op.create_foreign_key("fk_notes_account", "notes", "accounts",
                              ["account_id"], ["id"],
                              referent_schema="public")
        """)
    document = json.loads(project.cli("lint", "--json", check=0).stdout)
    assert _shared_lock(document, "t2")["severity"] == "warning"


def test_every_pending_path_is_linted_once(project, db):
    """Tenants at different revisions of a branchy history run different
    steps: each revision is linted once, counted for every tenant that
    runs it."""
    _tenants_with_rows(project, db)
    project.write_revision("tenant", "t2a", "t1", """
        op.create_index("ix_notes_title", "notes", ["title"])
        """)
    project.write_revision("tenant", "t2b", "t1", """
        op.add_column("notes", sa.Column("body", sa.Text))
        """)
    project.write_revision("tenant", "t3", ("t2a", "t2b"), """
        op.alter_column("notes", "account_id", type_=sa.BigInteger)
        """)
    project.run("upgrade", "tenant@t2a", "--tenant", "tenant_big", check=0)
    project.run("upgrade", "tenant@t2b", "--tenant", "tenant_small", check=0)

    document = json.loads(project.cli("lint", "--json", check=1).stdout)
    runs_in = {r["revision"]: r["runs_in"] for r in document["revisions"]}
    assert runs_in == {"t2a": 1, "t2b": 1, "t3": 2}
    # In the order of the history, whichever path found them.
    assert list(runs_in)[-1] == "t3"
    [t2a] = [r for r in document["revisions"] if r["revision"] == "t2a"]
    assert [f["rule"] for f in t2a["findings"]] == [
        "require-concurrent-index-creation"]


def test_upgrade_from_python_lints_first_and_renders_once(
        project, db, monkeypatch):
    from pyramid_tenantmigrate import commands
    from pyramid_tenantmigrate.engine import capture, program
    from pyramid_tenantmigrate.errors import LintRefused

    _tenants_with_rows(project, db)
    _risky_revisions(project)
    project.run("upgrade", "tenant@t2", "--tenant", "tenant_small", check=0)
    migrator = project.migrator(
        **{"tenantmigrate.lint_before_upgrade": "true"})
    captures = []

    def counting(migrator, steps, from_heads, branch="tenant"):
        captures.append((tuple(from_heads),
                         tuple(s.revision.revision for s in steps)))
        return capture.capture_steps(migrator, steps, from_heads, branch)

    monkeypatch.setattr(program, "capture_steps", counting)
    with pytest.raises(LintRefused) as refused:
        commands.upgrade(migrator)
    assert "revision t2 has 3 lint error(s)" in str(refused.value)
    assert refused.value.report.errors
    assert version_of(db, "tenant_big") == ["t1"]
    # Both groups' paths: tenant_big from t1 (t2 to t4), tenant_small
    # from t2 (its steps are already linted: not rendered by lint).
    assert captures == [(("t1",), ("t2", "t3", "t4"))]

    report = commands.upgrade(migrator, force=True)
    assert report.ok
    assert version_of(db, "tenant_big") == ["t4"]
    assert version_of(db, "tenant_small") == ["t4"]
    # The run rendered only the group lint had not: tenant_small's.
    assert captures == [(("t1",), ("t2", "t3", "t4")),
                        (("t2",), ("t3", "t4"))]


def test_the_gate_passes_warnings_and_runs_once_rendered(
        project, db, monkeypatch):
    from pyramid_tenantmigrate import commands
    from pyramid_tenantmigrate.engine import capture, program

    _tenants_with_rows(project, db)
    project.write_revision("tenant", "t2", "t1", """
        op.create_table("tags",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("account_id", sa.Integer,
                      sa.ForeignKey("public.accounts.id")))
        """)
    migrator = project.migrator(
        **{"tenantmigrate.lint_before_upgrade": "true"})
    captures = []

    def counting(migrator, steps, from_heads, branch="tenant"):
        captures.append(tuple(s.revision.revision for s in steps))
        return capture.capture_steps(migrator, steps, from_heads, branch)

    monkeypatch.setattr(program, "capture_steps", counting)
    report = commands.upgrade(migrator)
    assert report.ok
    assert version_of(db, "tenant_big") == ["t2"]
    assert captures == [("t2",)]


def test_shared_table_ddl_is_an_error_and_shared_rows_a_warning(
        project, db):
    _tenants_with_rows(project, db)
    project.write_revision("tenant", "t2", "t1", """
        op.execute("UPDATE public.accounts SET id = id WHERE id = 1")
        """)
    project.write_revision("tenant", "t3", "t2", """
        op.execute("LOCK TABLE public.accounts IN SHARE MODE")
        """)
    document = json.loads(project.cli("lint", "--json", check=1).stdout)
    rows, lock = _shared_lock(document, "t2"), _shared_lock(document, "t3")
    assert rows["severity"] == "warning"
    assert "writes rows of shared table(s) public.accounts" in rows[
        "message"]
    assert lock["severity"] == "error"
    assert "public.accounts itself" in lock["message"]


def test_the_startup_hook_is_gated_too(project, db):
    from pyramid_tenantmigrate.errors import StartupRefused
    from pyramid_tenantmigrate.startup import run_startup

    _tenants_with_rows(project, db)
    _risky_revisions(project)
    migrator = project.migrator(
        **{"tenantmigrate.lint_before_upgrade": "true"})
    with pytest.raises(StartupRefused, match="refusing to upgrade: "
                       "revision t2") as refused:
        run_startup(migrator, mode="all")
    assert "tenant-locks-shared-table" in str(refused.value)
    assert version_of(db, "tenant_big") == ["t1"]
