"""Executing a plan: one transaction per schema, each step once, failures
isolated.

Each schema runs its :class:`~.program.Program` in a transaction of its
own (:class:`SchemaRun`), on one of ``workers`` connections
(:mod:`.workers`). The transaction:

1. sets ``search_path`` (the schema, then ``extra_search_path``) and the
   lock and statement timeouts with ``SET LOCAL``;
2. waits for the schema's advisory lock (:func:`~.sql.tenant_lock_sql`),
   so that no other run, shard, startup hook or sign-up works on it at
   the same time;
3. checks that the version table still holds what the plan read (the
   guard); if another process moved the schema meanwhile, the schema is
   planned again from where it is now, so no step runs twice;
4. runs the program: replayed steps as SQL (consecutive ones in one round
   trip), the others through Alembic on the same connection, in order;
5. writes the version and commits.

A failure rolls the schema back to exactly where it was and is reported
with the revision that failed; the run goes on (``fail_fast`` stops it).
Lock timeouts are retried (:mod:`.retry`). A connection lost mid-way is
replaced, and the schema's version is read again before it is reported,
since the server may have committed just before the connection went.

``autocommit_block()``: statements before the block commit (with the
version of the revisions already done), the block runs outside any
transaction, and the rest of the revision runs in a new transaction; the
schema's lock is then held for the session, across those commits. A
failure inside a block drops any index the block left INVALID.

:func:`migrate_in_transaction` runs a program in a transaction the caller
owns (provisioning, spares, autogenerate): nothing is committed there, and
blocks run in their transaction-safe form (:func:`.capture.transaction_safe`).
"""
import contextlib
import threading
import time

from sqlalchemy import event

from .capture import controls_transaction, describe_error, transaction_safe
from .environment import AlembicSession
from .names import quote_schema
from .report import (
    AHEAD,
    DONE,
    FAILED,
    MISSING,
    NOT_RUN,
    UNKNOWN,
    UNREADABLE,
    UP_TO_DATE,
    BranchReport,
    SchemaResult,
)
from .retry import RETRYABLE, RetryPolicy, sqlstate
from .sql import (
    INVALID_INDEXES,
    VERSION_MOVED,
    guard_sql,
    last_step,
    search_path_sql,
    step_notice_sql,
    tenant_lock_sql,
    tenant_unlock_sql,
    timeouts_sql,
    version_update_sql,
)
from .workers import DatabaseGone, WorkerPool

#: How many times a schema is planned again because another process moved
#: it meanwhile, before it is reported.
MAX_REPLANS = 5
_NO_TIMEOUT = "SET LOCAL lock_timeout = 0"


class ScriptFailed(Exception):
    """A script sent to the server failed; ``error`` is the driver's
    exception, ``revision`` the revision it was running (from the step
    notices, or the step Alembic was running)."""

    def __init__(self, error, revision):
        self.error = error
        self.revision = revision
        super().__init__(describe_error(error))


def send_script(connection, sql):
    """Run ``sql`` (statements without parameters) as one simple query on
    the SQLAlchemy ``connection``, whose driver is psycopg2 or psycopg 3;
    return the notices the server sent. Raise :class:`ScriptFailed`."""
    raw = connection.connection.driver_connection
    if hasattr(raw, "notices"):  # psycopg2
        del raw.notices[:]
        cursor = raw.cursor()
        try:
            cursor.execute(sql)
        except Exception as exc:
            raise ScriptFailed(exc, last_step(raw.notices)) from exc
        finally:
            cursor.close()
        return list(raw.notices)
    notices = []  # psycopg 3

    def collect(diagnostic):
        notices.append(diagnostic.message_primary or "")

    raw.add_notice_handler(collect)
    try:
        with raw.cursor() as cursor:
            cursor.execute(sql)
    except Exception as exc:
        raise ScriptFailed(exc, last_step(notices)) from exc
    finally:
        raw.remove_notice_handler(collect)
    return notices


def is_disconnect(exc, connection):
    """Tell whether ``exc`` means ``connection`` is gone."""
    error = getattr(exc, "error", exc)
    if getattr(exc, "connection_invalidated", False):
        return True
    try:
        raw = connection.connection.driver_connection
        if getattr(raw, "closed", False):
            return True
    except Exception:
        return True
    name = type(getattr(error, "orig", None) or error).__name__
    return (name in ("OperationalError", "InterfaceError")
            and sqlstate(error) is None)


