"""Citus mode (citus.py), on plain PostgreSQL.

Citus cannot be installed here. What stands in for it, in the test
database only: a ``pg_extension`` row naming ``citus`` (what detection
reads); ``pg_dist_partition`` and ``pg_dist_schema`` tables with the
columns used; ``create_reference_table(regclass)``, an SQL function of
Citus' signature recording its call and the reference table; and, for
Citus' utility hook registering a schema created while
``citus.enable_schema_based_sharding`` is on, an event trigger doing that
in ``pg_dist_schema``. They stand for the absent extension; PostgreSQL
itself is real. What is asserted is the SQL this package sends (every
statement psycopg2 executes, recorded by a cursor class set on each new
connection), the calls recorded, and the settings DDL ran with.
"""
import psycopg2.extensions
import pytest
import sqlalchemy as sa

from pyramid_tenantmigrate import clone_tenant, create_tenant
from pyramid_tenantmigrate.citus import (
    _DETECT,
    PROPAGATE_SET_LOCAL,
    SHARDING_BACK,
    SHARDING_ON,
    _Context,
    statement_findings,
)
from pyramid_tenantmigrate.engine import capture
from pyramid_tenantmigrate.errors import ConfigurationError
from pyramid_tenantmigrate.settings import parse_settings

from .conftest import create_schemas, schema_exists, version_of

STAND_INS = """
SET LOCAL allow_system_table_mods = on;
INSERT INTO pg_catalog.pg_extension
    (oid, extname, extowner, extnamespace, extrelocatable, extversion)
VALUES (4000000000, 'citus',
        (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user),
        'pg_catalog'::regnamespace, false, %(version)s);
CREATE TABLE pg_catalog.pg_dist_partition (
    logicalrelid regclass NOT NULL,
    partmethod "char" NOT NULL,
    colocationid integer DEFAULT 0 NOT NULL,
    repmodel "char" DEFAULT 'c' NOT NULL);
CREATE TABLE pg_catalog.pg_dist_schema (
    schemaid oid NOT NULL,
    colocationid integer GENERATED ALWAYS AS IDENTITY,
    relations integer);
CREATE TABLE public.citus_calls (n serial, fn text, arg text);
CREATE FUNCTION pg_catalog.create_reference_table(table_name regclass)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO pg_catalog.pg_dist_partition (logicalrelid, partmethod,
                                              repmodel)
    VALUES (table_name, 'n', 't');
    INSERT INTO public.citus_calls (fn, arg)
    VALUES ('create_reference_table', table_name::text) $$;
CREATE FUNCTION public.citus_create_schema() RETURNS event_trigger
LANGUAGE plpgsql AS $$ BEGIN
    IF current_setting('citus.enable_schema_based_sharding', true) = 'on'
    THEN
        INSERT INTO pg_catalog.pg_dist_schema (schemaid, relations)
        SELECT c.objid, (SELECT count(*) FROM pg_catalog.pg_class r
                         WHERE r.relnamespace = c.objid)
        FROM pg_event_trigger_ddl_commands() c
        WHERE c.object_type = 'schema';
    END IF;
END $$;
CREATE EVENT TRIGGER citus_create_schema ON ddl_command_end
    WHEN TAG IN ('CREATE SCHEMA')
    EXECUTE FUNCTION public.citus_create_schema();
"""

#: What the tenant transactions' DDL ran with (an event trigger): the
#: settings Citus would send on to the workers.
SEEN = """
CREATE TABLE public.citus_seen (
    n serial, tag text, schema text, propagate text, lock_timeout text,
    statement_timeout text, sharding text);
CREATE FUNCTION public.citus_seen_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $$ BEGIN
    INSERT INTO public.citus_seen (tag, schema, propagate, lock_timeout,
                                   statement_timeout, sharding)
    SELECT tg_tag, current_schema(),
           current_setting('citus.propagate_set_commands', true),
           current_setting('lock_timeout'),
           current_setting('statement_timeout'),
           current_setting('citus.enable_schema_based_sharding', true);
END $$;
CREATE EVENT TRIGGER citus_seen ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE INDEX')
    EXECUTE FUNCTION public.citus_seen_ddl();
"""


