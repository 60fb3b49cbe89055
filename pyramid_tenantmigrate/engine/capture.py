"""Capturing what each revision sends to the database, once per run.

Replaying a revision's SQL in 10,000 tenants is right only if that SQL is
what plain Alembic would send in every one of them. Capture finds out by
running the revisions the way plain Alembic runs them, and watching:

- online, with the options of the project's ``env.py``, in one Alembic
  context for the whole range: what Alembic remembers between the
  revisions of one run (an enum type created by an earlier revision is not
  created again) is remembered here too;
- in a scratch schema brought to the same starting revision, alone on
  ``search_path`` with ``extra_search_path`` after it, as a tenant is,
  inside a transaction that is rolled back: nothing stays;
- twice, in two scratch schemas on two connections.

Every statement psycopg2 sends is recorded as psycopg2 sends it (bound
parameters inlined by psycopg2 itself). A revision *replays*, its recorded
statements being what each tenant runs, only if all of this holds:

- nothing it ran handed the database's answers back to its code: every
  statement run outside Alembic's operations (``op.get_bind().execute``,
  an inspector, ``metadata.create_all(bind)``, ``Enum.create(checkfirst=
  True)``) returned no rows and no row count. DDL and ``SET`` return
  neither; ``SELECT`` and DML through the connection do. Results of
  ``op.execute`` never reach a revision, so they do not count;
- no statement failed (a probe inside ``try/except``);
- no statement names the scratch schema;
- it sent the same statements both times (values computed in Python, such
  as ``uuid4()`` or the current time, differ);
- it did not commit or roll back the transaction itself, nor use COPY, a
  server-side cursor or ``callproc`` through the driver;
- its module does not set ``tenantmigrate_replay = False``.

What the revision did with answers that are not the database's
(``bind.dialect.name``, ``context.as_sql`` is False as in every online
run) is part of what was recorded. Revisions that do not replay run
through Alembic in each tenant, in order, in the same transaction as the
replayed ones (:mod:`.execute`).

Statements inside ``autocommit_block()`` are recorded as such. In the
capture transaction they run in their transaction-safe form
(:func:`transaction_safe`), which builds the same catalog.
"""
import copy
import re
import secrets
from dataclasses import dataclass, replace

import psycopg2
import psycopg2.extensions
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from ..environment import ALEMBIC_LOCK, AlembicSession
from ..errors import describe_error, sqlstate
from ..names import quote_schema
from ..plan import heads_after
from ..reserved import CAPTURE_PREFIX
from ..retry import RETRYABLE
from .sql import search_path_sql, timeouts_sql

#: Statements that end or start the transaction: a revision sending one
#: controls the transaction itself.
_TRANSACTION_CONTROL = re.compile(
    r"(?:COMMIT|END|ABORT|BEGIN|START\s+TRANSACTION|PREPARE\s+TRANSACTION"
    r"|ROLLBACK(?!\s+(?:TRANSACTION\s+|WORK\s+)?TO\b))\b", re.I)
_LEADING_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.S)
_CONCURRENT_DDL = re.compile(
    r"(?P<head>\A(?:CREATE\s+(?:UNIQUE\s+)?INDEX|DROP\s+INDEX"
    r"|REINDEX\s+(?:\([^)]*\)\s*)?(?:INDEX|TABLE|SCHEMA)))"
    r"\s+CONCURRENTLY\b", re.I)
_DETACH_CONCURRENTLY = re.compile(
    r"\A(?P<head>ALTER\s+TABLE\b.*\bDETACH\s+PARTITION\b.*?)\s+CONCURRENTLY"
    r"(?P<tail>\s*;?\s*)\Z", re.I | re.S)
_MAINTENANCE = re.compile(r"\AVACUUM\b", re.I)


def _body(statement):
    return statement[_LEADING_COMMENTS.match(statement).end():]


def controls_transaction(statement):
    """Tell whether ``statement`` starts or ends the transaction
    (savepoints do not)."""
    return bool(_TRANSACTION_CONTROL.match(_body(statement)))