class SchemaRun:
    """One attempt at running a program in one schema.

    ``own`` (default): on a connection of our own in autocommit mode;
    this object sends ``BEGIN``/``COMMIT``. Otherwise the caller's
    transaction: no commit, and the caller's settings are put back at the
    end.
    """

    def __init__(self, migrator, connection, schema, program, branch,
                 own=True, create_schema=False):
        self.migrator = migrator
        self.settings = migrator.settings
        self.connection = connection
        self.schema = schema
        self.program = program
        self.branch = branch
        self.own = own
        self.create_schema = create_schema
        self.db_heads = tuple(program.from_heads)
        self.done_heads = tuple(program.from_heads)
        self.buffer = []
        self.current = None
        self.session = None
        self.session_lock = False
        self.committed = False  # some work committed before the end
        self.in_transaction = False
        self.in_safe_block = False
        self.left_invalid = []

    # What goes into the buffer, then to the server in one round trip.

    def _settings_sql(self, local=True):
        settings = self.settings
        return [
            search_path_sql(self.schema, settings.extra_search_path, local),
            timeouts_sql(settings.lock_timeout, settings.statement_timeout,
                         local),
        ]

    def _begin(self, first):
        buffer = self.buffer
        if self.own:
            buffer.append("BEGIN")
        elif first:
            buffer.append(
                "SELECT set_config('tenantmigrate.saved_search_path', "
                "current_setting('search_path'), true), "
                "set_config('tenantmigrate.saved_lock_timeout', "
                "current_setting('lock_timeout'), true), "
                "set_config('tenantmigrate.saved_statement_timeout', "
                "current_setting('statement_timeout'), true)")
        if first and self.create_schema:
            buffer.append(f"CREATE SCHEMA {quote_schema(self.schema)}")
        buffer.extend(self._settings_sql())
        buffer.append("SET LOCAL client_min_messages TO notice")
        self.in_transaction = True
        if not first:
            return
        # The schema's lock, waited for without a timeout: whoever holds
        # it is migrating this schema and will be done with it.
        session = self.own and self.program.needs_session_lock
        buffer.append(_NO_TIMEOUT)
        buffer.append(tenant_lock_sql(self.schema, session=session))
        self.session_lock = session
        buffer.append(timeouts_sql(self.settings.lock_timeout,
                                   self.settings.statement_timeout))
        buffer.append(guard_sql(self.schema, self.settings.version_table,
                                self.program.from_heads))
        if not self.program.from_heads and self.program.version_table_ddl:
            buffer.append(self.program.version_table_ddl)

    def _sync_version(self):
        if self.done_heads != self.db_heads:
            self.buffer.append(version_update_sql(
                self.schema, self.settings.version_table, self.done_heads))
            self.db_heads = self.done_heads

    def _end(self):
        if self.own:
            self.buffer.append("COMMIT")
            self.in_transaction = False
        else:
            self.buffer.append(
                "SELECT set_config('search_path', current_setting("
                "'tenantmigrate.saved_search_path'), true), "
                "set_config('lock_timeout', current_setting("
                "'tenantmigrate.saved_lock_timeout'), true), "
                "set_config('statement_timeout', current_setting("
                "'tenantmigrate.saved_statement_timeout'), true)")

    def _flush(self):
        if not self.buffer:
            return
        sql = ";\n".join(self.buffer) + ";"
        self.buffer = []
        try:
            send_script(self.connection, sql)
        except ScriptFailed as exc:
            if exc.revision is None:
                exc.revision = self.current
            raise

    # Running the program.

    def run(self):
        """Run the program; return the heads the schema ends at."""
        try:
            return self._run()
        finally:
            self._close_session()

    def _run(self):
        program = self.program
        self._begin(first=True)
        live_memo = forced = False
        for item in program.steps:
            if (item.replay is not None and not forced and live_memo
                    and self.session.memo != item.memo_before):
                # Alembic remembers something else than capture saw before
                # this revision: its recorded SQL may not be what Alembic
                # would send here, so it and the rest run through Alembic.
                forced = True
            if item.replay is not None and not forced:
                self.current = item.revision
                self.buffer.append(step_notice_sql(item.revision))
                for in_block, statements in item.replay:
                    if in_block:
                        self._block(statements)
                    else:
                        self.buffer.extend(statements)
                self.done_heads = item.heads_after
                live_memo = False
                continue
            self._sync_version()
            self._flush()
            self.current = item.revision
            session = self._alembic()
            session.run([item.step],
                        memo=None if live_memo else item.memo_before)
            heads = session.applied[-1] if session.applied else (
                item.heads_after)
            self.db_heads = self.done_heads = heads
            live_memo = True
        if program.stamp:
            self.done_heads = tuple(program.to_heads)
        self.current = None
        self._sync_version()
        self._end()
        if self.session_lock:
            self.buffer.append(tenant_unlock_sql(self.schema))
            self.session_lock = False
        self._flush()
        return self.done_heads

    def abort(self):
        """After a failure: roll back (own transaction), put session
        settings back and let go of a session lock. Returns False when the
        connection is unusable."""
        self.buffer = []
        self._close_session()
        if not self.own:
            return True
        statements = ["ROLLBACK", "RESET search_path", "RESET lock_timeout",
                      "RESET statement_timeout"]
        if self.session_lock:
            statements.append(tenant_unlock_sql(self.schema))
        try:
            send_script(self.connection, ";\n".join(statements) + ";")
        except Exception:
            return False
        self.session_lock = False
        return True

    def _alembic(self):
        if self.session is None:
            block = (self._outside_transaction if self.own
                     else self._safe_block)
            self.session = AlembicSession(
                self.migrator, self.connection, self.schema, self.branch,
                autocommit_block=block)
            event.listen(self.connection, "before_cursor_execute",
                         self._filter, retval=True)
        return self.session

    def _close_session(self):
        if self.session is not None:
            event.remove(self.connection, "before_cursor_execute",
                         self._filter)
            self.session = None

    def _filter(self, conn, cursor, statement, parameters, context,
                executemany):
        """What a revision run through Alembic sends, adjusted to the
        transaction this package owns: a revision's own COMMIT ends the
        work so far and a new transaction goes on with the schema's
        settings (own connection), or is left to the caller (caller's
        transaction); in a caller's transaction, statements of an
        autocommit block run in their transaction-safe form."""
        if controls_transaction(statement):
            body = statement.strip().rstrip(";").strip().upper()
            if not self.own or body.startswith(("BEGIN", "START")):
                return "SELECT 1", parameters
            self.committed = True
            end = "ROLLBACK" if body.startswith(("ROLLBACK", "ABORT")) else (
                "COMMIT")
            return ";\n".join([end, "BEGIN", *self._settings_sql()]), (
                parameters)
        if self.in_safe_block:
            safe = transaction_safe(statement)
            return ("SELECT 1" if safe is None else safe), parameters
        return statement, parameters

    # Autocommit blocks.

    def _block(self, statements):
        """Replayed statements of an ``autocommit_block()``."""
        if not self.own:
            for sql in statements:
                safe = transaction_safe(sql)
                if safe is not None:
                    self.buffer.append(safe)
            return
        with self._outside_transaction():
            for sql in statements:
                self._flush_one(sql)

    def _flush_one(self, sql):
        try:
            send_script(self.connection, sql)
        except ScriptFailed as exc:
            exc.revision = exc.revision or self.current
            raise

    @contextlib.contextmanager
    def _outside_transaction(self):
        """Commit what is done so far, let the caller run statements with
        no transaction, then open the schema's transaction again."""
        if not self.session_lock:
            self.buffer.append(tenant_lock_sql(self.schema, session=True))
            self.session_lock = True
        self._sync_version()
        self._end()
        self._flush()
        self.committed = True
        self.buffer.extend(self._settings_sql(local=False))
        self._flush()
        invalid_before = self._invalid_indexes()
        try:
            yield
        except BaseException:
            self._drop_new_invalid_indexes(invalid_before)
            raise
        finally:
            if not self.in_transaction:
                self.buffer.append("RESET search_path; RESET lock_timeout; "
                                   "RESET statement_timeout")
        self._begin(first=False)
        self._flush()

    @contextlib.contextmanager
    def _safe_block(self):
        """``autocommit_block()`` in a caller's transaction: the block's
        statements run in their transaction-safe form (see
        :meth:`_filter`)."""
        self.in_safe_block = True
        try:
            yield
        finally:
            self.in_safe_block = False

    def _invalid_indexes(self):
        raw = self.connection.connection.driver_connection
        with raw.cursor() as cursor:
            cursor.execute(INVALID_INDEXES, {"schema": self.schema})
            return {row[0] for row in cursor.fetchall()}

    def _drop_new_invalid_indexes(self, before):
        try:
            left = self._invalid_indexes() - before
        except Exception:
            return
        for name in sorted(left):
            qualified = f"{quote_schema(self.schema)}.{quote_schema(name)}"
            try:
                send_script(self.connection,
                            f"DROP INDEX CONCURRENTLY IF EXISTS {qualified}")
                self.left_invalid.append((name, True))
            except Exception:
                self.left_invalid.append((name, False))