def install_stand_ins(db, version="12.1-1"):
    with db.begin() as connection:
        if not connection.exec_driver_sql(
                "SELECT rolsuper FROM pg_catalog.pg_roles "
                "WHERE rolname = current_user").scalar():
            pytest.skip("the Citus stand-ins need a superuser (a catalog "
                        "row, event triggers)")
        connection.exec_driver_sql(STAND_INS, {"version": version})


def calls(db):
    with db.connect() as connection:
        return [tuple(row) for row in connection.exec_driver_sql(
            "SELECT fn, arg FROM public.citus_calls ORDER BY n")]


def distributed(db):
    """The distributed schemas, by their names now, as registered:
    ``(name, relations it held then)``."""
    with db.connect() as connection:
        return [tuple(row) for row in connection.exec_driver_sql(
            "SELECT schemaid::regnamespace::text, relations "
            "FROM pg_catalog.pg_dist_schema ORDER BY colocationid")]


class SentLog(list):
    """What psycopg2 executed, in order; ``per_connection``: the same, for
    each connection (workers run side by side); ``capture``: on capture's
    connections."""

    def __init__(self):
        super().__init__()
        self.per_connection = {}
        self.capture = []

    def record(self, connection, query):
        self.append(query)
        self.per_connection.setdefault(id(connection), []).append(query)

    def of_connection_with(self, query):
        """The statements of the connection that sent ``query``."""
        for statements in self.per_connection.values():
            if query in statements:
                return statements
        raise AssertionError(f"not sent: {query}")

    def clear(self):
        del self[:]
        self.per_connection.clear()


@pytest.fixture
def sent():
    """Every statement psycopg2 executes on connections opened from now on
    (capture's own connections record theirs in ``sent.capture``)."""
    log = SentLog()

    class Recording(psycopg2.extensions.cursor):
        def execute(self, query, vars=None):
            log.record(self.connection, query)
            return super().execute(query, vars)

    def connect(dbapi_connection, record):
        dbapi_connection.cursor_factory = Recording

    original = capture._CaptureCursor.execute

    def capture_execute(self, query, vars=None, via_sqlalchemy=None):
        log.capture.append(query)
        return original(self, query, vars, via_sqlalchemy)

    sa.event.listen(sa.pool.Pool, "connect", connect)
    capture._CaptureCursor.execute = capture_execute
    try:
        yield log
    finally:
        capture._CaptureCursor.execute = original
        sa.event.remove(sa.pool.Pool, "connect", connect)


@pytest.fixture
def citus_project(project, db):
    """Citus mode forced on over the stand-ins; an app without the demo's
    TenantCreated subscriber."""
    install_stand_ins(db)
    project.app_factory = "call:tests.apps:main"
    project.settings["tenantmigrate.citus"] = "on"
    project.write_ini()
    return project


def write_revisions(project, reference=True, commit_in_t3=False):
    """Shared: accounts (a reference table when ``reference``). Tenant:
    notes with a foreign key to public.accounts, then a column and an
    index; with ``commit_in_t3`` a revision that commits by itself."""
    project.write_revision("shared", "s1", None, """
        op.create_table("accounts",
            sa.Column("id", sa.Integer, primary_key=True))
        """ + ('op.execute("SELECT create_reference_table(\'accounts\')")'
               if reference else ""), 'op.drop_table("accounts")')
    project.write_revision("tenant", "t1", None, """
        op.create_table("notes",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("account_id", sa.Integer,
                      sa.ForeignKey("public.accounts.id")),
            sa.Column("title", sa.Text))
        """, 'op.drop_table("notes")')
    project.write_revision("tenant", "t2", "t1", """
        op.add_column("notes", sa.Column("pinned", sa.Boolean))
        op.create_index("ix_notes_pinned", "notes", ["pinned"])
        """, 'op.drop_column("notes", "pinned")')
    if commit_in_t3:
        project.write_revision("tenant", "t3", "t2", """
            op.execute("COMMIT")
            op.create_table("after_commit",
                sa.Column("id", sa.Integer, primary_key=True))
            """, 'op.drop_table("after_commit")')


