"""Executing a plan: one transaction per schema, failures isolated.

Two paths, chosen per group of tenants that share a starting revision:

- **replay** (:mod:`.replay`): the group's revisions were rendered to SQL
  once (:mod:`.render`); each tenant runs that SQL in one round trip, on
  parallel connections. This is the path of ordinary DDL revisions.
- **Alembic**: :func:`execute_branch` runs the project's ``env.py`` with a
  :class:`BranchRun` job in the Alembic config; ``env.py`` calls
  :func:`pyramid_tenantmigrate.environment.run_env`, which hands the job
  Alembic's ``context``. The job walks its schemas one by one. For each it
  opens a transaction *itself* (so a commit is a commit: Alembic's
  ``begin_transaction`` is a no-op inside it under SQLAlchemy 2), points
  ``search_path`` at the schema with ``SET LOCAL`` (which ends with the
  transaction and never leaks into the pool), tells Alembic to keep the
  version table in that schema, and runs the steps. This is the path of the
  shared schema, of revisions that read data, of ``--sql`` and ``stamp``,
  and of tenants replay handed back.

Either way a failing schema is rolled back to exactly where it was and
recorded; the run goes on unless ``fail_fast`` is set. A lock timeout is
retried with back-off before the tenant is reported. When the database
itself goes away, the run stops and the schemas not attempted are reported
as such.
"""
import time

from alembic.runtime.environment import EnvironmentContext
from sqlalchemy.exc import DBAPIError

from .errors import ConfigurationError, DatabaseUnavailable
from .names import quote_schema
from .render import version_table_ddl
from .replay import (
    DRIVER, LOCK_NOT_AVAILABLE, ReplayPool, ReplayScript, last_step,
)
from .report import (
    DONE, FAILED, MISSING, NOT_RUN, RENDERED, UP_TO_DATE,
    BranchReport, SchemaResult,
)

#: Key under which the running job sits in ``Config.attributes``.
JOB_KEY = "tenantmigrate.job"


def search_path_sql(schema, extra_schemas=()):
    """``SET LOCAL search_path`` for a schema, every name quoted."""
    path = ", ".join(quote_schema(s) for s in (schema, *extra_schemas))
    return f"SET LOCAL search_path TO {path}"


def _error_text(exc):
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        text = str(exc.orig).strip()
    else:
        text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def _is_disconnect(exc):
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _is_lock_timeout(exc):
    return (isinstance(exc, DBAPIError)
            and getattr(exc.orig, "pgcode", None) == LOCK_NOT_AVAILABLE)


