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

- what the database answered it is what it answers in the tenant: a
  statement run outside Alembic's operations (``op.get_bind().execute``,
  an inspector, ``metadata.create_all(bind)``) that returned rows, or
  whose row count the revision read (``result.rowcount``), is replayed
  with a check: the same read must give the same rows (a fingerprint
  computed by the server) in the tenant, the same DML the same row
  count (a read through a server-side cursor, ``yield_per()``, is checked
  in full; one locking rows, ``FOR UPDATE``, takes its locks in the
  tenant as in Alembic). Reads that may not run again as they are (a
  write, ``nextval``, a row count through the driver itself) make the
  revision not replay. A tenant where a check fails
  runs the revision through Alembic. Results of ``op.execute`` never
  reach a revision, so they are never checked. What differs per schema
  by nature is left out of catalog reads (OIDs, the order of catalog
  rows, the schema's own name), and OIDs an inspector passes on are
  recorded as names (:func:`_relations_by_name`);
- no statement failed (a probe inside ``try/except``);
- no statement names the scratch schema;
- it sent the same statements both times (values computed in Python, such
  as ``uuid4()`` or the current time, differ);
- it did not commit or roll back the transaction itself, nor use COPY or
  ``callproc`` through the driver;
- its module does not set ``tenantmigrate_replay = False``.

What the revision did with answers that are not the database's
(``bind.dialect.name``, ``context.as_sql`` is False as in every online
run) is part of what was recorded. Revisions that do not replay run
through Alembic in each tenant, in order, in the same transaction as the
replayed ones (:mod:`.execute`).

Statements inside ``autocommit_block()`` are recorded as such. In the
capture transaction they run in their transaction-safe form
(:func:`transaction_safe`), which builds the same catalog. Each commits by
itself in a tenant, so a check inside a block, or after it, is only made
where nothing the revision sent before it changed anything (reads, DML of
no rows: a backfill looping until a batch finds nothing, an index probe):
a tenant answering otherwise then runs the whole revision through Alembic
as if it had not started.
"""
import copy
import re
import secrets
from dataclasses import dataclass, replace

import psycopg2
import psycopg2.extensions
from sqlalchemy import create_engine, event
from sqlalchemy.pool import NullPool

from ..citus import enabled as citus_enabled
from ..environment import AlembicSession
from ..errors import describe_error, sqlstate
from ..names import quote_schema
from ..plan import heads_after
from ..reserved import CAPTURE_PREFIX
from ..retry import RETRYABLE
from .sql import (
    fingerprint_sql,
    read_fingerprint,
    search_path_sql,
    timeouts_sql,
)

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


#: A read's closing locking clause (``FOR UPDATE``, ``FOR SHARE`` ...):
#: the rows it reads are the same without it.
_ROW_LOCKS = re.compile(
    r"\s+FOR\s+(?:NO\s+KEY\s+UPDATE|UPDATE|KEY\s+SHARE|SHARE)"
    r"(?:\s+OF\s+[\w\s,.\"]+?)?(?:\s+(?:NOWAIT|SKIP\s+LOCKED))?\s*;?\s*\Z",
    re.I)


def _without_row_locks(sql):
    """``sql`` without a closing locking clause, if it is a SELECT."""
    if not re.match(r"(?:\(\s*)*(?:SELECT|WITH)\b", _body(sql), re.I):
        return sql
    return _ROW_LOCKS.sub("", sql)


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
    inside ``autocommit_block()``.

    ``check`` is set when the revision used what the statement answered:
    ``("rows", fingerprint, ignored, unordered)`` for a read (its ``oid``
    columns left out; a catalog read's rows hashed in any order, see
    :func:`.sql.fingerprint_sql`), ``("rowcount", n)`` for DML
    whose row count it read. Replayed, the statement then checks in each
    tenant that the answer is the same (:func:`.sql.checked_sql`); where
    it is not, the tenant runs the revision through Alembic.
    """

    sql: str
    in_block: bool = False
    check: tuple = None

    @property
    def replay_sql(self):
        from .sql import checked_sql
        return checked_sql(self.sql, self.check)


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
        # One after the other: run at once, two captures of revisions
        # referring to a shared table (a foreign key locks it) would
        # queue behind each other, up to the lock timeout.
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
    # The same statements in another order is fine: SQLAlchemy emits the
    # indexes of a table in set order, which plain Alembic does per tenant
    # too (any order it could send is one it sends).
    # A catalog read in one capture only is what SQLAlchemy looked up once
    # and keeps (pg_am's access methods): a read, checked where it replays.
    ours = sorted(filter(_compared, first.statements), key=_order)
    theirs = sorted(filter(_compared, second.statements), key=_order)
    if ours == theirs and first.memo_after == second.memo_after:
        return first
    differs = [a.sql for a, b in zip(ours, theirs) if a != b]
    if differs and [s.sql for s in ours] == [s.sql for s in theirs]:
        return replace(first, reason=(
            "a read answers differently each time it runs (the schema's "
            f"name, the time, an OID?): {_head(differs[0])}"))
    return replace(first, reason=(
        "sends different SQL each time it runs (a value computed in "
        "Python, such as uuid4() or the current time?)"))


def _changes_nothing(statement):
    check = statement.check
    return bool(check) and (check[0] == "rows" or check == ("rowcount", 0))


def _compared(statement):
    check = statement.check
    return not (check and check[0] == "rows" and check[3])


def _order(statement):
    return statement.sql, statement.in_block, repr(statement.check)


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
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        raw.recorder = recorder
        raw.cursor_factory = _CaptureCursor
        transaction = connection.begin()
        try:
            if citus_enabled(migrator, connection):
                # A regular scratch schema even where the cluster makes
                # every new schema distributed: the SQL is what is wanted
                # here, and a statement Citus would refuse is named by
                # the Citus checks, not lost as a capture failure.
                connection.exec_driver_sql(
                    "SET LOCAL citus.enable_schema_based_sharding = off")
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
        _watch_results(connection, recorder)
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


def _watch_results(connection, recorder):
    """Results of DML the revision runs itself (``bind.execute(update)``)
    tell it one thing, how many rows changed: reading ``rowcount`` (or the
    like) is reading the database; ignoring it is not."""
    def before(conn, cursor, statement, parameters, context, executemany):
        recorder.in_sqlalchemy = True  # the cursor takes it back

    def starting(conn, clauseelement, multiparams, params, options):
        recorder.execute_started = recorder.recorded

    def executed(conn, clauseelement, multiparams, params, options, result):
        if (recorder.active and recorder.op_depth == 0
                and not result.returns_rows and recorder.last_sql):
            sent = range(recorder.execute_started, recorder.recorded)
            result.__dict__["_tenantmigrate_watch"] = (
                recorder, sent[0] if len(sent) == 1 else None,
                _head(recorder.last_sql))
            result.__class__ = _watched_result_class(type(result))

    event.listen(connection, "before_cursor_execute", before)
    event.listen(connection, "before_execute", starting)
    event.listen(connection, "after_execute", executed)


#: What a result of DML tells about the database.
_REVEALING = ("rowcount", "lastrowid", "inserted_primary_key",
              "returned_defaults")
_watched_classes = {}


def _watched_result_class(cls):
    """A subclass of ``cls`` noting when what it reveals is read."""
    if cls not in _watched_classes:
        def revealing(name):
            original = getattr(cls, name)

            def get(self):
                watch = self.__dict__.get("_tenantmigrate_watch")
                if watch is not None:
                    recorder, index, statement = watch
                    if name == "rowcount" and index is not None:
                        recorder.check_rowcount(index)
                    else:
                        recorder.note(f"reads the {name} of a statement it "
                                      f"ran: {statement}")
                return original.__get__(self, type(self))
            return property(get)

        members = {name: revealing(name) for name in _REVEALING
                   if hasattr(cls, name)}
        _watched_classes[cls] = type(f"Watched{cls.__name__}", (cls,),
                                     dict(members, __slots__=()))
    return _watched_classes[cls]


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
        #: A statement of SQLAlchemy's is on its way to the driver (set by
        #: an event, taken back by the cursor): what its result tells
        #: reaches the code through a watched result.
        self.in_sqlalchemy = False
        self.last_sql = None
        self.execute_started = 0
        self._start(None, None)

    def _start(self, revision, memo_before):
        """What is recorded of one revision, from its start."""
        self._revision = revision
        self._statements = []
        self._rowcounts = []
        #: ``{statement index: (cursor, ordered check)}`` of catalog reads
        #: checked in any order unless the revision left rows unread.
        self._in_order = {}
        self._reasons = []
        self._controls_transaction = False
        self._memo_before = memo_before

    def begin(self, revision, memo, module):
        self.running = revision
        self._start(revision, copy.deepcopy(memo))
        if getattr(module, "tenantmigrate_replay", True) is False:
            self.note("its module sets tenantmigrate_replay = False")
        self.active = True

    def end(self, memo):
        self.active = False
        self.running = None
        for index, (cursor, ordered) in self._in_order.items():
            # It took fewer rows than there were (.first(), .scalar()):
            # which one came first is what it used.
            if cursor.fetched < cursor.rowcount:
                self._statements[index] = replace(self._statements[index],
                                                  check=ordered)
        reason = "; ".join(self._reasons) or None
        self.captured.append(CapturedRevision(
            self._revision, tuple(self._statements), reason,
            self._memo_before, copy.deepcopy(memo),
            self._controls_transaction))

    def note(self, reason):
        if reason not in self._reasons:
            self._reasons.append(reason)

    @property
    def recorded(self):
        """How many statements the running revision has sent so far."""
        return len(self._statements)

    def record(self, sql, cursor, failed=False, via_sqlalchemy=False):
        if self.scratch in sql:
            self.note("names the schema it runs in (the SQL would differ "
                      "per tenant)")
        if failed:
            self.note(f"a statement failed and the revision went on (a "
                      f"probe?): {_head(sql)}")
        elif _names_scratch_oids(cursor.connection, sql, self.scratch):
            self.note(f"sends the OID of an object of the schema it runs "
                      f"in (another in each schema): {_head(sql)}")
        check = None
        if not failed and self.op_depth == 0:
            # A server-side cursor has no description until fetched: its
            # SELECT is a read all the same (checked in full, whatever
            # part of it the revision fetched).
            reads = cursor.description is not None or cursor.name is not None
            if reads and self.in_block and cursor.name is not None:
                # psycopg2 has no server-side cursor outside a
                # transaction: plain Alembic fails there.
                self.note(f"reads through a server-side cursor inside its "
                          f"autocommit block: {_head(sql)}")
            elif reads and not self._may_check(len(self._statements),
                                               self.in_block):
                self.note(f"reads the database where part of it has "
                          f"committed (its autocommit block): {_head(sql)}")
            elif reads:
                check = self._fingerprint(cursor, sql)
            elif cursor.rowcount >= 0 and not via_sqlalchemy:
                # Through the driver itself: whether the revision looks at
                # the row count cannot be told.
                self.note("changes rows through the driver (the row count "
                          f"may reach its code): {_head(sql)}")
        self._statements.append(Statement(sql, self.in_block, check))
        self._rowcounts.append(cursor.rowcount)
        self.last_sql = sql

    def _may_check(self, index, in_block):
        """Whether statement ``index`` may be checked. Each statement of
        an autocommit block commits by itself: a tenant answering
        otherwise inside or after the block can run the revision through
        Alembic only if nothing the revision sent before the check changed
        anything (reads, DML of no rows: a backfill's first batch finding
        nothing). The checked statement itself is rolled back with its
        check."""
        earlier = self._statements[:index]
        return (not in_block and not any(s.in_block for s in earlier)
                or all(map(_changes_nothing, earlier)))

    def _fingerprint(self, cursor, sql):
        """The rows a read returned, as the server fingerprints them (to
        check the same read in each tenant), or ``None`` (and a reason)
        when the read cannot be run again as it is, read-only."""
        ignored = _oid_columns(cursor)
        if ignored is None:
            self.note(f"reads OIDs among columns of the same name: "
                      f"{_head(sql)}")
            return None
        probe = psycopg2.extensions.cursor(cursor.connection)
        # The answer comes as a notice; the revision's own notices stay.
        notices = cursor.connection.notices
        kept = notices[:]
        notices.clear()
        try:
            probe.execute("SAVEPOINT tenantmigrate_read; "
                          "SET LOCAL transaction_read_only = on; "
                          "SET LOCAL client_min_messages = notice")
            try:
                unordered = _reads_only_catalogs(probe, sql)
                # Read-only, the probe cannot lock rows; the tenant's
                # check runs the read as sent, locks and all.
                read = _without_row_locks(sql)
                probe.execute(fingerprint_sql(read, ignored, unordered))
                fingerprint = read_fingerprint(notices)
                if unordered and cursor.rowcount > 1:
                    # Should the revision use a row before the last (its
                    # first, say), the order counts: see end().
                    probe.execute(fingerprint_sql(read, ignored))
                    self._in_order[len(self._statements)] = (
                        cursor, ("rows", read_fingerprint(notices), ignored,
                                 False))
            finally:
                # Released too: statements after a rolled-back savepoint
                # would run in a subtransaction, where PostgreSQL does not
                # let an enum value added there be used (c05/c06).
                probe.execute("ROLLBACK TO SAVEPOINT tenantmigrate_read; "
                              "RELEASE SAVEPOINT tenantmigrate_read")
        except psycopg2.Error:
            fingerprint = None
        finally:
            probe.close()
            notices[:] = kept
        if fingerprint is None:
            self.note(f"reads the database (a read that cannot be checked "
                      f"again: {_head(sql)})")
            return None
        return ("rows", fingerprint, ignored, unordered)

    def check_rowcount(self, index):
        """The revision read the row count of statement ``index``."""
        statement = self._statements[index]
        if not self._may_check(index, statement.in_block):
            self.note(f"reads the row count of: {_head(statement.sql)}")
            return
        self._statements[index] = replace(
            statement, check=("rowcount", self._rowcounts[index]))

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


_CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})


