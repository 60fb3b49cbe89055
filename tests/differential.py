"""Running one tenant history through tenant-migrate and through plain
Alembic, and comparing what each leaves: catalogs and data.

*Plain Alembic* is what people run without this package: an ordinary
``env.py`` that points ``search_path`` at one schema, keeps the version
table there, and lets Alembic own the transaction.
"""
import os
import shutil
import textwrap

import sqlalchemy as sa
from alembic import command as alembic_command
from alembic.config import Config

from pyramid_tenantmigrate import commands
from pyramid_tenantmigrate.names import quote_schema

from .conftest import catalog_snapshot

CORPUS = os.path.join(os.path.dirname(__file__), "corpus")

PLAIN_ENV = '''
from alembic import context
from sqlalchemy import create_engine

config = context.config
schema = config.attributes["schema"]
path = ", ".join('"%s"' % s for s in [schema, *config.attributes["extra"]])
engine = create_engine(config.attributes["url"])
with engine.connect() as connection:
    connection.exec_driver_sql("SET search_path TO " + path)
    connection.commit()
    context.configure(connection=connection, version_table_schema=schema,
                      **config.attributes.get("options", {}))
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
'''


def install_corpus(project, tenant_dir=None, shared_dir=None):
    """Copy revision files into the project's versions folders."""
    for branch, source in (("shared", shared_dir or os.path.join(
            CORPUS, "shared")), ("tenant", tenant_dir or os.path.join(
                CORPUS, "tenant"))):
        target = os.path.join(project.migrations, "versions", branch)
        for name in sorted(os.listdir(source)):
            if name.endswith(".py"):
                shutil.copy(os.path.join(source, name), target)


class PlainAlembic:
    """Plain Alembic over the tenant branch of a project, one schema at a
    time."""

    def __init__(self, project, tmp_path, extra_search_path=(),
                 options=None):
        self.project = project
        self.folder = os.path.join(str(tmp_path), "plain")
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, "env.py"), "w") as f:
            f.write(textwrap.dedent(PLAIN_ENV))
        shutil.copy(os.path.join(project.migrations, "script.py.mako"),
                    self.folder)
        self.extra = list(extra_search_path)
        self.options = options or {}

    def config(self, schema):
        config = Config()
        config.set_main_option("script_location", self.folder)
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_locations", os.path.join(
            self.project.migrations, "versions", "tenant"))
        config.attributes.update(schema=schema, extra=self.extra,
                                 url=self.project.database_url,
                                 options=self.options)
        return config

    def upgrade(self, schema, target="tenant@head"):
        alembic_command.upgrade(self.config(schema), target)

    def downgrade(self, schema, target):
        alembic_command.downgrade(self.config(schema), target)


def tool_upgrade(migrator, schemas, target="tenant@head", **options):
    report = commands.upgrade(migrator, target, tenants=tuple(schemas),
                              **options)
    assert report.ok, report.render_text()
    return report


def tool_downgrade(migrator, schemas, target, **options):
    report = commands.downgrade(migrator, target, tenants=tuple(schemas),
                                **options)
    assert report.ok, report.render_text()
    return report


def data_of(engine, schema):
    """Every row of every table of ``schema`` (timestamps left out: they
    differ from run to run), and each sequence's position."""
    result = {}
    with engine.connect() as connection:
        tables = connection.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = :s "
            "ORDER BY tablename"), {"s": schema}).scalars().all()
        for table in tables:
            columns = connection.execute(sa.text(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = :s AND table_name = :t AND data_type "
                "NOT LIKE 'timestamp%' ORDER BY ordinal_position"),
                {"s": schema, "t": table}).scalars().all()
            if not columns:
                continue
            listed = ", ".join(quote_schema(c) for c in columns)
            rows = connection.exec_driver_sql(
                f"SELECT {listed} FROM {quote_schema(schema)}."
                f"{quote_schema(table)} ORDER BY {listed}").fetchall()
            result[table] = [tuple(map(repr, row)) for row in rows]
        result["sequences"] = connection.execute(sa.text(
            "SELECT sequencename, last_value FROM pg_sequences "
            "WHERE schemaname = :s ORDER BY 1"), {"s": schema}).fetchall()
    return result


def objects_of(engine, schema):
    """Views, functions, triggers and comments of ``schema``, its name
    replaced so that two schemas compare."""
    def clean(value):
        return str(value).replace(f'"{schema}".', "<s>.").replace(
            f"{schema}.", "<s>.")

    with engine.connect() as connection:
        def rows(sql):
            return sorted(tuple(clean(v) for v in row) for row in
                          connection.execute(sa.text(sql), {"s": schema}))
        return {
            "views": rows("SELECT viewname, definition FROM pg_views "
                          "WHERE schemaname = :s"),
            "functions": rows(
                "SELECT p.proname, pg_get_function_arguments(p.oid), "
                "p.prosrc FROM pg_proc p JOIN pg_namespace n ON "
                "n.oid = p.pronamespace WHERE n.nspname = :s"),
            "triggers": rows(
                "SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
                "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON "
                "n.oid = c.relnamespace WHERE n.nspname = :s "
                "AND NOT t.tgisinternal"),
            "comments": rows(
                "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM "
                "pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :s AND obj_description(c.oid, "
                "'pg_class') IS NOT NULL"),
        }


def state_of(engine, schema):
    """Everything compared: catalog, other objects, data."""
    return {"catalog": catalog_snapshot(engine, schema),
            "objects": objects_of(engine, schema),
            "data": data_of(engine, schema)}


def assert_same(engine, pairs, when):
    """Each (tool schema, plain schema) pair holds the same."""
    for ours, theirs in pairs:
        mine, reference = state_of(engine, ours), state_of(engine, theirs)
        for part in mine:
            assert mine[part] == reference[part], (
                f"{when}: {ours} differs from plain Alembic's {theirs} in "
                f"{part}:\n  tool:  {mine[part]}\n  plain: {reference[part]}")
