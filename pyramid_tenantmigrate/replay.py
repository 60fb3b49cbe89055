"""Replaying rendered SQL in many tenants, in parallel.

For each tenant whose steps could be rendered once (see :mod:`.render`),
one string is sent to the server::

    BEGIN;
    SET LOCAL search_path TO "tenant"; SET LOCAL lock_timeout ...;
    DO <guard: the version table still says what the plan read>;
    DO <notice: step t3>; <t3's statements>; DO <notice: step t4>; ...;
    DELETE FROM version table; INSERT the new head;
    COMMIT;

That is one round trip and one transaction per tenant. If any statement
fails, the server skips the rest and the transaction is rolled back: the
tenant stays exactly at its previous revision. The last step notice received
names the revision that failed. A guard failure (another process moved the
tenant since planning) hands the tenant back to the Alembic path, which
re-reads its version.

Workers are threads, each with its own connection, taking tenants from one
shared queue, so a slow tenant never leaves others waiting behind a static
chunk. Threads are safe here because replay never touches Alembic's
process-global ``op``/``context``; the Alembic path stays single-threaded.
"""
import queue
import random
import threading
import time

from .names import quote_schema
from .report import DONE, FAILED, NOT_RUN, SchemaResult

#: The driver replay needs: each tenant's string goes through psycopg2's
#: simple-query protocol, and its notices name the step that failed.
DRIVER = "psycopg2"

#: SQLSTATE raised by the guard when a tenant's version moved.
VERSION_MOVED = "TMV01"
#: SQLSTATEs after which the Alembic path should take the tenant over.
HAND_BACK = frozenset({VERSION_MOVED, "42P01"})  # 42P01: no version table
LOCK_NOT_AVAILABLE = "55P03"
_STEP_NOTICE = "tenantmigrate step "


def quote_literal(value):
    """Quote a string as an SQL literal (standard_conforming_strings)."""
    return "'" + value.replace("'", "''") + "'"


def _heads_array(heads):
    if not heads:
        return "ARRAY[]::text[]"
    return "ARRAY[" + ", ".join(quote_literal(h) for h in heads) + "]::text[]"


def _guard_sql(schema, version_table, from_heads):
    table = f"{quote_schema(schema)}.{quote_schema(version_table)}"
    regclass = quote_literal(table)
    message = quote_literal(
        f"version of {schema} changed since the run was planned")
    raise_moved = (f"RAISE EXCEPTION {message} "
                   f"USING ERRCODE = '{VERSION_MOVED}';")
    if from_heads:
        check = (f"IF (SELECT coalesce(array_agg(version_num::text ORDER BY "
                 f"version_num::text), ARRAY[]::text[]) FROM {table}) IS "
                 f"DISTINCT FROM {_heads_array(sorted(from_heads))} THEN "
                 f"{raise_moved} END IF;")
    else:
        check = (f"IF to_regclass({regclass}) IS NOT NULL THEN "
                 f"IF EXISTS (SELECT 1 FROM {table}) THEN {raise_moved} "
                 f"END IF; END IF;")
    return f"DO $tenantmigrate$ BEGIN {check} END $tenantmigrate$;"


def _notice_sql(revision):
    text = quote_literal(_STEP_NOTICE + revision)
    return f"DO $tenantmigrate$ BEGIN RAISE NOTICE {text}; END $tenantmigrate$;"


class ReplayScript:
    """The statements of one group of tenants (same start, same steps),
    rendered once; :meth:`for_tenant` wraps them for one tenant."""

    def __init__(self, steps_sql, from_heads, to_heads, version_table,
                 version_table_ddl, timeouts_sql):
        self.from_heads = tuple(from_heads)
        self.to_heads = tuple(to_heads)
        self.revisions = tuple(revision for revision, _ in steps_sql)
        self.version_table = version_table
        body = []
        for revision, statements in steps_sql:
            body.append(_notice_sql(revision))
            body.extend(statements)
        self._body = "\n".join(body)
        self._version_table_ddl = version_table_ddl.replace(
            "CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", 1) + ";"
        self._timeouts_sql = timeouts_sql

    def for_tenant(self, schema):
        """The whole script for ``schema``: one transaction."""
        return "\n".join(["BEGIN;", self._work(schema), "COMMIT;"])

    def in_caller_transaction(self, schema):
        """The script for ``schema`` inside a transaction the caller owns:
        no BEGIN/COMMIT, and the caller's ``search_path`` and timeouts are
        put back at the end."""
        return "\n".join([
            "SELECT set_config('tenantmigrate.saved_search_path', "
            "current_setting('search_path'), true), "
            "set_config('tenantmigrate.saved_lock_timeout', "
            "current_setting('lock_timeout'), true), "
            "set_config('tenantmigrate.saved_statement_timeout', "
            "current_setting('statement_timeout'), true);",
            self._work(schema),
            "SELECT set_config('search_path', current_setting("
            "'tenantmigrate.saved_search_path'), true), "
            "set_config('lock_timeout', current_setting("
            "'tenantmigrate.saved_lock_timeout'), true), "
            "set_config('statement_timeout', current_setting("
            "'tenantmigrate.saved_statement_timeout'), true);",
        ])

    def _work(self, schema):
        table = f"{quote_schema(schema)}.{quote_schema(self.version_table)}"
        parts = [
            f"SET LOCAL search_path TO {quote_schema(schema)};",
            "SET LOCAL client_min_messages TO notice;",
            self._timeouts_sql,
            _guard_sql(schema, self.version_table, self.from_heads),
        ]
        if not self.from_heads:
            parts.append(self._version_table_ddl)
        parts.append(self._body)
        parts.append(f"DELETE FROM {table};")
        if self.to_heads:
            values = ", ".join(f"({quote_literal(h)})" for h in self.to_heads)
            parts.append(f"INSERT INTO {table} (version_num) VALUES {values};")
        return "\n".join(p for p in parts if p)