def _reads_only_catalogs(cursor, sql):
    """Whether every table ``sql`` reads is a system catalog, as the
    server plans it (an inspector's queries; a view of
    ``information_schema`` is planned as the catalogs it reads)."""
    if not sql.lstrip().lower().startswith(("select", "with")):
        return False  # SHOW, VALUES...: not a query over tables
    cursor.execute("EXPLAIN (VERBOSE, FORMAT JSON) " + sql)
    schemas, nodes = set(), [cursor.fetchone()[0][0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if "Relation Name" in node:
            schemas.add(node.get("Schema"))
        nodes.extend(node.get("Plans", ()))
    return bool(schemas) and schemas <= _CATALOG_SCHEMAS


#: PostgreSQL's FirstNormalObjectId: OIDs below are the system's own.
_FIRST_USER_OID = 16384


def _relations_by_name(cursor, vars, scratch):
    """``vars`` of a catalog query with each OID of a relation (or type)
    of the scratch schema sent as its name (``'notes'::regclass::oid``),
    and the scratch schema's own OID as ``current_schema()``'s: what an
    inspector passes on from one catalog query to the next (SQLAlchemy's
    ``conrelid IN (...)``) then means the same relation in each tenant.
    A number that only happens to be such an OID is another number in
    the second capture: the SQL differs, the revision does not replay."""
    if not isinstance(vars, dict):
        return vars
    oids = {value for value in vars.values()
            if type(value) is int and _FIRST_USER_OID <= value < 2**32}
    if not oids:
        return vars
    names = _scratch_objects(cursor.connection, scratch, sorted(oids))
    return {key: names.get(value, value) if type(value) is int else value
            for key, value in vars.items()}


_SCRATCH_OBJECTS = """
SELECT c.oid, quote_literal(c.oid::regclass::text) || '::regclass::oid'
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n
  ON n.oid = c.relnamespace
WHERE n.nspname = %(scratch)s AND c.oid = ANY(%(oids)s::oid[])
UNION ALL
SELECT t.oid, quote_literal(t.oid::regtype::text) || '::regtype::oid'
FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n
  ON n.oid = t.typnamespace
WHERE n.nspname = %(scratch)s AND t.oid = ANY(%(oids)s::oid[])
UNION ALL
SELECT n.oid, 'current_schema()::regnamespace::oid'
FROM pg_catalog.pg_namespace n
WHERE n.nspname = %(scratch)s AND n.oid = ANY(%(oids)s::oid[])
"""


_NUMBERS = re.compile(r"(?<![\w.$'])\d{5,10}(?![\w.])")


def _names_scratch_oids(connection, sql, scratch):
    """Whether ``sql`` holds, as a number, the OID of an object of the
    scratch schema (one the revision read and wrote back into SQL by
    itself): that SQL means another object, or none, in each tenant."""
    oids = sorted({int(n) for n in _NUMBERS.findall(sql)
                   if _FIRST_USER_OID <= int(n) < 2**32})
    if not oids:
        return False
    probe = psycopg2.extensions.cursor(connection)
    try:
        probe.execute(_SCRATCH_OIDS, {"scratch": scratch, "oids": oids})
        return probe.fetchone()[0]
    finally:
        probe.close()


_SCRATCH_OIDS = """
SELECT EXISTS (
  SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = %(scratch)s
    AND (n.oid = ANY(%(oids)s::oid[])
      OR EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE
                 c.relnamespace = n.oid AND c.oid = ANY(%(oids)s::oid[]))
      OR EXISTS (SELECT 1 FROM pg_catalog.pg_type t WHERE
                 t.typnamespace = n.oid AND t.oid = ANY(%(oids)s::oid[]))
      OR EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE
                 k.connamespace = n.oid AND k.oid = ANY(%(oids)s::oid[]))
      OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc p WHERE
                 p.pronamespace = n.oid AND p.oid = ANY(%(oids)s::oid[]))))
"""


def _scratch_objects(connection, scratch, oids):
    probe = psycopg2.extensions.cursor(connection)
    try:
        probe.execute(_SCRATCH_OBJECTS, {"scratch": scratch, "oids": oids})
        return {oid: psycopg2.extensions.AsIs(expression)
                for oid, expression in probe.fetchall()}
    finally:
        probe.close()


#: The type ``oid``: the same catalog row has another one in each schema.
_OID_TYPE = 26


def _oid_columns(cursor):
    """Names of the columns of type ``oid`` a read returned, left out of
    its check (a revision using an OID's value in SQL sends other SQL in
    each capture, and does not replay); ``None`` when they cannot be
    left out by name (two columns of one name)."""
    columns = cursor.description or ()
    ignored = tuple(c.name for c in columns if c.type_code == _OID_TYPE)
    names = [c.name for c in columns]
    if ignored and len(set(names)) < len(names):
        return None
    return ignored


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

    #: Rows the revision took from the last statement's result.
    fetched = 0

    def fetchone(self):
        row = super().fetchone()
        self.fetched += row is not None
        return row

    def fetchmany(self, size=None):
        rows = (super().fetchmany() if size is None
                else super().fetchmany(size))
        self.fetched += len(rows)
        return rows

    def fetchall(self):
        rows = super().fetchall()
        self.fetched += len(rows)
        return rows

    def execute(self, query, vars=None, via_sqlalchemy=None):
        recorder = self.connection.recorder
        if recorder is None:
            return super().execute(query, vars)
        if via_sqlalchemy is None:
            via_sqlalchemy = recorder.in_sqlalchemy
        recorder.in_sqlalchemy = False
        if recorder.active:
            vars = _relations_by_name(self, vars, recorder.scratch)
        sql = self.mogrify(query, vars).decode(
            psycopg2.extensions.encodings[self.connection.encoding])
        if controls_transaction(sql):
            if recorder.active:
                recorder.transaction_control(sql)
            return None  # not sent: the capture transaction stays open
        sent = transaction_safe(sql) if recorder.in_block else sql
        self.fetched = 0
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
            recorder.record(sql, self, via_sqlalchemy=via_sqlalchemy)
        return None

    def executemany(self, query, vars_list):
        recorder = self.connection.recorder
        via = recorder.in_sqlalchemy if recorder is not None else False
        for vars in vars_list:
            self.execute(query, vars, via_sqlalchemy=via)

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
