"""Autogenerate for both branches, without churn, and the ``check`` command.

Which branch an object belongs to is decided by its table's schema:

- **shared**: tables of ``tenantmigrate.shared_metadata`` whose schema is
  the shared schema (``Table(..., schema="public")``); compared against the
  shared schema only, never against a tenant schema;
- **tenant**: tables of ``tenantmigrate.tenant_metadata`` without a schema;
  compared against a *scratch schema* brought to ``tenant@head``, so the
  real tenants are never read or touched, and it works with no tenant at
  all.

Both settings may name the same ``MetaData`` (one declarative base). Tables
in any other schema are left out of both branches.

Every comparison runs in one transaction that is rolled back at the end:

1. the shared schema must be at ``shared@head`` (otherwise
   :class:`~pyramid_tenantmigrate.errors.NotUpToDate`, as Alembic's "Target
   database is not up to date"); it is never migrated here;
2. a scratch schema is created whose name no tenant can have;
3. for the tenant branch, the scratch schema is migrated to ``tenant@head``
   through Alembic, as ``alembic upgrade`` would (:mod:`.scratch`, which
   ``doctor`` uses too);
4. Alembic compares with the scratch schema *alone* on ``search_path``. So a
   reflected tenant table has no schema (as the tenant models), a foreign
   key to a tenant table has no schema, and a foreign key to a shared table
   reflects as ``public.accounts`` because ``public`` is not on the path (as
   ``ForeignKey("public.accounts.id")`` in the models). That is what keeps
   foreign keys from being dropped and re-created on every run. The shared
   branch is reflected by its explicit schema name, for the same reason;
5. the transaction is rolled back: the scratch schema is gone.

Alembic's autogenerate takes the connection's *default schema* from the
dialect, once per engine: ``public``. That would fold ``public.accounts``
into the tenant tables. Comparisons therefore run on a private engine
whose dialect is told the truth: the default schema is the scratch schema.
"""
from alembic.autogenerate import RevisionContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy import types as sa_types
from sqlalchemy.pool import NullPool

from .engine.sql import search_path_sql
from .environment import AlembicSession
from .errors import ConfigurationError, NotUpToDate
from .names import quote_schema
from .plan import SHARED, TENANT, branch_heads
from .reserved import OWN_TABLES
from .scratch import build_scratch, scratch_schema_name
from .settings import PREFIX


def branch_metadata(settings, branch):
    """The ``MetaData`` the models of ``branch`` are declared in.

    Raises :class:`~pyramid_tenantmigrate.errors.ConfigurationError` naming
    the setting when it is not set, or when a separate shared ``MetaData``
    holds a table without a schema.
    """
    name = f"{branch}_metadata"
    metadata = getattr(settings, name)
    if metadata is None:
        raise ConfigurationError(
            f"setting {PREFIX}{name} is missing: autogenerate and check "
            f"compare the {branch} models with the database; set it to the "
            "dotted name of their MetaData (e.g. myapp.models:Base.metadata)")
    if not hasattr(metadata, "sorted_tables"):
        raise ConfigurationError(
            f"setting {PREFIX}{name} must name a sqlalchemy MetaData, got "
            f"{type(metadata).__name__}")
    tenant_metadata = settings.tenant_metadata
    if (branch == SHARED and tenant_metadata is not None
            and tenant_metadata is not metadata):
        # A MetaData of its own for shared models: a table in it without a
        # schema would silently belong to no branch. (Shared tables in the
        # tenant MetaData are fine: tenant foreign keys resolve to them.)
        schemaless = sorted(t.name for t in metadata.sorted_tables
                            if t.schema is None)
        if schemaless:
            raise ConfigurationError(
                f"tables in {PREFIX}{name} need "
                f"schema={settings.shared_schema!r} to belong to the shared "
                f"branch: {', '.join(schemaless)}")
    return metadata


def belongs_to(branch, schema, shared_schema):
    """Tell whether a table in ``schema`` belongs to ``branch``."""
    if branch == SHARED:
        return schema == shared_schema
    return schema is None