def transaction_safe(statement):
    """The form of ``statement`` that may run inside a transaction, or
    ``None`` when it has nothing to do there.

    Used where a statement from an ``autocommit_block()`` must run inside a
    transaction: in capture, and when a brand-new schema is made in one
    transaction (provisioning, spares), where nobody else can see its
    tables yet. ``CREATE INDEX CONCURRENTLY`` builds the same index as
    ``CREATE INDEX``; ``VACUUM`` has nothing to do in a new schema. Other
    statements are returned unchanged (PostgreSQL says if one cannot run).
    """
    body = _body(statement)
    if _MAINTENANCE.match(body):
        return None
    match = _CONCURRENT_DDL.match(body)
    if match:
        return match.group("head") + body[match.end():]
    match = _DETACH_CONCURRENTLY.match(body)
    if match:
        return match.group("head") + match.group("tail")
    return statement


@dataclass(frozen=True)
class Statement:
    """One statement a revision sent, as text; ``in_block`` when it ran
    inside ``autocommit_block()``."""

    sql: str
    in_block: bool = False


@dataclass(frozen=True)
class CapturedRevision:
    """What one revision did in capture.

    ``reason`` says why it cannot replay (``None``: it can).
    ``memo_before`` / ``memo_after`` are what Alembic remembered between
    revisions before and after it (see the module docstring).
    ``controls_transaction``: it commits or rolls back by itself.
    """

    revision: str
    statements: tuple
    reason: str = None
    memo_before: dict = None
    memo_after: dict = None
    controls_transaction: bool = False
    #: Capture failed only because another transaction held a lock it
    #: needed: worth capturing again next time.
    transient: bool = False

    @property
    def replayable(self):
        return self.reason is None


def capture_steps(migrator, steps, from_heads, branch="tenant"):
    """Capture ``steps`` (revision steps starting at ``from_heads``) twice;
    return one :class:`CapturedRevision` per step."""
    engine = create_engine(
        migrator.engine.url, poolclass=NullPool,
        connect_args={"connection_factory": _CaptureConnection})
    try:
        first = _capture(migrator, engine, steps, from_heads, branch)
        second = _capture(migrator, engine, steps, from_heads, branch)
    finally:
        engine.dispose()
    return [_compare(a, b) for a, b in zip(first, second)]


def _compare(first, second):
    if first.reason is not None:
        return first
    if second.reason is not None:
        return replace(first, reason=second.reason)
    if (first.statements != second.statements
            or first.memo_after != second.memo_after):
        return replace(first, reason=(
            "sends different SQL each time it runs (a value computed in "
            "Python, such as uuid4() or the current time?)"))
    return first


def _capture(migrator, engine, steps, from_heads, branch):
    """One capture of ``steps``: attempts in fresh transactions until every
    revision either ran or failed once (see :func:`_attempt`)."""
    prefix = _prefix_steps(migrator.script, from_heads)
    skipped, failures = set(), {}
    recorded = {}
    for _ in range(len(prefix) + len(steps) + 1):
        recorder = _Recorder(CAPTURE_PREFIX + secrets.token_hex(8))
        failed = _attempt(migrator, engine, prefix, steps, branch, recorder,
                          skipped)
        recorded = {c.revision: c for c in recorder.captured}
        if failed is None:
            break
        revision, error = failed
        skipped.add(revision)
        failures[revision] = error
    results = []
    for step in steps:
        revision = step.revision.revision
        error = failures.get(revision)
        if error is not None:
            results.append(CapturedRevision(
                revision, (), "could not be captured: it failed in the "
                f"scratch schema: {describe_error(error)}",
                transient=_transient(error)))
        elif revision in recorded:
            results.append(recorded[revision])
        else:  # a revision before it failed in the scratch schema
            results.append(CapturedRevision(revision, (), (
                "could not be captured: revisions it builds on failed in "
                "the scratch schema"), transient=any(
                    _transient(e) for e in failures.values())))
    return results


