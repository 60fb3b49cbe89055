"""Executing a branch's plan: schemas over a pool of connections.

Each pending schema runs its :class:`~.program.Program` in a
:class:`~.transaction.SchemaRun`, on one of ``workers`` connections
(:mod:`.workers`). A failure rolls the schema back to exactly where it was
and is reported with the revision that failed; the run goes on
(``fail_fast`` stops it). A schema another process moved since planning
is planned again from where it is. Lock timeouts are retried
(:mod:`..retry`). A connection lost mid-way is replaced, and the schema's
version is read again before it is reported, since the server may have
committed just before the connection went. A tenant where a replayed
revision's checked read answers otherwise runs that revision through
Alembic instead: in the same transaction (from a savepoint) where nothing
of it committed, otherwise in a new try; once that happened in most
tenants, later ones run it through Alembic at once.
"""
import collections
import logging
import threading
import time

from ..errors import describe_error, sqlstate
from ..report import (
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
from ..retry import RETRYABLE, RetryPolicy
from ..workers import DatabaseGone, WorkerPool
from .sql import (
    READ_DIFFERS,
    UNSAFE_NEW_ENUM,
    VERSION_MOVED,
    tenant_lock_sql,
)
from .transaction import SchemaRun, is_disconnect, send_script

log = logging.getLogger(__name__)

#: How many times a schema is planned again because another process moved
#: it meanwhile, before it is reported.
MAX_REPLANS = 5
#: After how many tenants whose check of a revision failed (and more than
#: passed) the run's later tenants run it through Alembic at once.
LEARNED_AFTER = 3


class _Tries:
    """Where the next try of a schema starts, and how many were made."""

    def __init__(self, schema_plan):
        self.from_heads = schema_plan.from_heads
        self.steps = schema_plan.steps
        self.create = not schema_plan.exists
        self.attempt = self.replans = 0
        #: Revisions run through Alembic in this schema (a checked read
        #: answered differently there).
        self.alembic_at = set()
        #: ``{revision: path}`` of revisions earlier tries committed.
        self.done_paths = {}
        #: The program of the next try, when it is the rest of the last
        #: one (see ``BranchExecution._replan_after``).
        self.program = None
        #: A replayed revision failed with 55P04 after a savepoint: the
        #: next tries take none (see ``program.build_program``).
        self.no_savepoints = False

    def result(self, schema_plan, heads, program):
        """The schema's result, its revisions and paths those of every
        try that committed some, then of the last one."""
        return SchemaResult(
            schema_plan.schema, DONE, schema_plan.from_heads, heads,
            revisions=tuple(self.done_paths) + program.revisions,
            paths={**self.done_paths, **program.paths()})


class BranchExecution:
    """Runs a branch's plan over a worker pool; see the module docstring.

    ``programs`` makes the programs (:class:`~.program.Programs`);
    ``closing`` is :class:`~.transaction.SchemaRun`'s;
    ``should_stop()`` returns a reason to stop starting schemas (the run
    lock was lost), or ``None``.
    """

    def __init__(self, migrator, plan, planner, programs, *, workers=None,
                 fail_fast=False, create_missing=False, progress=None,
                 should_stop=None, closing=None):
        self.migrator = migrator
        self.plan = plan
        self.planner = planner
        self.programs = programs
        self.workers = workers or migrator.settings.workers
        self.fail_fast = fail_fast
        self.create_missing = create_missing
        self.progress = progress
        self.external_stop = should_stop or (lambda: None)
        self.closing = closing
        self.retry = RetryPolicy(migrator.settings.lock_retries)
        self.report = BranchReport(plan.branch, plan.operation,
                                   plan.destination)
        self._stop_reason = None
        self._lock = threading.Lock()
        #: ``{revision: count}`` of tenants where a replayed revision's
        #: checked read answered otherwise, and where it answered the same.
        self._checks_failed = collections.Counter()
        self._checks_passed = collections.Counter()

    def _through_alembic(self, tries):
        """Revisions to run through Alembic in the next try of a schema:
        those whose check failed in it, and those whose check failed in
        most tenants so far (at least LEARNED_AFTER): a tenant would most
        likely run them again through Alembic after a try replaying them
        (data migrations over rows holding random UUIDs, say)."""
        with self._lock:
            learned = {revision for revision, failed
                       in self._checks_failed.items()
                       if failed >= LEARNED_AFTER
                       and failed > self._checks_passed[revision]}
        return tries.alembic_at | learned

    def _count_checks(self, program, failed=None):
        with self._lock:
            if failed is not None:
                self._checks_failed[failed] += 1
                return
            for step in program.steps:
                if step.checked and step.replay is not None:
                    self._checks_passed[step.revision] += 1

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
            self._record(not_attempted(schema_plan, reason))
        return self.report, aborted

    def _program(self, from_heads, steps, to_heads):
        return self.programs.get(self.plan.operation, from_heads, steps,
                                 to_heads, self.plan.branch)

    def _work(self, worker, schema_plan):
        try:
            self._record(self._migrate(worker, schema_plan))
        except DatabaseGone as exc:
            self._record(not_attempted(
                schema_plan, f"the database went away: {exc}"))

    def _migrate(self, worker, schema_plan):
        started = time.monotonic()
        tries = _Tries(schema_plan)
        while True:
            program = tries.program or self._program(
                tries.from_heads, tries.steps, schema_plan.to_heads)
            tries.program = None
            alembic_at = self._through_alembic(tries)
            if alembic_at:
                program = program.through_alembic_at(alembic_at)
            if tries.no_savepoints:
                program = program.without_savepoints()
            run = SchemaRun(self.migrator, worker.connection,
                            schema_plan.schema, program, self.plan.branch,
                            create_schema=tries.create, closing=self.closing)
            try:
                heads = run.run()
            except Exception as exc:
                program = self._answered_otherwise(schema_plan, tries,
                                                   program, run)
                result = self._after_failure(worker, schema_plan, tries,
                                             program, run, exc)
                if result is None:
                    continue
            else:
                program = self._answered_otherwise(schema_plan, tries,
                                                   program, run)
                self._count_checks(program)
                result = tries.result(schema_plan, heads, program)
            result.duration = time.monotonic() - started
            return result

    def _answered_otherwise(self, schema_plan, tries, program, run):
        """The program as it ran: revisions whose check failed in the
        schema ran through Alembic there, in the same transaction (see
        :attr:`.program.ProgramStep.in_place`), and count as failed
        checks; a later try runs them through Alembic at once."""
        if not run.answered_otherwise:
            return program
        for revision in run.answered_otherwise:
            tries.alembic_at.add(revision)
            self._count_checks(program, failed=revision)
            log.info("%s: a read of revision %s answers otherwise than in "
                     "capture: it ran through Alembic there",
                     schema_plan.schema, revision)
        return program.through_alembic_at(run.answered_otherwise)

    def _after_failure(self, worker, schema_plan, tries, program, run, exc):
        """What a failed try of a schema comes to: ``None`` to try again
        (``tries`` says how), or the schema's result."""
        state = sqlstate(getattr(exc, "error", exc))
        if is_disconnect(exc, worker.connection):
            return self._after_disconnect(worker, schema_plan, program, run,
                                          exc)
        if not run.abort():
            worker.reconnect()
        if (state == READ_DIFFERS and exc.revision
                and program.replaying(exc.revision)):
            # What this tenant answers is not what capture saw: that
            # revision runs through Alembic here, from where the schema is
            # (revisions with an autocommit block commit as they end).
            tries.alembic_at.add(exc.revision)
            self._count_checks(program, failed=exc.revision)
            log.info("%s: a read of revision %s answers otherwise than in "
                     "capture: trying again with it through Alembic",
                     schema_plan.schema, exc.revision)
            return self._replan_after(worker, schema_plan, tries, run,
                                      program)
        if (state == UNSAFE_NEW_ENUM and not tries.no_savepoints
                and not run.committed_in_revision
                and any(step.in_place for step in program.steps)):
            # An enum type made inside a savepoint, given a value later
            # in the transaction: the same schema without savepoints.
            tries.no_savepoints = True
            return self._replan_after(worker, schema_plan, tries, run,
                                      program)
        if state == VERSION_MOVED and tries.replans < MAX_REPLANS:
            tries.replans += 1
            found = self._replan(worker, schema_plan)
            if isinstance(found, SchemaResult):
                return found
            tries.from_heads, tries.steps = found
            tries.create = False
            return None
        if state in RETRYABLE and not run.committed_in_revision:
            tries.attempt += 1
            if self.retry.should_retry(tries.attempt):
                self.retry.wait(tries.attempt)
                return self._replan_after(worker, schema_plan, tries, run,
                                          program)
        return self._failure(schema_plan, program, run, exc, tries.attempt)

    def _replan_after(self, worker, schema_plan, tries, run, program):
        """Try again from where a try left the schema: ``None``, or the
        schema's result when nothing is left to do."""
        if not run.committed:
            return None
        found = self._replan(worker, schema_plan)
        if isinstance(found, SchemaResult):
            return found
        tries.from_heads, tries.steps = found
        tries.create = False
        left = {step.revision.revision for step in tries.steps}
        tries.done_paths.update(
            (revision, path) for revision, path in program.paths().items()
            if revision not in left)
        # What is left is the rest of the same run: the rest of this
        # program, captured in one go as plain Alembic runs it in one go,
        # not captured again from here; unless what Alembic remembered
        # had parted from what capture saw (the rest of that try ran
        # through Alembic, and the new try starts without that memory).
        tries.program = None if run.forced else program.rest_from(
            tries.from_heads, tries.steps)
        return None

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
            if run.in_block:
                message += (
                    " (in an autocommit block: CREATE INDEX CONCURRENTLY "
                    "waits for every older transaction of the database, "
                    "other tenants' and the app's; raise lock_timeout, or "
                    "run with fewer --workers)")
            elif run.committed_in_revision:
                message += (" (not tried again: part of the revision was "
                            "committed)")
            else:
                message += (f" (gave up after {attempt} attempts; another "
                            "transaction holds a lock on this schema's "
                            "table)")
        for name, dropped in run.left_invalid:
            qualified = f'"{schema_plan.schema}"."{name}"'
            message += (
                f"; the autocommit block left the INVALID index {name}, "
                "which was dropped: a re-run builds it again" if dropped else
                f"; the autocommit block left the INVALID index {name}: "
                f"drop it (DROP INDEX CONCURRENTLY {qualified}), then re-run")
        at = run.db_heads if run.committed else schema_plan.from_heads
        if run.committed_in_revision:
            message += (
                f"; statements of revision {revision} before its "
                f"autocommit block were committed and its version is "
                f"still {_revs(at)}, so a re-run runs {revision} again "
                "from its start")
        elif run.committed:
            message += (
                f"; it is at {_revs(at)}: the revisions before, which have "
                "autocommit blocks, committed as they ended, and a re-run "
                "goes on from there")
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


def not_attempted(schema_plan, reason):
    """The result of a schema the run did not get to, and why."""
    return SchemaResult(schema_plan.schema, NOT_RUN, schema_plan.from_heads,
                        schema_plan.to_heads, error=f"not attempted: {reason}")


def _revs(heads):
    return ",".join(heads) if heads else "base"


def execute_branch(migrator, plan, planner, programs, **options):
    """Run ``plan``; return ``(BranchReport, reason the run stopped or
    None)``. See :class:`BranchExecution` for the options."""
    return BranchExecution(migrator, plan, planner, programs,
                           **options).run()