def require_shared_at_head(migrator, connection):
    """Stop with :class:`NotUpToDate` unless the shared schema is at the
    shared branch's head. The tenant comparison builds on the shared
    schema as it is, and the shared one compares it, so both need it."""
    settings = migrator.settings
    context = MigrationContext.configure(connection, opts={
        "version_table": settings.version_table,
        "version_table_schema": settings.shared_schema,
    })
    current = frozenset(context.get_current_heads())
    head = frozenset(branch_heads(migrator.script, SHARED))
    if current != head:
        raise NotUpToDate(
            f"Target database is not up to date: the shared schema "
            f"{settings.shared_schema} is at "
            f"{','.join(sorted(current)) or 'base'}, the shared branch's head "
            f"is {','.join(sorted(head)) or 'base'}; run "
            "'tenant-migrate <ini> upgrade shared' first")


class BranchComparison:
    """Alembic's ``fn`` for one comparison: runs autogenerate into a
    ``RevisionContext`` on the scratch schema's search path and returns no
    migration step, as ``alembic.command.revision`` does."""

    def __init__(self, migrator, branch, scratch, revision_context):
        self.migrator = migrator
        self.branch = branch
        self.scratch = scratch
        self.revision_context = revision_context

    def include_name(self, name, type_, parent_names):
        settings = self.migrator.settings
        if type_ == "schema":
            # Only the shared schema (shared), only the default schema, that
            # is the scratch one (tenant): tenants are never reflected.
            return name == (settings.shared_schema if self.branch == SHARED
                            else None)
        if type_ == "table":
            # This package's own tables are not the models' business.
            return name not in (settings.version_table, *OWN_TABLES)
        return True

    def include_object(self, obj, name, type_, reflected, compare_to):
        if type_ == "table":
            return belongs_to(self.branch, obj.schema,
                              self.migrator.settings.shared_schema)
        return True

    def render_item(self, type_, obj, autogen_context):
        """Render a shared enum type used by a tenant column so that the
        tenant revision does not try to create it again: the shared branch
        owns it (``postgresql.ENUM(..., create_type=False)``)."""
        shared_schema = self.migrator.settings.shared_schema
        if (self.branch == TENANT and type_ == "type"
                and isinstance(obj, sa_types.Enum)
                and obj.schema == shared_schema):
            autogen_context.imports.add(
                "from sqlalchemy.dialects import postgresql")
            values = ", ".join(repr(v) for v in obj.enums)
            return (f"postgresql.ENUM({values}, name={obj.name!r}, "
                    f"schema={obj.schema!r}, create_type=False)")
        return False

    def _filters(self, opts):
        # env.py's own include_name / include_object still apply, after ours.
        user_name = opts.get("include_name")
        user_object = opts.get("include_object")

        def include_name(name, type_, parent_names):
            return self.include_name(name, type_, parent_names) and (
                user_name is None or user_name(name, type_, parent_names))

        def include_object(obj, name, type_, reflected, compare_to):
            return self.include_object(
                obj, name, type_, reflected, compare_to) and (
                user_object is None
                or user_object(obj, name, type_, reflected, compare_to))

        user_render = opts.get("render_item")

        def render_item(type_, obj, autogen_context):
            rendered = self.render_item(type_, obj, autogen_context)
            if rendered is False and user_render is not None:
                rendered = user_render(type_, obj, autogen_context)
            return rendered

        return include_name, include_object, render_item

    def __call__(self, rev, context):
        script = self.migrator.script
        if frozenset(rev) != frozenset(branch_heads(script, self.branch)):
            raise NotUpToDate(
                f"Target database is not up to date: {self.branch} is at "
                f"{','.join(rev) or 'base'}")
        connection = context.connection
        # The scratch schema alone: public objects are never taken for
        # tenant objects, and references to them keep their schema.
        connection.exec_driver_sql(search_path_sql(self.scratch))
        opts = context.opts
        (opts["include_name"], opts["include_object"],
         opts["render_item"]) = self._filters(opts)
        opts["include_schemas"] = self.branch == SHARED
        # Alembic's check is "the database is at heads"; a schema holds one
        # branch, whose head was checked above.
        self.revision_context.run_autogenerate(tuple(script.get_heads()),
                                               context)
        return []