# The setting.

def test_the_setting_defaults_to_auto_and_refuses_other_values(project):
    base = {"tenantmigrate.script_location": project.migrations,
            "sqlalchemy.url": project.database_url}
    assert parse_settings(base).citus == "auto"
    assert parse_settings(dict(base, **{
        "tenantmigrate.citus": " ON "})).citus == "on"
    with pytest.raises(ConfigurationError, match=r"tenantmigrate\.citus"):
        parse_settings(dict(base, **{"tenantmigrate.citus": "yes"}))


# Detection.

def test_auto_finds_no_citus_on_plain_postgresql_and_changes_nothing(
        project, db, sent):
    write_revisions(project, reference=False)
    create_schemas(db, "tenant_a")
    project.run("upgrade", check=0)
    # Asked once per migrator; nothing else of Citus is sent.
    assert [sql for sql in sent if "citus" in sql] == [_DETECT]
    migrator = project.migrator()
    assert migrator.citus.version() is None
    assert migrator.citus.enabled() is False
    # Statements still go in one round trip per schema, as without Citus.
    batched = [sql for sql in sent
               if 'SET LOCAL search_path TO "tenant_a"' in sql]
    assert batched and all(";" in sql for sql in batched)
    assert version_of(db, "tenant_a") == ["t2"]


def test_on_without_citus_exits_2_naming_the_setting(project, db):
    write_revisions(project, reference=False)
    create_schemas(db, "tenant_a")
    project.app_factory = "call:tests.apps:main"
    project.write_ini(**{"tenantmigrate.citus": "on"})
    result = project.run("upgrade", check=2)
    assert "tenantmigrate.citus = on" in result.stderr
    assert "no citus extension" in result.stderr
    assert version_of(db, "public") is None  # nothing ran
    result = project.run("create-tenant", "tenant_new", check=2)
    assert "tenantmigrate.citus = on" in result.stderr
    assert not schema_exists(db, "tenant_new")


def test_citus_older_than_12_is_refused_when_on_and_left_alone_in_auto(
        project, db):
    install_stand_ins(db, version="11.3-1")
    write_revisions(project, reference=False)
    project.app_factory = "call:tests.apps:main"
    project.write_ini(**{"tenantmigrate.citus": "on"})
    result = project.run("upgrade", check=2)
    assert "citus 11.3-1, older than 12.0" in result.stderr
    project.write_ini(**{"tenantmigrate.citus": "auto"})
    project.run("upgrade", check=0)
    project.run("create-tenant", "tenant_new", check=0)
    assert distributed(db) == []


# Distributed schemas.

