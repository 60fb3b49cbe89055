"""Offline mode (``--sql``): the SQL a run would send, one section per schema.

Each section starts with ``SET LOCAL search_path`` to its schema and goes
from the schema's current revision (read from the database) to the target,
or from ``start`` for a ``start:end`` target (then, with ``--tenant``, no
database is needed at all). Alembic renders it, with ``env.py``'s offline
options, as ``alembic upgrade --sql`` does; nothing is run and no lock is
taken.
"""
from alembic.runtime.environment import EnvironmentContext

from ..environment import configure_options
from ..names import quote_schema
from ..plan import SHARED, StepPlanner, plan_branch
from ..report import (
    RENDERED,
    UP_TO_DATE,
    BranchReport,
    RunReport,
    SchemaResult,
)
from ..tenants import select_tenants
from ..versions import SchemaVersion
from .sql import search_path_sql


def _revs(heads):
    return ",".join(heads) if heads else "base"


def render_run(migrator, operation, destinations, start, options):
    """Write the SQL of ``operation`` to ``options.output``; return a
    report whose schemas are ``rendered``."""
    report = RunReport(operation, config_uri=options.config_uri)
    for branch, destination in destinations:
        planner = StepPlanner(migrator.script, operation, destination)
        schemas, versions, rejected = _versions(migrator, branch, start,
                                                options)
        plan = plan_branch(planner, branch, versions, schemas)
        branch_report = BranchReport(branch, operation, destination)
        for schema_plan in plan.current:
            branch_report.results.append(SchemaResult(
                schema_plan.schema, UP_TO_DATE, schema_plan.from_heads,
                schema_plan.to_heads))
        for schema_plan in plan.pending:
            _render_schema(migrator, branch, operation, destination,
                           schema_plan, options.output)
            branch_report.results.append(SchemaResult(
                schema_plan.schema, RENDERED, schema_plan.from_heads,
                schema_plan.to_heads, revisions=schema_plan.revisions))
        for name, reason in rejected.items():
            branch_report.results.append(SchemaResult(name, "rejected",
                                                      error=reason))
        report.branches.append(branch_report)
    return report.finish()


def _versions(migrator, branch, start, options):
    """``(schemas, versions, rejected)``: from the database, or as the
    ``start`` of a range says."""
    if start is not None and (branch == SHARED or options.tenants):
        schemas = ([migrator.shared_schema] if branch == SHARED else
                   select_tenants(list(options.tenants),
                                  migrator.shared_schema,
                                  only=options.tenants,
                                  exclude=options.exclude_tenants).schemas)
        heads = (start,) if start != "base" else ()
        return schemas, {s: SchemaVersion(s, True, heads, bool(heads))
                         for s in schemas}, {}
    rejected = {}
    with migrator.connect() as connection:
        if branch == SHARED:
            schemas = [migrator.shared_schema]
        else:
            selection = select_tenants(
                migrator.discover_tenants(connection),
                migrator.shared_schema, only=options.tenants,
                exclude=options.exclude_tenants, shard=options.shard)
            schemas, rejected = selection.schemas, selection.rejected
        versions = migrator.read_versions(connection, schemas)
    if start is not None:
        heads = (start,) if start != "base" else ()
        versions = {s: SchemaVersion(s, v.exists, heads, bool(heads))
                    for s, v in versions.items()}
    return schemas, versions, rejected


def _render_schema(migrator, branch, operation, destination, schema_plan,
                   out):
    schema = schema_plan.schema
    out.write(f"\n-- {branch} schema {schema}: {operation} "
              f"{_revs(schema_plan.from_heads)} -> "
              f"{_revs(schema_plan.to_heads)}\n")
    if not schema_plan.exists:
        out.write(f"CREATE SCHEMA IF NOT EXISTS {quote_schema(schema)};\n\n")
    env = EnvironmentContext(
        migrator.alembic_config, migrator.script,
        fn=StepPlanner(migrator.script, operation, destination),
        as_sql=True, destination_rev=destination)
    options = configure_options(
        migrator, schema, branch, migrator.env_options(as_sql=True),
        dialect_name="postgresql",
        # Without it '%' is doubled in the output (psycopg2 pyformat).
        dialect_opts={"paramstyle": "named"},
        as_sql=True, literal_binds=True, output_buffer=out,
        starting_rev=",".join(schema_plan.from_heads) or None)
    with env:
        env.configure(**options)
        with env.begin_transaction():
            env.execute(search_path_sql(
                schema, migrator.settings.extra_search_path))
            env.run_migrations()