class ReplayPool:
    """Runs ReplayScripts for many tenants with ``workers`` connections.

    ``progress(result)`` is called (from one thread at a time) after each
    tenant. After :meth:`run`, ``handed_back`` lists the schema plans the
    Alembic path must run, and ``aborted`` says why the run stopped early,
    if it did.
    """

    def __init__(self, migrator, workers, lock_retries=3, retry_delay=0.5,
                 fail_fast=False, progress=None):
        self.migrator = migrator
        self.workers = max(1, workers)
        self.lock_retries = lock_retries
        self.retry_delay = retry_delay
        self.fail_fast = fail_fast
        self.progress = progress
        self.results = []
        self.handed_back = []
        self.aborted = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def run(self, items):
        """``items``: (schema_plan, ReplayScript) pairs."""
        jobs = queue.SimpleQueue()
        for item in items:
            jobs.put(item)
        threads = [threading.Thread(target=self._work, args=(jobs,),
                                    name=f"tenantmigrate-replay-{n}",
                                    daemon=True)
                   for n in range(min(self.workers, len(items)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Whatever a stop left in the queue was not attempted.
        while True:
            try:
                schema_plan, _ = jobs.get_nowait()
            except queue.Empty:
                break
            self._record(SchemaResult(
                schema_plan.schema, NOT_RUN, schema_plan.from_heads,
                schema_plan.to_heads,
                error=f"not attempted: {self.aborted or 'run stopped'}"))
        return self.results

    def _record(self, result):
        with self._lock:
            self.results.append(result)
            if self.progress is not None:
                self.progress(result)

    def _hand_back(self, schema_plan):
        with self._lock:
            self.handed_back.append(schema_plan)

    def _open(self):
        connection = self.migrator.connect().execution_options(
            isolation_level="AUTOCOMMIT")
        return connection, connection.connection.driver_connection

    def _work(self, jobs):
        connection = None
        try:
            while not self._stop.is_set():
                try:
                    schema_plan, script = jobs.get_nowait()
                except queue.Empty:
                    return
                if connection is None:
                    try:
                        connection, raw = self._open()
                    except Exception as exc:
                        self._abort(str(exc))
                        jobs.put((schema_plan, script))
                        return
                outcome = self._apply(raw, schema_plan, script)
                if outcome == "reconnect":
                    connection.invalidate()
                    connection.close()
                    connection = None
        finally:
            if connection is not None:
                connection.close()

    def _abort(self, reason):
        with self._lock:
            if self.aborted is None:
                self.aborted = reason
        self._stop.set()

    def _apply(self, raw, schema_plan, script):
        import psycopg2

        schema = schema_plan.schema
        sql = script.for_tenant(schema)
        started = time.monotonic()
        attempt = 0
        while True:
            del raw.notices[:]
            cursor = raw.cursor()
            try:
                # No parameters: psycopg2 sends the string as it is, and the
                # server runs it as one simple query, in one round trip.
                cursor.execute(sql)
            except psycopg2.Error as exc:
                failed_step = last_step(raw.notices)
                broken = raw.closed or isinstance(
                    exc, (psycopg2.OperationalError, psycopg2.InterfaceError)
                ) and exc.pgcode is None
                if broken:
                    return self._connection_lost(schema_plan, exc, started,
                                                 failed_step)
                _rollback(raw)
                if exc.pgcode in HAND_BACK:
                    self._hand_back(schema_plan)
                    return "ok"
                if (exc.pgcode == LOCK_NOT_AVAILABLE
                        and attempt < self.lock_retries):
                    attempt += 1
                    # Exponential back-off with jitter, so that retries of
                    # several tenants do not line up behind the same lock.
                    time.sleep(self.retry_delay * (2 ** (attempt - 1))
                               * (0.5 + random.random()))
                    continue
                error = " ".join(str(exc).split())
                if exc.pgcode == LOCK_NOT_AVAILABLE:
                    error += (f" (gave up after {attempt + 1} attempts; an "
                              "application transaction holds a lock on "
                              "this tenant's table)")
                self._record(SchemaResult(
                    schema, FAILED, schema_plan.from_heads,
                    schema_plan.to_heads, error=error,
                    failed_revision=failed_step,
                    duration=time.monotonic() - started))
                if self.fail_fast:
                    self._abort(f"--fail-fast stopped the run after {schema} "
                                "failed")
                return "ok"
            finally:
                cursor.close()
            self._record(SchemaResult(
                schema, DONE, schema_plan.from_heads, script.to_heads,
                revisions=script.revisions,
                duration=time.monotonic() - started))
            return "ok"

    def _connection_lost(self, schema_plan, exc, started, failed_step):
        error = " ".join(str(exc).split()) or type(exc).__name__
        self._record(SchemaResult(
            schema_plan.schema, FAILED, schema_plan.from_heads,
            schema_plan.to_heads,
            error=(f"connection lost: {error}; the tenant's transaction was "
                   "rolled back by the server unless it had committed: "
                   "re-run to finish"),
            failed_revision=failed_step,
            duration=time.monotonic() - started))
        try:
            connection, _ = self._open()
            connection.close()
        except Exception as reconnect_error:
            self._abort(f"the database went away: {reconnect_error}")
        return "reconnect"


def _rollback(raw):
    try:
        cursor = raw.cursor()
        cursor.execute("ROLLBACK")
        cursor.close()
    except Exception:
        pass


def last_step(notices):
    """The revision named by the last step notice, or None."""
    for notice in reversed(notices):
        if _STEP_NOTICE in notice:
            return notice.split(_STEP_NOTICE, 1)[1].strip()
    return None