def test_every_tenant_schema_the_tool_creates_is_a_distributed_schema(
        citus_project, db, sent):
    project = citus_project
    write_revisions(project)
    with db.begin() as connection:
        connection.exec_driver_sql(SEEN)
    project.run("upgrade", check=0)
    assert calls(db) == [("create_reference_table", "accounts")]
    migrator = project.migrator()
    create_tenant(migrator, "tenant_new")
    clone_tenant(migrator, "tenant_new", "tenant_copy")
    # Spare schemas: distributed when made; a claim renames one, and a
    # renamed distributed schema stays distributed (Citus' regression
    # test renames tenant schemas: schema_based_sharding.sql).
    project.settings["tenantmigrate.spare_schemas"] = "1"
    project.write_ini()
    project.run("fill-spares", check=0)
    spare = distributed(db)[-1][0]
    assert spare.startswith("tenantmigrate_spare_")
    create_tenant(project.migrator(), "tenant_spare")
    assert not schema_exists(db, spare)
    # A schema the tenant source lists but the database lacks.
    project.write_ini(**{
        "tenantmigrate.spare_schemas": "0",
        "tenantmigrate.tenant_schema_prefix": None,
        "tenantmigrate.tenant_schemas_query":
            "SELECT unnest(ARRAY['tenant_new', 'tenant_missing'])"})
    sent.clear()
    project.run("upgrade", "--create-missing", check=0)
    # Registered as it was created, empty; the spare under its new name.
    assert distributed(db) == [("tenant_new", 0), ("tenant_copy", 0),
                               ("tenant_spare", 0), ("tenant_missing", 0)]
    statements = sent.of_connection_with('CREATE SCHEMA "tenant_missing"')
    created = statements.index('CREATE SCHEMA "tenant_missing"')
    assert statements[created - 2:created + 2] == [
        *SHARDING_ON, 'CREATE SCHEMA "tenant_missing"', SHARDING_BACK]
    for schema in ("tenant_new", "tenant_copy", "tenant_spare",
                   "tenant_missing"):
        assert version_of(db, schema) == ["t2"], schema
    # Sharding was on for CREATE SCHEMA only: the tables after it, in the
    # same transaction, saw it as it was before (off).
    with db.connect() as connection:
        assert {row[0] for row in connection.exec_driver_sql(
            "SELECT sharding FROM public.citus_seen "
            "WHERE starts_with(schema, 'tenant')")} == {"off"}
    migrator.close()


# SET LOCAL reaching the workers.

def test_each_tenant_transaction_propagates_its_set_local_first(
        citus_project, db, sent):
    project = citus_project
    write_revisions(project, commit_in_t3=True)
    with db.begin() as connection:
        connection.exec_driver_sql(SEEN)
    create_schemas(db, "tenant_a", "tenant_b")
    project.write_ini(**{"tenantmigrate.statement_timeout": "5min"})
    project.run("upgrade", check=0)
    for schema in ("tenant_a", "tenant_b"):
        assert version_of(db, schema) == ["t3"]
        # Propagation on, then the SET LOCALs, each a query of its own.
        path = f'SET LOCAL search_path TO "{schema}"'
        statements = sent.of_connection_with(path)
        first = statements.index(path)
        assert statements[first - 1:first + 3] == [
            PROPAGATE_SET_LOCAL,
            f'SET LOCAL search_path TO "{schema}"',
            "SET LOCAL lock_timeout = 3000",
            "SET LOCAL statement_timeout = 300000"]
    # No SET LOCAL of a tenant's transaction shares its query text with
    # another statement (Citus would send the whole text on).
    for sql in sent:
        if 'search_path TO "tenant_' in sql or "citus." in sql:
            assert ";" not in sql, sql
    with db.connect() as connection:
        seen = connection.exec_driver_sql(
            "SELECT tag, schema, propagate, lock_timeout, statement_timeout"
            " FROM public.citus_seen WHERE starts_with(schema, 'tenant') "
            "ORDER BY n").fetchall()
    # Every tenant DDL ran with propagation on and the run's timeouts,
    # after t3's own COMMIT too (a new transaction, set up again).
    assert {row[0] for row in seen} == {"CREATE TABLE", "ALTER TABLE",
                                       "CREATE INDEX"}
    assert len([row for row in seen if row[0] == "CREATE TABLE"]) == 6
    assert {row[2:] for row in seen} == {("local", "3s", "5min")}
    # Capture renders in a regular scratch schema even where the cluster
    # distributes every new schema.
    assert ("SET LOCAL citus.enable_schema_based_sharding = off"
            in sent.capture)
    # A sign-up's transaction is the app's: no propagation set there (its
    # later statements would reach the workers with the tool's timeouts),
    # but still one statement per query.
    sent.clear()
    migrator = project.migrator()
    create_tenant(migrator, "tenant_c")
    migrator.close()
    assert PROPAGATE_SET_LOCAL not in sent
    assert 'SET LOCAL search_path TO "tenant_c"' in sent
    with db.connect() as connection:
        assert {row[0] for row in connection.exec_driver_sql(
            "SELECT propagate FROM public.citus_seen "
            "WHERE schema = 'tenant_c'")} <= {None, ""}