class BranchRun:
    """The job ``env.py`` runs for one branch: migrate or render schemas."""

    def __init__(self, migrator, plan, schema_plans, *, as_sql=False,
                 output=None, fail_fast=False, create_missing=False,
                 progress=None):
        self.migrator = migrator
        self.plan = plan
        self.schema_plans = schema_plans
        self.as_sql = as_sql
        self.output = output
        self.fail_fast = fail_fast
        self.create_missing = create_missing
        self.progress = progress
        self.aborted = None
        self.started = False
        self._connection = None

    @property
    def target_metadata(self):
        settings = self.migrator.settings
        if self.plan.branch == "shared":
            return settings.shared_metadata
        return settings.tenant_metadata

    def run(self, env, configure_options):
        """Called from ``env.py`` through ``run_env``."""
        self.started = True
        stop_reason = None
        try:
            for schema_plan in self.schema_plans:
                if stop_reason is not None:
                    self._record(SchemaResult(
                        schema_plan.schema, NOT_RUN, schema_plan.from_heads,
                        schema_plan.to_heads, error=stop_reason))
                    continue
                if self.as_sql:
                    result = self._render_one(env, schema_plan,
                                              configure_options)
                else:
                    result = self._migrate_one(env, schema_plan,
                                               configure_options)
                self._record(result)
                if self.aborted is not None:
                    stop_reason = f"not attempted: {self.aborted}"
                elif not result.ok and self.fail_fast:
                    stop_reason = ("not attempted: --fail-fast stopped the "
                                   f"run after {result.schema} failed")
        finally:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _record(self, result):
        if self.progress is not None:
            self.progress(self.plan.branch, result)

    def _search_path(self, schema):
        return search_path_sql(schema, self.migrator.settings.extra_search_path)

    def _connect(self):
        if self._connection is None or self._connection.invalidated:
            if self._connection is not None:
                self._connection.close()
            self._connection = self.migrator.connect()
        return self._connection

    def _version_options(self, schema):
        return {
            "version_table": self.migrator.settings.version_table,
            "version_table_schema": schema,
            "target_metadata": self.target_metadata,
        }

    def _migrate_one(self, env, schema_plan, options):
        settings = self.migrator.settings
        started = time.monotonic()
        attempt = 0
        while True:
            result = self._attempt(env, schema_plan, options)
            if (result.status == FAILED and result.lock_timeout
                    and attempt < settings.lock_retries
                    and self.aborted is None):
                attempt += 1
                time.sleep(0.5 * (2 ** (attempt - 1)))
                continue
            if result.lock_timeout:
                result.error += (f" (gave up after {attempt + 1} attempts; "
                                 "an application transaction holds a lock "
                                 "on this schema's table)")
            result.duration = time.monotonic() - started
            return result

    def _attempt(self, env, schema_plan, options):
        schema = schema_plan.schema
        applied = []

        def count_applied(ctx, step, heads, run_args):
            applied.append((step, heads))

        result = SchemaResult(schema, DONE, schema_plan.from_heads,
                              schema_plan.to_heads)
        if not schema_plan.exists and not self.create_missing:
            result.status = MISSING
            result.error = (
                "the tenant source lists this schema but it does not exist; "
                "create it (tenant-migrate <ini> upgrade --create-missing) "
                "or remove it from the tenant source"
            )
            return result
        try:
            connection = self._connect()
            with connection.begin():
                if not schema_plan.exists:
                    connection.exec_driver_sql(
                        f"CREATE SCHEMA {quote_schema(schema)}")
                connection.exec_driver_sql(self._search_path(schema))
                connection.exec_driver_sql(
                    self.migrator.settings.timeouts_sql)
                env.configure(
                    connection=connection,
                    on_version_apply=[count_applied,
                                      *options.get("on_version_apply", ())],
                    **self._version_options(schema),
                    **{k: v for k, v in options.items()
                       if k != "on_version_apply"},
                )
                env.run_migrations()
        except DatabaseUnavailable as exc:
            result.status = FAILED
            result.error = str(exc)
            self.aborted = str(exc)
        except Exception as exc:
            result.status = FAILED
            result.error = _error_text(exc)
            result.lock_timeout = _is_lock_timeout(exc)
            if len(applied) < len(schema_plan.steps):
                step = schema_plan.steps[len(applied)]
                revision = getattr(step, "revision", None)
                if revision is not None:
                    result.failed_revision = revision.revision
            if _is_disconnect(exc):
                self._check_database(schema)
        else:
            # What Alembic actually applied, which differs from the plan
            # only if another process moved this schema meanwhile.
            result.revisions = tuple(
                ",".join(info.up_revision_ids) for info, _ in applied)
            if applied:
                result.to_heads = tuple(sorted(applied[-1][1]))
        return result

    def _check_database(self, schema):
        """After a lost connection, decide whether the run can go on."""
        try:
            self._connect()
        except DatabaseUnavailable as exc:
            self.aborted = (f"the database went away while migrating "
                            f"{schema}: {exc}")

    def _render_one(self, env, schema_plan, options):
        schema = schema_plan.schema
        out = self.output
        from_heads = ",".join(schema_plan.from_heads) or "base"
        to_heads = ",".join(schema_plan.to_heads) or "base"
        out.write(f"\n-- {self.plan.branch} schema {schema}: "
                  f"{self.plan.operation} {from_heads} -> {to_heads}\n")
        if not schema_plan.exists:
            out.write(f"CREATE SCHEMA IF NOT EXISTS {quote_schema(schema)};"
                      "\n\n")
        starting = ",".join(schema_plan.from_heads) or None
        env.configure(
            dialect_name="postgresql",
            # Without it '%' is doubled in the output (psycopg2 pyformat).
            dialect_opts={"paramstyle": "named"},
            as_sql=True,
            literal_binds=True,
            output_buffer=out,
            starting_rev=starting,
            **self._version_options(schema),
            **options,
        )
        with env.begin_transaction():
            env.execute(self._search_path(schema))
            env.run_migrations()
        return SchemaResult(schema, RENDERED, schema_plan.from_heads,
                            schema_plan.to_heads,
                            revisions=schema_plan.revisions)