def _attempt(migrator, engine, prefix, steps, branch, recorder, skipped):
    """Bring a scratch schema to the starting revision (``prefix``, in an
    Alembic run of its own, as tenants had it), then run and record
    ``steps``, in one transaction that is rolled back. Revisions in
    ``skipped`` do nothing (their version still moves). Returns
    ``(revision, error)`` of the first revision that failed, or ``None``.

    A revision failing here (a data migration that needs rows, an enum
    value its own transaction may not use yet) is skipped in the next
    attempt: revisions that read nothing send the same SQL whatever the
    scratch schema holds, so the others are still captured faithfully;
    one that depended on the skipped revision fails in turn."""
    settings = migrator.settings
    scratch = recorder.scratch
    with ALEMBIC_LOCK, engine.connect() as connection:
        raw = connection.connection.driver_connection
        raw.recorder = recorder
        raw.cursor_factory = _CaptureCursor
        transaction = connection.begin()
        try:
            connection.exec_driver_sql(
                f"CREATE SCHEMA {quote_schema(scratch)}")
            connection.exec_driver_sql(search_path_sql(
                scratch, settings.extra_search_path))
            connection.exec_driver_sql(timeouts_sql(
                settings.lock_timeout, settings.statement_timeout))
            failed = _run(migrator, connection, scratch, branch, recorder,
                          prefix, skipped, record=False)
            if failed is None:
                failed = _run(migrator, connection, scratch, branch,
                              recorder, steps, skipped, record=True)
            return failed
        finally:
            transaction.rollback()
            raw.recorder = None


def _run(migrator, connection, scratch, branch, recorder, steps, skipped,
         record):
    """Run ``steps`` in one Alembic context; ``(revision, error)`` of the
    first one that failed, or ``None``."""
    if not steps:
        return None
    session = AlembicSession(migrator, connection, scratch, branch,
                             autocommit_block=recorder.block)
    if record:
        _watch_operations(session.context.impl, recorder)
    wrapped = [_SkippedStep(step) if step.revision.revision in skipped
               else _RecordedStep(step, recorder, session) if record
               else _WatchedStep(step, recorder) for step in steps]
    try:
        session.run(wrapped)
    except Exception as exc:
        if recorder.running is None:
            raise  # not in a revision: the scratch schema itself failed
        return recorder.running, exc
    return None


def _prefix_steps(script, heads):
    """The steps from base to ``heads``, as a tenant at ``heads`` had them."""
    if not heads:
        return []

    steps, current = [], ()
    for head in heads:
        more = script._upgrade_revs(head, current)
        steps.extend(more)
        current = heads_after(current, more)
    return steps


def _transient(exc):
    return sqlstate(exc) in RETRYABLE


def _watch_operations(impl, recorder):
    """Count the statements Alembic's operations run (``op.*``): their
    results never reach the revision's code."""
    run = impl._exec

    def _exec(*args, **kw):
        recorder.op_depth += 1
        try:
            return run(*args, **kw)
        finally:
            recorder.op_depth -= 1

    impl._exec = _exec


class _Recorder:
    """What the capture of one run has seen so far."""

    def __init__(self, scratch):
        self.scratch = scratch
        self.active = False
        self.op_depth = 0
        self.in_block = False
        self.captured = []
        #: The revision running now (recorded or not), for failures.
        self.running = None
        self._revision = None
        self._statements = []
        self._reasons = []
        self._controls_transaction = False
        self._memo_before = None

    def begin(self, revision, memo, module):
        self.running = revision
        self._revision = revision
        self._statements = []
        self._reasons = []
        self._controls_transaction = False
        self._memo_before = copy.deepcopy(memo)
        if getattr(module, "tenantmigrate_replay", True) is False:
            self.note("its module sets tenantmigrate_replay = False")
        self.active = True

    def end(self, memo):
        self.active = False
        self.running = None
        reason = "; ".join(self._reasons) or None
        self.captured.append(CapturedRevision(
            self._revision, tuple(self._statements), reason,
            self._memo_before, copy.deepcopy(memo),
            self._controls_transaction))

    def note(self, reason):
        if reason not in self._reasons:
            self._reasons.append(reason)

    def record(self, sql, cursor, failed=False):
        if self.scratch in sql:
            self.note("names the schema it runs in (the SQL would differ "
                      "per tenant)")
        if failed:
            self.note(f"a statement failed and the revision went on (a "
                      f"probe?): {_head(sql)}")
        elif self.op_depth == 0:
            if cursor.description is not None:
                self.note(f"reads the database: {_head(sql)}")
            elif cursor.rowcount >= 0:
                self.note("changes rows through the connection (the row "
                          f"count reaches its code): {_head(sql)}")
        self._statements.append(Statement(sql, self.in_block))

    def transaction_control(self, sql):
        self._controls_transaction = True
        self.note(f"commits or rolls back by itself: {_head(sql)}")

    def block(self):
        return _Block(self)