class BranchExecution:
    """Runs a branch's plan over a worker pool; see the module docstring.

    ``programs`` makes the programs (:class:`~.program.Programs`);
    ``should_stop()`` returns a reason to stop starting schemas (the run
    lock was lost), or ``None``.
    """

    def __init__(self, migrator, plan, planner, programs, *, workers=None,
                 fail_fast=False, create_missing=False, progress=None,
                 should_stop=None):
        self.migrator = migrator
        self.plan = plan
        self.planner = planner
        self.programs = programs
        self.workers = workers or migrator.settings.workers
        self.fail_fast = fail_fast
        self.create_missing = create_missing
        self.progress = progress
        self.external_stop = should_stop or (lambda: None)
        self.retry = RetryPolicy(migrator.settings.lock_retries)
        self.report = BranchReport(plan.branch, plan.operation,
                                   plan.destination)
        self._stop_reason = None
        self._lock = threading.Lock()

    def _record(self, result):
        with self._lock:
            self.report.results.append(result)
            if self.progress is not None:
                self.progress(self.plan.branch, result)
            if (self.fail_fast and not result.ok
                    and self._stop_reason is None):
                self._stop_reason = (f"--fail-fast stopped the run after "
                                     f"{result.schema} failed")

    def _should_stop(self):
        return self._stop_reason or self.external_stop()

    def run(self):
        plan = self.plan
        for schema_plan in plan.current:
            self._record(SchemaResult(schema_plan.schema, UP_TO_DATE,
                                      schema_plan.from_heads,
                                      schema_plan.to_heads))
        for schema_plan in plan.ahead:
            self._record(SchemaResult(
                schema_plan.schema, AHEAD, schema_plan.from_heads,
                schema_plan.from_heads, error=(
                    f"already at {_revs(schema_plan.from_heads)}, past "
                    f"{plan.destination}: upgrade does not go down; use "
                    f"'downgrade {plan.destination}'")))
        for schema, reason in plan.unplannable.items():
            self._record(SchemaResult(schema, FAILED, error=reason))
        for schema, reason in plan.unreadable.items():
            self._record(SchemaResult(schema, UNREADABLE, error=reason))
        pending = []
        for schema_plan in plan.pending:
            if schema_plan.exists or self.create_missing:
                pending.append(schema_plan)
            else:
                self._record(SchemaResult(
                    schema_plan.schema, MISSING, schema_plan.from_heads,
                    schema_plan.to_heads, error=(
                        "the tenant source lists this schema but it does not "
                        "exist; create it (tenant-migrate <ini> upgrade "
                        "--create-missing) or remove it from the tenant "
                        "source")))
        if not pending:
            return self.report, None
        # Programs of the planned groups are made before any worker
        # starts: capture runs once per group, here.
        for schema_plan in pending:
            self._program(schema_plan.from_heads, schema_plan.steps,
                          schema_plan.to_heads)
        pool = WorkerPool(self.migrator.worker_connection,
                          min(self.workers, len(pending)),
                          should_stop=self._should_stop)
        pool.run(pending, self._work)
        self.report.workers = pool.opened
        self.report.warnings.extend(pool.warnings)
        aborted = pool.aborted if pool.aborted != self._stop_reason else None
        reason = pool.aborted or self._stop_reason or "run stopped"
        for schema_plan in pool.leftover:
            self._record(SchemaResult(
                schema_plan.schema, NOT_RUN, schema_plan.from_heads,
                schema_plan.to_heads, error=f"not attempted: {reason}"))
        return self.report, aborted

    def _program(self, from_heads, steps, to_heads):
        return self.programs.get(self.plan.operation, from_heads, steps,
                                 to_heads, self.plan.branch)

    def _work(self, worker, schema_plan):
        try:
            self._record(self._migrate(worker, schema_plan))
        except DatabaseGone as exc:
            self._record(SchemaResult(
                schema_plan.schema, NOT_RUN, schema_plan.from_heads,
                schema_plan.to_heads,
                error=f"not attempted: the database went away: {exc}"))

    def _migrate(self, worker, schema_plan):
        schema = schema_plan.schema
        started = time.monotonic()
        from_heads, steps = schema_plan.from_heads, schema_plan.steps
        create = not schema_plan.exists
        attempt = replans = 0
        while True:
            program = self._program(from_heads, steps, schema_plan.to_heads)
            run = SchemaRun(self.migrator, worker.connection, schema,
                            program, self.plan.branch, create_schema=create)
            try:
                heads = run.run()
            except Exception as exc:
                error = getattr(exc, "error", exc)
                state = sqlstate(error)
                if is_disconnect(exc, worker.connection):
                    result = self._after_disconnect(
                        worker, schema_plan, program, run, exc)
                    result.duration = time.monotonic() - started
                    return result
                if not run.abort():
                    worker.reconnect()
                if state == VERSION_MOVED and replans < MAX_REPLANS:
                    replans += 1
                    found = self._replan(worker, schema_plan)
                    if isinstance(found, SchemaResult):
                        found.duration = time.monotonic() - started
                        return found
                    from_heads, steps = found
                    create = False
                    continue
                if state in RETRYABLE and not run.committed:
                    attempt += 1
                    if self.retry.should_retry(attempt):
                        self.retry.wait(attempt)
                        continue
                result = self._failure(schema_plan, program, run, exc,
                                       attempt)
                result.duration = time.monotonic() - started
                return result
            return SchemaResult(
                schema, DONE, schema_plan.from_heads, heads,
                revisions=program.revisions,
                duration=time.monotonic() - started,
                paths=program.paths())

    def _replan(self, worker, schema_plan):
        """The schema moved since planning: plan it again from where it is.
        Returns ``(from_heads, steps)``, or a result when nothing is left."""
        version = self.migrator.read_versions(
            worker.connection, [schema_plan.schema], workers=1)[
            schema_plan.schema]
        heads = version.heads
        try:
            steps = self.planner.steps_for(heads)
        except Exception as exc:
            return SchemaResult(schema_plan.schema, FAILED, heads, heads,
                                error=f"cannot plan from {_revs(heads)}: "
                                      f"{describe_error(exc)}")
        if not steps:
            return SchemaResult(
                schema_plan.schema, UP_TO_DATE, heads, heads,
                note="moved to the destination by another process while "
                     "this run was going")
        return heads, steps

    def _failure(self, schema_plan, program, run, exc, attempt):
        error = getattr(exc, "error", exc)
        revision = getattr(exc, "revision", None) or run.current
        message = describe_error(error)
        if sqlstate(error) in RETRYABLE:
            message += (f" (gave up after {attempt} attempts; another "
                        "transaction holds a lock on this schema's table)")
        for name, dropped in run.left_invalid:
            qualified = f'"{schema_plan.schema}"."{name}"'
            message += (
                f"; the autocommit block left the INVALID index {name}, "
                "which was dropped: a re-run builds it again" if dropped else
                f"; the autocommit block left the INVALID index {name}: "
                f"drop it (DROP INDEX CONCURRENTLY {qualified}), then re-run")
        at = run.db_heads if run.committed else schema_plan.from_heads
        if run.committed:
            message += (
                f"; statements of revision {revision} before its "
                f"autocommit block were committed and its version is "
                f"still {_revs(at)}, so a re-run runs {revision} again "
                "from its start")
        return SchemaResult(schema_plan.schema, FAILED,
                            schema_plan.from_heads, at, error=message,
                            failed_revision=revision)

    def _after_disconnect(self, worker, schema_plan, program, run, exc):
        """The connection went away while this schema ran: find out from
        the database what happened before reporting it."""
        error = describe_error(getattr(exc, "error", exc))
        revision = getattr(exc, "revision", None) or run.current
        try:
            worker.reconnect()
            heads = self._read_under_lock(worker.connection,
                                          schema_plan.schema)
        except DatabaseGone:
            return SchemaResult(
                schema_plan.schema, UNKNOWN, schema_plan.from_heads, (),
                error=(f"connection lost ({error}) and the database could "
                       "not be reached again: whether this schema's last "
                       "transaction committed is unknown; run "
                       "'tenant-migrate <ini> current' when it is back"),
                failed_revision=revision)
        except Exception as check:
            return SchemaResult(
                schema_plan.schema, UNKNOWN, schema_plan.from_heads, (),
                error=(f"connection lost ({error}); reading the version "
                       f"again failed: {describe_error(check)}"),
                failed_revision=revision)
        if heads == tuple(program.to_heads):
            return SchemaResult(
                schema_plan.schema, DONE, schema_plan.from_heads, heads,
                revisions=program.revisions, paths=program.paths(),
                note=(f"the connection was lost ({error}) after the server "
                      "committed; the version was read again"))
        return SchemaResult(
            schema_plan.schema, FAILED, schema_plan.from_heads, heads,
            error=(f"connection lost: {error}; read again, the schema is at "
                   f"{_revs(heads)}: re-run to finish"),
            failed_revision=revision)

    def _read_under_lock(self, connection, schema):
        """The schema's version, read once whoever ran it (the lost
        connection's backend, still finishing) has let go of its lock."""
        send_script(connection, ";\n".join([
            "BEGIN", "SET LOCAL lock_timeout = '60s'",
            tenant_lock_sql(schema), "COMMIT"]) + ";")
        return self.migrator.read_versions(connection, [schema],
                                           workers=1)[schema].heads