def replay_script(migrator, renderer, steps, from_heads, to_heads):
    """A :class:`~.replay.ReplayScript` for ``steps``, or ``None`` when one
    of them cannot be rendered once for all tenants."""
    steps_sql = []
    for step in steps:
        statements = renderer.render_step(step)
        if statements is None:
            return None
        steps_sql.append((step.revision.revision, statements))
    settings = migrator.settings
    return ReplayScript(
        steps_sql, from_heads, to_heads, settings.version_table,
        version_table_ddl(migrator, renderer.dialect), settings.timeouts_sql)


def _replay_scripts(migrator, plan, renderer):
    """Render each group of pending tenants once; return the tenants that
    can replay (with their script) and those the Alembic path must run."""
    scripts, replayable, online = {}, [], []
    for schema_plan in plan.pending:
        if not schema_plan.exists:
            online.append(schema_plan)  # missing: reported or created there
            continue
        key = schema_plan.from_heads
        if key not in scripts:
            scripts[key] = replay_script(
                migrator, renderer, schema_plan.steps,
                schema_plan.from_heads, schema_plan.to_heads)
        if scripts[key]:
            replayable.append((schema_plan, scripts[key]))
        else:
            online.append(schema_plan)
    return replayable, online


def execute_branch(migrator, plan, planner, *, as_sql=False, output=None,
                   fail_fast=False, create_missing=False, progress=None,
                   workers=None):
    """Run ``plan``; return ``(BranchReport, reason the run stopped or
    None)``. Tenant upgrades and downgrades replay rendered SQL on
    ``workers`` connections where they can; the rest goes through the
    project's ``env.py``."""
    report = BranchReport(plan.branch, plan.operation, plan.destination)
    for schema_plan in plan.current:
        report.results.append(SchemaResult(
            schema_plan.schema, UP_TO_DATE, schema_plan.from_heads,
            schema_plan.to_heads))
    for schema, reason in plan.unplannable.items():
        report.results.append(SchemaResult(schema, FAILED, error=reason))

    def on_result(result):
        report.results.append(result)
        if progress is not None:
            progress(plan.branch, result)

    pending, aborted = list(plan.pending), None
    settings = migrator.settings
    if (pending and plan.branch == "tenant" and not as_sql
            and plan.operation in ("upgrade", "downgrade") and settings.replay):
        replayable, pending = _replay_scripts(migrator, plan,
                                              migrator.renderer)
        if replayable:
            pool = ReplayPool(
                migrator, workers or settings.workers,
                lock_retries=settings.lock_retries, fail_fast=fail_fast,
                progress=on_result)
            pool.run(replayable)
            pending.extend(pool.handed_back)
            aborted = pool.aborted
            report.workers = pool.workers
        if aborted or (fail_fast and report.failures):
            for schema_plan in pending:
                on_result(SchemaResult(
                    schema_plan.schema, NOT_RUN, schema_plan.from_heads,
                    schema_plan.to_heads,
                    error=f"not attempted: {aborted or 'run stopped'}"))
            pending = []
    if not pending:
        return report, aborted

    job = BranchRun(migrator, plan, pending, as_sql=as_sql, output=output,
                    fail_fast=fail_fast, create_missing=create_missing,
                    progress=lambda branch, result: on_result(result))
    config = migrator.alembic_config
    config.attributes[JOB_KEY] = job
    try:
        with EnvironmentContext(
            config, migrator.script, fn=planner, as_sql=as_sql,
            destination_rev=plan.destination,
        ):
            migrator.script.run_env()
    finally:
        config.attributes.pop(JOB_KEY, None)
    if not job.started:
        raise ConfigurationError(
            f"{migrator.script.dir}/env.py did not call "
            "pyramid_tenantmigrate.environment.run_env(context): nothing was "
            "migrated; see the env.py written by 'tenant-migrate <ini> init'"
        )
    return report, aborted or job.aborted


