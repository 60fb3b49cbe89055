"""Rendering revisions to SQL once, for replay in every tenant.

Most tenant revisions are pure DDL: the SQL they produce does not depend on
which tenant runs them (ops carry no schema; ``search_path`` picks the
tenant). Such a revision is rendered once per run, in Alembic's offline
mode, into a list of statements; :mod:`.replay` then runs those statements
in each tenant. The result is what a per-tenant ``alembic upgrade`` would
do, without entering Alembic 10,000 times.

A revision is *not* replayable, and runs through Alembic per tenant, when
rendering it:

- asks for a live connection (``op.get_bind()``, ``context.get_bind()``:
  it reads data) or asks ``context.is_offline_mode()``;
- leaves the transaction (``autocommit_block``, e.g. ``CREATE INDEX
  CONCURRENTLY``);
- raises anything at all;
- or the revision module sets ``tenantmigrate_replay = False``.
"""
import io

from alembic.operations import Operations
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy.dialects.postgresql import psycopg2 as pg_dialect
from sqlalchemy.schema import CreateTable


class NeedsConnection(Exception):
    """Raised inside a revision being rendered when it needs a database."""


def _refuse_bind(self):
    raise NeedsConnection("asks for the connection (get_bind)")


def _refuse_offline_question():
    raise NeedsConnection("asks context.is_offline_mode()")


def _without_bind(instance):
    """Make ``instance.bind`` raise: ``op.get_bind()`` and
    ``context.get_bind()`` go through it. Alembic's own offline machinery
    (the mock connection DDL events use) keeps working."""
    cls = type(instance)
    instance.__class__ = type(cls.__name__, (cls,),
                              {"bind": property(_refuse_bind)})


def _replay_dialect(server_version_info=None):
    # Named paramstyle: a psycopg2 (pyformat) dialect doubles every '%' in
    # the rendered SQL, which is then wrong when run as a plain script.
    dialect = pg_dialect.dialect(paramstyle="named")
    if server_version_info:
        dialect.server_version_info = server_version_info
    return dialect


class Renderer:
    """Renders steps to statements, each step once, for one run."""

    def __init__(self, migrator):
        self.migrator = migrator
        self._rendered = {}
        self._dialect = None

    @property
    def dialect(self):
        if self._dialect is None:
            # Render for the server we talk to (its version decides some
            # DDL spellings), not for a default one.
            engine = self.migrator.engine
            self._dialect = _replay_dialect(
                engine.dialect.server_version_info)
        return self._dialect

    def render_steps(self, steps):
        """Return the statements of ``steps`` in order, or ``None`` when one
        of them cannot be replayed (see the module docstring)."""
        statements = []
        for step in steps:
            rendered = self.render_step(step)
            if rendered is None:
                return None
            statements.extend(rendered)
        return statements

    def render_step(self, step):
        revision = getattr(step, "revision", None)
        if revision is None:  # a stamp step: nothing to run
            return None
        key = (revision.revision, step.is_upgrade)
        if key not in self._rendered:
            self._rendered[key] = self._render(revision, step)
        return self._rendered[key]

    def _render(self, revision, step):
        if getattr(revision.module, "tenantmigrate_replay", True) is False:
            return None
        statements = []
        env = EnvironmentContext(self.migrator.alembic_config,
                                 self.migrator.script, as_sql=True)
        context = MigrationContext.configure(
            dialect=self.dialect, environment_context=env,
            opts={"as_sql": True, "literal_binds": True,
                  "output_buffer": io.StringIO(),
                  "script": self.migrator.script},
        )
        context.impl.static_output = statements.append
        _without_bind(context)
        _without_bind(context.impl)
        env._migration_context = context
        env.is_offline_mode = _refuse_offline_question
        try:
            with env, Operations.context(context):
                step.migration_fn()
        except Exception:
            # Whatever it was, the online path will run it for real and
            # report it properly if it fails there too.
            return None
        if any(s.strip().rstrip(";").upper() in ("BEGIN", "COMMIT")
               for s in statements):
            return None  # autocommit_block: cannot share one transaction
        return statements


def version_table_ddl(migrator, dialect=None):
    """Alembic's own CREATE TABLE for a version table, unqualified: run it
    with the tenant on ``search_path``."""
    from alembic.ddl.impl import DefaultImpl  # noqa: F401 (import order)
    from alembic.runtime.migration import MigrationContext as _MC

    context = _MC.configure(
        dialect=dialect or _replay_dialect(),
        opts={"as_sql": True, "output_buffer": io.StringIO(),
              "version_table": migrator.settings.version_table})
    return str(CreateTable(context._version).compile(
        dialect=context.dialect)).strip()