def _comparison_engine(migrator):
    # A private engine, so that setting its dialect's default schema (see
    # the module docstring) changes nothing for anyone else.
    return create_engine(migrator.engine.url, poolclass=NullPool)


def compare_branch(migrator, branch, revision_context):
    """Run autogenerate for ``branch`` into ``revision_context``.

    Everything happens in one transaction that is rolled back: nothing is
    left in the database, and no tenant schema is read.
    """
    if branch not in (SHARED, TENANT):
        raise ValueError(f"unknown branch {branch!r}")
    settings = migrator.settings
    branch_metadata(settings, branch)
    scratch = scratch_schema_name()
    engine = _comparison_engine(migrator)
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            try:
                require_shared_at_head(migrator, connection)
                if branch == SHARED:
                    schema = settings.shared_schema
                    connection.exec_driver_sql(
                        f"CREATE SCHEMA {quote_schema(scratch)}")
                else:
                    schema = scratch
                    build_scratch(migrator, connection, scratch)
                comparison = BranchComparison(migrator, branch, scratch,
                                              revision_context)
                # The dialect's idea of the default schema, which Alembic
                # uses to fold "schema-less" names, is the scratch schema,
                # as current_schema() is during the comparison.
                connection.dialect.default_schema_name = scratch
                AlembicSession(
                    migrator, connection, schema, branch, fn=comparison,
                    configure_extra={"compare_server_default": True}).run()
            finally:
                transaction.rollback()
    finally:
        engine.dispose()


def _command_args(**overrides):
    args = dict(message=None, autogenerate=True, sql=False, head="head",
                splice=False, branch_label=None, version_path=None,
                rev_id=None, depends_on=None)
    args.update(overrides)
    return args


def revision(migrator, message, branch, head, branch_label=None,
             version_path=None, rev_id=None):
    """Write an autogenerated revision on ``branch``; return its ``Script``.

    ``head``, ``branch_label`` and ``version_path`` are those of
    ``alembic.command.revision``. The file is rendered by the project's
    ``script.py.mako``, as ``alembic revision --autogenerate`` does.
    """
    revision_context = RevisionContext(
        migrator.alembic_config, migrator.script, _command_args(
            message=message, head=head, branch_label=branch_label,
            version_path=version_path, rev_id=rev_id))
    compare_branch(migrator, branch, revision_context)
    scripts = list(revision_context.generate_scripts())
    return scripts[0] if len(scripts) == 1 else scripts


def branch_diffs(migrator, branch):
    """Return the differences between ``branch``'s models and its
    migrations, as Alembic's diff tuples (empty when they agree)."""
    revision_context = RevisionContext(
        migrator.alembic_config, migrator.script, _command_args())
    compare_branch(migrator, branch, revision_context)
    diffs = []
    for migration_script in revision_context.generated_revisions:
        for upgrade_ops in migration_script.upgrade_ops_list:
            diffs.extend(upgrade_ops.as_diffs())
    return diffs


def describe_diff(diff):
    """One readable line for one of Alembic's diff entries."""
    if isinstance(diff, list):
        return "; ".join(describe_diff(d) for d in diff)
    kind, *rest = diff
    if kind.startswith("modify_"):
        # (kind, schema, table, column, info, existing, new)
        schema, table, column = rest[0], rest[1], rest[2]
        where = ".".join(p for p in (schema, table, column) if p)
        return f"{kind} {where}: {rest[-2]!r} -> {rest[-1]!r}"
    obj = rest[-1] if kind in ("add_column", "remove_column") else rest[0]
    if kind in ("add_column", "remove_column"):
        where = ".".join(p for p in (rest[0], rest[1]) if p)
        return f"{kind} {where}.{obj.name}"
    table = getattr(obj, "table", None)
    if table is not None and hasattr(table, "fullname"):
        return f"{kind} {obj.name or '(unnamed)'} on {table.fullname}"
    return f"{kind} {getattr(obj, 'fullname', None) or obj.name}"