def _revs(heads):
    return ",".join(heads) if heads else "base"


def execute_branch(migrator, plan, planner, programs, **options):
    """Run ``plan``; return ``(BranchReport, reason the run stopped or
    None)``. See :class:`BranchExecution` for the options."""
    return BranchExecution(migrator, plan, planner, programs,
                           **options).run()


def migrate_in_transaction(migrator, connection, schema, destination,
                           operation="upgrade"):
    """Run ``operation`` to ``destination`` for one schema on
    ``connection``, inside the transaction the caller has begun; the caller
    commits or rolls back. Replays what can replay (the program is made
    once per migrator); raises :class:`ScriptFailed` or what Alembic
    raises. Returns the heads the schema ends at."""
    from .plan import StepPlanner  # plan imports nothing from here
    from .versions import read_schema_versions

    if not connection.in_transaction():
        raise RuntimeError("migrate_in_transaction needs a connection in a "
                           "transaction (call connection.begin() first)")
    branch = destination.partition("@")[0]
    heads = read_schema_versions(
        connection, [schema], migrator.settings.version_table,
        commit=False)[schema].heads
    steps = StepPlanner(migrator.script, operation, destination).steps_for(
        heads)
    if not steps:
        return heads
    from .plan import heads_after
    program = migrator.programs.get(operation, heads, steps,
                                    heads_after(heads, steps), branch)
    # Provisioning happens when nobody can see the schema yet: blocks run
    # in their transaction-safe form, in the caller's transaction.
    run = SchemaRun(migrator, connection, schema, program, branch,
                    own=False)
    try:
        return run.run()
    except ScriptFailed:
        raise
    except Exception as exc:
        raise ScriptFailed(exc, run.current) from exc


def build_schema(migrator, schema, destination="tenant@head"):
    """Create ``schema`` and bring it to ``destination`` on a connection of
    its own, committing as a tenant's migration does (autocommit blocks run
    outside a transaction for real). For a schema nobody uses yet (a
    spare): if it fails, the schema is dropped, and the error raised."""
    from .plan import StepPlanner, heads_after

    steps = StepPlanner(migrator.script, "upgrade", destination).steps_for(())
    program = migrator.programs.get("upgrade", (), steps,
                                    heads_after((), steps), TENANT_BRANCH)
    with migrator.run_connection("spares") as connection:
        run = SchemaRun(migrator, connection, schema, program, TENANT_BRANCH,
                        create_schema=True)
        try:
            run.run()
        except Exception as exc:
            run.abort()
            send_script(connection, f"DROP SCHEMA IF EXISTS "
                                    f"{quote_schema(schema)} CASCADE")
            if isinstance(exc, ScriptFailed):
                raise
            raise ScriptFailed(exc, run.current) from exc


TENANT_BRANCH = "tenant"
