"""One schema's program in its transaction: each step once, or rolled back.

A :class:`SchemaRun` runs a :class:`~.program.Program` for one schema on
one connection. On a connection of the run's own (autocommit at the
driver), it writes ``BEGIN`` and ``COMMIT`` itself, and the transaction:

1. sets ``search_path`` (the schema, then ``extra_search_path``) and the
   lock and statement timeouts with ``SET LOCAL``;
2. waits for the schema's advisory lock (:func:`~.sql.tenant_lock_sql`),
   so that no other run, shard, startup hook or sign-up works on it at
   the same time;
3. checks that the version table still holds what the plan read (the
   guard, :data:`~.sql.VERSION_MOVED` if not: the caller plans again);
4. runs the program: replayed steps as SQL (consecutive ones in one round
   trip), the others through Alembic on the same connection, in order;
5. writes the version and commits.

``autocommit_block()``: statements before the block commit (with the
version of the revisions already done), the block runs outside any
transaction, and the rest of the revision runs in a new transaction,
committed with the revision's version as it ends (a failure later on does
not take the revision back); the schema's lock is then held for the
session, across those commits. A failure inside a block drops any index
the block left INVALID.

In a caller's transaction (``own=False``: provisioning) nothing is
committed, the caller's settings are put back at the end, and blocks run
in their transaction-safe form (:func:`.capture.transaction_safe`).
"""
import contextlib

from sqlalchemy import event

from ..citus import (
    PROPAGATE_SET_LOCAL,
    create_schema_sql,
    one_statement_per_query,
)
from ..citus import enabled as citus_enabled
from ..environment import AlembicSession
from ..errors import describe_error, sqlstate
from ..names import quote_schema
from ..retry import RETRYABLE, RetryPolicy
from .capture import controls_transaction, transaction_safe
from .sql import (
    INVALID_INDEXES,
    READ_DIFFERS,
    guard_sql,
    last_step,
    search_path_sql,
    step_notice_sql,
    tenant_lock_sql,
    tenant_unlock_sql,
    timeouts_sql,
    version_update_sql,
)

_NO_TIMEOUT = "SET LOCAL lock_timeout = 0"
#: Around a replayed revision whose read may answer otherwise in a schema
#: (:attr:`.program.ProgramStep.in_place`).
_CHECK_SAVEPOINT = "tenantmigrate_check"