def _replay_in_transaction(migrator, connection, schema, operation,
                           destination):
    """The fast path of :func:`migrate_in_transaction` (provisioning): the
    whole history rendered once per process, run in one round trip."""
    from .plan import heads_after
    from .versions import read_schema_versions

    version = read_schema_versions(
        connection, [schema], migrator.settings.version_table,
        commit=False)[schema]
    planner = migrator.step_planner(operation, destination)
    steps = planner.steps_for(version.heads)
    if not steps:
        return True
    key = (operation, destination, version.heads)
    script = migrator.replay_scripts.get(key)
    if script is None:
        script = replay_script(migrator, migrator.renderer, steps,
                               version.heads,
                               heads_after(version.heads, steps))
        if script is None:
            return False
        migrator.replay_scripts[key] = script
    raw = connection.connection.driver_connection
    del raw.notices[:]
    cursor = raw.cursor()
    try:
        cursor.execute(script.in_caller_transaction(schema))
    except Exception as exc:
        raise StepFailed(last_step(raw.notices), exc) from exc
    finally:
        cursor.close()
    return True


class StepFailed(Exception):
    """A replayed migration failed; ``revision`` is the step that failed
    (from the step notices), ``__cause__`` the database error."""

    def __init__(self, revision, error):
        self.revision = revision
        self.pgcode = getattr(error, "pgcode", None)
        super().__init__(" ".join(str(error).split()))


class CallerTransactionRun:
    """The job ``env.py`` runs to migrate one schema on a connection and in
    a transaction that belong to the caller (a request, a test, a scratch
    schema for autogenerate). Nothing is committed or rolled back here."""

    def __init__(self, migrator, schema, branch, configure_extra=None):
        self.migrator = migrator
        self.schema = schema
        self.branch = branch
        self.configure_extra = configure_extra or {}
        self.started = False

    def run(self, env, configure_options):
        self.started = True
        connection = self.connection
        settings = self.migrator.settings
        previous = connection.exec_driver_sql("SHOW search_path").scalar()
        connection.exec_driver_sql(search_path_sql(
            self.schema, settings.extra_search_path))
        try:
            env.configure(
                connection=connection,
                version_table=settings.version_table,
                version_table_schema=self.schema,
                target_metadata=(settings.shared_metadata
                                 if self.branch == "shared"
                                 else settings.tenant_metadata),
                **dict(configure_options, **self.configure_extra),
            )
            env.run_migrations()
        except BaseException:
            # The caller's transaction is aborted and will be rolled back,
            # search_path with it; restoring it here would only raise
            # "current transaction is aborted" and hide the real error.
            raise
        # SET LOCAL would outlive this call inside the caller's
        # transaction; put the caller's search_path back.
        connection.exec_driver_sql(
            "SELECT set_config('search_path', %(path)s, true)",
            {"path": previous})


def migrate_in_transaction(migrator, connection, schema, destination,
                           operation="upgrade", fn=None,
                           configure_extra=None):
    """Run ``operation`` to ``destination`` for one schema on ``connection``,
    inside the transaction the caller has begun; the caller commits or
    rolls back. ``fn`` overrides Alembic's step function (autogenerate
    passes its own). Raises whatever the migration raises."""
    from .plan import StepPlanner  # plan imports nothing from here

    if not connection.in_transaction():
        raise RuntimeError("migrate_in_transaction needs a connection in a "
                           "transaction (call connection.begin() first)")
    branch = destination.partition("@")[0]
    # The replay sends one string through psycopg2; a caller's session on
    # another driver (the app's own engine) goes through Alembic instead.
    if (fn is None and branch == "tenant" and migrator.settings.replay
            and operation in ("upgrade", "downgrade")
            and connection.dialect.driver == DRIVER
            and _replay_in_transaction(migrator, connection, schema,
                                       operation, destination)):
        return
    job = CallerTransactionRun(migrator, schema, branch, configure_extra)
    job.connection = connection
    config = migrator.alembic_config
    config.attributes[JOB_KEY] = job
    try:
        with EnvironmentContext(
            config, migrator.script,
            fn=fn or StepPlanner(migrator.script, operation, destination),
            destination_rev=destination,
        ):
            migrator.script.run_env()
    finally:
        config.attributes.pop(JOB_KEY, None)
    if not job.started:
        raise ConfigurationError(
            f"{migrator.script.dir}/env.py did not call run_env(context)")