class _Block:
    """``autocommit_block()`` in capture: its statements are marked, and
    run in their transaction-safe form inside the capture transaction."""

    def __init__(self, recorder):
        self.recorder = recorder

    def __enter__(self):
        self.recorder.in_block = True

    def __exit__(self, *exc_info):
        self.recorder.in_block = False


def _head(sql):
    text = " ".join(sql.split())
    return text if len(text) <= 70 else text[:67] + "..."


class _RecordedStep:
    """A revision step whose migration function is recorded."""

    def __init__(self, step, recorder, session):
        self._step = step
        self._recorder = recorder
        self._session = session

    def __getattr__(self, name):
        return getattr(self._step, name)

    def __str__(self):
        return str(self._step)

    @property
    def migration_fn(self):
        migrate = self._step.migration_fn
        recorder, session = self._recorder, self._session
        revision = self._step.revision

        def run(**kw):
            recorder.begin(revision.revision, session.memo, revision.module)
            migrate(**kw)
            recorder.end(session.memo)

        return run


class _WatchedStep(_RecordedStep):
    """A step of the prefix: run, not recorded; a failure is put on it."""

    def __init__(self, step, recorder):
        super().__init__(step, recorder, None)

    @property
    def migration_fn(self):
        migrate = self._step.migration_fn
        recorder, revision = self._recorder, self._step.revision.revision

        def run(**kw):
            recorder.running = revision
            migrate(**kw)
            recorder.running = None

        return run


class _SkippedStep(_RecordedStep):
    """A revision that failed in an earlier attempt: it does nothing now
    (Alembic still moves the scratch schema's version past it)."""

    def __init__(self, step):
        super().__init__(step, None, None)

    @property
    def migration_fn(self):
        return lambda **kw: None


class _CaptureConnection(psycopg2.extensions.connection):
    """A psycopg2 connection that never lets a revision end the capture
    transaction."""

    recorder = None

    def commit(self):
        recorder = self.recorder
        if recorder is not None and recorder.active:
            recorder.transaction_control("connection.commit()")
            return None
        return super().commit()


class _CaptureCursor(psycopg2.extensions.cursor):
    """Records every statement while a revision runs (see the module
    docstring), and keeps the capture transaction open."""

    def execute(self, query, vars=None):
        recorder = self.connection.recorder
        if recorder is None:
            return super().execute(query, vars)
        if self.name is not None and recorder.active:
            recorder.note("reads the database through a server-side cursor")
        sql = self.mogrify(query, vars).decode(
            psycopg2.extensions.encodings[self.connection.encoding])
        if controls_transaction(sql):
            if recorder.active:
                recorder.transaction_control(sql)
            return None  # not sent: the capture transaction stays open
        sent = transaction_safe(sql) if recorder.in_block else sql
        try:
            if sent is not None:
                # Not in a savepoint: an enum value added in one could not
                # be used later in the capture transaction.
                super().execute(sent)
        except psycopg2.Error:
            if recorder.active:
                recorder.record(sql, self, failed=True)
            raise
        if recorder.active:
            recorder.record(sql, self)
        return None

    def executemany(self, query, vars_list):
        for vars in vars_list:
            self.execute(query, vars)

    def _not_replayable(self, what):
        recorder = self.connection.recorder
        if recorder is not None and recorder.active:
            recorder.note(f"uses {what} through the driver")

    def callproc(self, *args, **kw):
        self._not_replayable("callproc")
        return super().callproc(*args, **kw)

    def copy_expert(self, *args, **kw):
        self._not_replayable("COPY")
        return super().copy_expert(*args, **kw)

    def copy_from(self, *args, **kw):
        self._not_replayable("COPY")
        return super().copy_from(*args, **kw)

    def copy_to(self, *args, **kw):
        self._not_replayable("COPY")
        return super().copy_to(*args, **kw)