#: What a block set for the session, put back (abort() does it on failure).
_RESET_SESSION = ("RESET search_path; RESET lock_timeout; "
                  "RESET statement_timeout")


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

    ``own`` (default): on a connection of our own, in autocommit mode at
    the driver; this object sends ``BEGIN``/``COMMIT`` within its scripts,
    so a schema whose steps all replay, unchecked, takes one round trip.
    When some step runs through Alembic, the driver holds the transaction
    instead (a revision may use what needs one, such as a server-side
    cursor for ``yield_per``), and this object commits through it.

    A replayed step whose read is checked and may fail in a schema
    (:attr:`.program.ProgramStep.in_place`) takes a round trip of its own,
    after a savepoint, and the driver holds the transaction then too.

    Otherwise the caller's transaction: no commit, and the caller's
    settings are put back at the end.

    ``closing(schema)`` gives a statement to run before the schema's
    transaction commits (a run's grants to the tenant's role), or None.
    """

    def __init__(self, migrator, connection, schema, program, branch,
                 own=True, create_schema=False, closing=None):
        self.migrator = migrator
        self.settings = migrator.settings
        self.connection = connection
        self.schema = schema
        self.program = program
        self.branch = branch
        self.own = own
        self.create_schema = create_schema
        self.closing = closing
        self.db_heads = tuple(program.from_heads)
        self.done_heads = tuple(program.from_heads)
        self.buffer = []
        #: The revisions whose statements are in the buffer, in order.
        self.buffer_steps = []
        self.current = None
        self.session = None
        self.session_lock = False
        self.committed = False  # some work committed before the end
        self.commits = 0  # how many times work committed before the end
        self.commits_before_revision = 0
        self.in_transaction = False
        self.in_safe_block = False
        self.in_block = False  # outside any transaction, in a block
        self.left_invalid = []
        #: Replayed revisions whose check failed here: they ran through
        #: Alembic instead, in the same transaction.
        self.answered_otherwise = []
        #: What Alembic remembered parted from what capture saw: the
        #: rest ran through Alembic (see _run).
        self.forced = False
        # Alembic may run on this connection: the driver holds the
        # transaction (see the class docstring).
        self.driver = own and any(
            step.replay is None or step.in_place
            for step in program.steps)
        self.pending_commit = False
        #: Citus mode (:mod:`..citus`): each statement a query of its own,
        #: and in a transaction of ours SET LOCAL reaches the workers.
        self.citus = citus_enabled(migrator, connection)
        self.propagate = self.citus and own

    @property
    def raw(self):
        return self.connection.connection.driver_connection

    # What goes into the buffer, then to the server in one round trip.

    def _settings_sql(self, local=True):
        return [
            *([PROPAGATE_SET_LOCAL] if self.propagate and local else []),
            search_path_sql(self.schema, self.settings.extra_search_path,
                            local),
            *self._timeouts_sql(local),
        ]

    def _timeouts_sql(self, local=True):
        sql = timeouts_sql(self.settings.lock_timeout,
                           self.settings.statement_timeout, local)
        # Two SETs of integers: one statement each, in Citus mode.
        return sql.split("; ") if self.citus else [sql]

    def _begin(self, first):
        buffer = self.buffer
        if self.own and not self.driver:
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
            buffer.extend(create_schema_sql(self.schema, self.citus))
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
        buffer.extend(self._timeouts_sql())
        buffer.append(guard_sql(self.schema, self.settings.version_table,
                                self.program.from_heads))
        if not self.program.from_heads and self.program.version_table_ddl:
            buffer.append(self.program.version_table_ddl)

    def _sync_version(self):
        if self.done_heads != self.db_heads:
            self.buffer.append(version_update_sql(
                self.schema, self.settings.version_table, self.done_heads,
                self.db_heads))
            self.db_heads = self.done_heads

    def _end(self):
        if self.own:
            if self.driver:
                self.pending_commit = True  # after the buffer is sent
            else:
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
        if self.buffer:
            scripts = one_statement_per_query(self.citus, self.buffer)
            first = self.buffer_steps[0] if self.buffer_steps else None
            self.buffer = []
            self.buffer_steps = []
            step = None
            for sql in scripts:
                try:
                    step = last_step(send_script(self.connection, sql)) or (
                        step)
                except ScriptFailed as exc:
                    if exc.revision is None:
                        # No step notice yet: the buffer's first step.
                        exc.revision = step or first or self.current
                    raise
        if self.pending_commit:
            self.pending_commit = False
            self.raw.commit()

    # Running the program.

    def run(self):
        """Run the program; return the heads the schema ends at."""
        if self.driver:
            self.raw.autocommit = False
        try:
            return self._run()
        finally:
            self._close_session()

    def _run(self):
        program = self.program
        self._begin(first=True)
        live_memo = forced = False
        for item in program.steps:
            commits = self.commits_before_revision = self.commits
            if (item.replay is not None and not forced and live_memo
                    and self.session.memo != item.memo_before):
                # Alembic remembers something else than capture saw before
                # this revision: its recorded SQL may not be what Alembic
                # would send here, so it and the rest run through Alembic.
                forced = self.forced = True
            if (item.replay is not None and not forced
                    and self.own and item.in_place):
                # Its own round trip, so that a check failing undoes only
                # this revision.
                if self._replay_checked(item):
                    live_memo = False
                else:
                    self._through_alembic(item, live_memo)
                    live_memo = True
            elif item.replay is not None and not forced:
                self._replay(item)
                live_memo = False
            else:
                self._through_alembic(item, live_memo)
                live_memo = True
            if self.own and self.commits != commits:
                self._commit_revision()
        if program.stamp:
            self.done_heads = tuple(program.to_heads)
        self.current = None
        self._sync_version()
        closing = self.closing(self.schema) if self.closing else None
        if closing:
            self.buffer.append(closing)
        self._end()
        self._flush()
        self._autocommit()
        if self.session_lock:
            # Only once committed: the next holder must see the version.
            send_script(self.connection, tenant_unlock_sql(self.schema))
            self.session_lock = False
        return self.done_heads

    @property
    def committed_in_revision(self):
        """Part of the revision running now was committed (its autocommit
        block): trying it again would run that part twice."""
        return self.commits != self.commits_before_revision

    def _replay(self, item):
        self.current = item.revision
        # A notice tells which step a failure is in; the buffer's first
        # step needs none (a failure before any notice is its own), which
        # spares a one-revision upgrade a DO block per tenant.
        if self.buffer_steps:
            self.buffer.append(step_notice_sql(item.revision))
        self.buffer_steps.append(item.revision)
        for in_block, statements in item.replay:
            if in_block:
                self._block(statements)
            else:
                self.buffer.extend(statements)
        self.done_heads = item.heads_after

    def _replay_checked(self, item):
        """Replay ``item`` after a savepoint; ``False`` when one of its
        checks failed here (a read answers otherwise than in capture:
        this tenant's rows): what it did is then rolled back to the
        savepoint, for the caller to run it through Alembic instead."""
        heads = self.done_heads
        self.buffer.append(f"SAVEPOINT {_CHECK_SAVEPOINT}")
        self._replay(item)
        self.buffer.append(f"RELEASE SAVEPOINT {_CHECK_SAVEPOINT}")
        try:
            self._flush()
            return True
        except ScriptFailed as exc:
            if (sqlstate(exc.error) != READ_DIFFERS
                    or exc.revision != item.revision):
                raise
        send_script(self.connection,
                    f"ROLLBACK TO SAVEPOINT {_CHECK_SAVEPOINT}; "
                    f"RELEASE SAVEPOINT {_CHECK_SAVEPOINT}")
        self.done_heads = heads
        self.answered_otherwise.append(item.revision)
        return False

    def _through_alembic(self, item, live_memo):
        self._sync_version()
        self._flush()
        self.current = item.revision
        session = self._alembic()
        session.run([item.step], memo=None if live_memo else item.memo_before)
        heads = session.applied[-1] if session.applied else item.heads_after
        self.db_heads = self.done_heads = heads

    def _commit_revision(self):
        """A revision that committed part of its work (an autocommit
        block) commits, with its version, as soon as it ends: a failure
        later in the schema's range then leaves it done, and the next try
        starts after it instead of running it (and its block) again."""
        self.current = None
        self._sync_version()
        self._end()
        self._flush()
        self._begin(first=False)

    def _autocommit(self):
        """Back to autocommit at the driver (the worker's usual mode)."""
        if self.driver and not self.raw.autocommit:
            self.raw.autocommit = True

    def abort(self):
        """After a failure: roll back (own transaction), put session
        settings back and let go of a session lock. Returns False when the
        connection is unusable."""
        self.buffer = []
        self.buffer_steps = []
        self.pending_commit = False
        self._close_session()
        if not self.own:
            return True
        try:
            if self.driver:
                self.raw.rollback()
                self._autocommit()
        except Exception:
            return False
        statements = ["ROLLBACK", _RESET_SESSION]
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
            self.commits += 1
            end = "ROLLBACK" if body.startswith(("ROLLBACK", "ABORT")) else (
                "COMMIT")
            if self.citus:  # not one query: see one_statement_per_query
                for sql in (end, "BEGIN", *self._settings_sql()):
                    send_script(self.connection, sql)
                return "SELECT 1", parameters
            return ";\n".join([end, "BEGIN", *self._settings_sql()]), (
                parameters)
        if self.in_safe_block:
            safe = transaction_safe(statement)
            return ("SELECT 1" if safe is None else safe), parameters
        return statement, parameters

    # Autocommit blocks.

    def _block(self, statements):
        """Replayed statements of an ``autocommit_block()``, each on its
        own; one that waited too long for a lock is tried again (what it
        left INVALID dropped first): ``CREATE INDEX CONCURRENTLY`` waits
        for every older transaction of the database, other tenants' and
        the app's."""
        if not self.own:
            for sql in statements:
                safe = transaction_safe(sql)
                if safe is not None:
                    self.buffer.append(safe)
            return
        retry = RetryPolicy(self.settings.lock_retries)
        with self._outside_transaction() as invalid_before:
            for sql in statements:
                attempt = 0
                while True:
                    try:
                        self._flush_one(sql)
                        break
                    except ScriptFailed as exc:
                        attempt += 1
                        if (sqlstate(exc.error) not in RETRYABLE
                                or not retry.should_retry(attempt)):
                            raise
                        self._drop_new_invalid_indexes(invalid_before,
                                                       report=False)
                        retry.wait(attempt)

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
        self._autocommit()
        self.committed = True
        self.commits += 1
        self.buffer.extend(self._settings_sql(local=False))
        self._flush()
        invalid_before = self._invalid_indexes()
        self.in_block = True
        try:
            yield invalid_before
        except BaseException:
            self._drop_new_invalid_indexes(invalid_before)
            raise
        self.in_block = False
        self.buffer.append(_RESET_SESSION)
        self._flush()
        if self.driver:
            self.raw.autocommit = False
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

    def _drop_new_invalid_indexes(self, before, report=True):
        try:
            left = self._invalid_indexes() - before
        except Exception:
            return
        for name in sorted(left):
            qualified = f"{quote_schema(self.schema)}.{quote_schema(name)}"
            try:
                send_script(self.connection,
                            f"DROP INDEX CONCURRENTLY IF EXISTS {qualified}")
                dropped = True
            except Exception:
                dropped = False
            if report or not dropped:
                self.left_invalid.append((name, dropped))