# Plan-time checks.

def test_a_foreign_key_to_a_local_shared_table_refuses_the_upgrade(
        citus_project, db):
    project = citus_project
    write_revisions(project, reference=False)
    project.run("upgrade", "shared", check=0)
    create_schemas(db, "tenant_a")
    result = project.run("upgrade", check=2)
    assert "refusing to upgrade in Citus mode" in result.stderr
    assert "revision t1, statement 1 (CREATE TABLE notes" in result.stderr
    assert "statement 1: CREATE TABLE notes" in result.stderr
    assert "REFERENCES public.accounts" in result.stderr
    assert "public.accounts, which is not a reference table" in (
        result.stderr)
    assert "nothing was run" in result.stderr
    assert version_of(db, "tenant_a") is None
    with db.connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT count(*) FROM public.tenantmigrate_runs "
            "WHERE command = 'upgrade' AND target = 'heads'").scalar() == 0
    # lint says the same, as a rule of its own.
    result = project.run("lint", check=1)
    assert "error: citus-foreign-key-to-non-reference-table" in (
        result.stdout)
    # Once it is a reference table, the upgrade runs.
    with db.begin() as connection:
        connection.exec_driver_sql(
            "SELECT create_reference_table('public.accounts')")
    project.run("upgrade", check=0)
    assert version_of(db, "tenant_a") == ["t2"]


def test_a_shared_table_of_the_same_deploy_is_checked_after_the_shared_branch(
        citus_project, db):
    project = citus_project
    write_revisions(project, reference=False)
    create_schemas(db, "tenant_a")
    # accounts does not exist yet: t1 cannot be rendered before s1 runs.
    result = project.run("upgrade", check=2)
    assert "revision t1" in result.stderr
    assert ("the shared branch was upgraded, no tenant was migrated"
            in result.stderr)
    assert version_of(db, "public") == ["s1"]
    assert version_of(db, "tenant_a") is None


def test_a_reference_table_made_in_the_same_deploy_passes(citus_project, db):
    project = citus_project
    write_revisions(project, reference=True)
    create_schemas(db, "tenant_a")
    result = project.run("upgrade", check=0)
    assert version_of(db, "tenant_a") == ["t2"]
    assert "citus:" not in result.stdout


def test_propagation_set_for_the_whole_role_is_warned_about(citus_project,
                                                             db):
    project = citus_project
    write_revisions(project, reference=True)
    create_schemas(db, "tenant_a")
    database = db.url.database
    with db.begin() as connection:
        connection.exec_driver_sql(
            f'ALTER DATABASE "{database}" SET '
            "citus.propagate_set_commands = 'local'")
    result = project.run("upgrade", check=0)
    assert ("citus: citus.propagate_set_commands is 'local' for the deploy "
            "role's sessions") in result.stdout


# The rules, on statements from Citus' regression test
# (schema_based_sharding.sql), written as a tenant revision sends them:
# the tenant's own schema unqualified.

CONTEXT = {("public", "plans"): (True, True),
           ("public", "accounts"): (True, False)}


def rules(sql, sharding=False, replication=1):
    context = _Context("public", dict(CONTEXT), replication, sharding)
    return [(f.severity, f.rule) for f in
            statement_findings("r1", 0, sql, context)]


@pytest.mark.parametrize("sql, expected", [
    ("CREATE TABLE notes (id int, account_id int REFERENCES "
     "public.accounts (id))",
     ("error", "citus-foreign-key-to-non-reference-table")),
    ("ALTER TABLE notes ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES "
     '"public"."Later"(id)',
     ("warning", "citus-foreign-key-to-non-reference-table")),
    ("CREATE FOREIGN TABLE foreign_table (id bigint not null) SERVER "
     "fake_fdw_server OPTIONS (encoding 'utf-8')",
     ("error", "citus-foreign-table")),
    ("CREATE TABLE employees OF employee_type (PRIMARY KEY (name), salary "
     "WITH OPTIONS DEFAULT 1000)", ("error", "citus-create-table-of-type")),
    ("CREATE TABLE test_table_inherits_1(x int) INHERITS (tbl_1)",
     ("error", "citus-inherits")),
    ("CREATE TABLE partitioned_table_child_2 PARTITION OF "
     "public.local_partitioned_table FOR VALUES FROM (1) TO (2)",
     ("error", "citus-partition-across-schemas")),
    ("CREATE TABLE multi_level_test PARTITION OF parent_attach_test FOR "
     "VALUES FROM (1) TO (2) PARTITION BY RANGE (a)",
     ("error", "citus-multi-level-partitioning")),
    ("ALTER TABLE parent_attach_test ATTACH PARTITION "
     "public.child_attach_test_local FOR VALUES FROM (1) TO (2)",
     ("error", "citus-partition-across-schemas")),
    ("ALTER TABLE public.parent_attach_test_local ATTACH PARTITION "
     "child_attach_test FOR VALUES FROM (1) TO (2)",
     ("error", "citus-partition-across-schemas")),
    ("ALTER TABLE tenant_tbl SET SCHEMA public",
     ("warning", "citus-set-schema")),
    ("SET LOCAL statement_timeout = '1h'; UPDATE notes SET pinned = false",
     ("error", "citus-one-statement-per-query")),
    ("CREATE TRIGGER t BEFORE INSERT ON notes FOR EACH ROW EXECUTE "
     "FUNCTION f();\nCREATE INDEX ix ON notes (a)",
     ("error", "citus-one-statement-per-query")),
    ("CREATE SCHEMA schema_using_schema_elements CREATE TABLE "
     "test_table(a int, b text)",
     ("warning", "citus-create-schema-with-table")),
])
def test_what_citus_refuses_is_found(sql, expected):
    assert rules(sql) == [expected]


def test_settings_of_the_database_decide_some_rules():
    assert rules("CREATE SCHEMA s CREATE TABLE t (a int)", sharding=True) == [
        ("error", "citus-create-schema-with-table")]
    assert rules("CREATE TABLE tbl_3 (a int)", replication=2) == [
        ("error", "citus-shard-replication-factor")]


@pytest.mark.parametrize("sql", [
    "CREATE TABLE notes (a int REFERENCES public.plans (id))",
    "CREATE TABLE tbl_4 (a int REFERENCES tbl_3 (a) ON DELETE CASCADE)",
    "CREATE TABLE test_table_like_2 (LIKE public.tbl_1)",
    "CREATE UNLOGGED TABLE IF NOT EXISTS tbl_4 AS SELECT 1 as a, 'text' as b"
    " WITH NO DATA",
    "CREATE TEMP TABLE scratch (a int) INHERITS (notes)",
    "CREATE TABLE partitioned_table_child_1 PARTITION OF partitioned_table "
    "FOR VALUES FROM (1) TO (2)",
    "ALTER TABLE parent_attach_test ATTACH PARTITION child_attach_test FOR "
    "VALUES FROM (1) TO (2)",
    "COMMENT ON TABLE notes IS 'REFERENCES public.accounts; SET LOCAL x'",
    "-- REFERENCES public.accounts\nCREATE TABLE x (a int)",
    "DO $$ BEGIN SET LOCAL work_mem = '1GB'; PERFORM 1; END $$",
    "UPDATE notes SET title = 'x'; UPDATE notes SET pinned = true",
    "SET LOCAL statement_timeout = '1h'",
    "CREATE INDEX ix_notes_pinned ON notes (pinned)",
])
def test_what_citus_accepts_is_not_flagged(sql):
    assert rules(sql) == []
