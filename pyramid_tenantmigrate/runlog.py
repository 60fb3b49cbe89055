"""The record of runs, kept in a table of the shared schema.

Each schema-changing run inserts a row when it starts (``status =
'running'``), with what it was asked for: the tenants it selected (the
``--tenant`` list, ``--exclude-tenant``, ``--shard``) and the revisions it
was to bring each branch to. While it runs, the run lock's watcher writes
its progress (counts, failures so far, a heartbeat) every second; at the
end the run completes the row with the outcome, on a fresh connection if
the lock's connection is gone.

A run whose process died (``kill -9``, a lost server) or whose last write
failed leaves a ``running`` row whose lock-holding backend is gone. The
next command that reads the records (:func:`reconcile`, called by every
locked run and by ``runs``) completes it from the database itself: which
of its tenants are not at its target (``unfinished``), and so whether it
in fact completed. ``upgrade --retry-failed`` takes the failures and the
unfinished tenants of the last run of the same command.

Rows are written on the run lock's own autocommit connection, so they are
visible at once and never part of a tenant's transaction.
"""
import json
import os
import socket
import threading
import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from .names import quote_schema
from .reserved import RUNS_TABLE as TABLE

_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    id bigserial PRIMARY KEY,
    command text NOT NULL,
    target text,
    started timestamptz NOT NULL DEFAULT now(),
    finished timestamptz,
    status text NOT NULL DEFAULT 'running',
    host text,
    pid integer,
    counts jsonb,
    failures jsonb,
    lock_pid integer,
    lock_backend_start timestamptz,
    heartbeat timestamptz,
    selection jsonb,
    destinations jsonb,
    unfinished jsonb,
    note text
)
"""

#: Columns added since the table was first made, with their types.
_ADDED = (("lock_pid", "integer"), ("lock_backend_start", "timestamptz"),
          ("heartbeat", "timestamptz"), ("selection", "jsonb"),
          ("destinations", "jsonb"), ("unfinished", "jsonb"),
          ("note", "text"))

_COLUMNS = ("id, command, target, started, finished, status, host, pid, "
            "counts, failures, selection, destinations, unfinished, note")

#: Failures written with each heartbeat, at most (all of them at the end).
_BEAT_FAILURES = 1000


def runs_table(shared_schema):
    """The quoted, schema-qualified name of the runs table."""
    return f"{quote_schema(shared_schema)}.{quote_schema(TABLE)}"


def _exists(connection, shared_schema):
    return connection.execute(
        text("SELECT to_regclass(:name) IS NOT NULL"),
        {"name": runs_table(shared_schema)}).scalar()


def ensure_table(connection, shared_schema):
    """Create the runs table, or add the columns it lacks."""
    table = runs_table(shared_schema)
    if not _exists(connection, shared_schema):
        try:
            connection.exec_driver_sql(_DDL.format(table=table))
        except DBAPIError:
            # Another shard's run created it at the same moment; the
            # connection is in autocommit mode, nothing to roll back.
            pass
        return
    present = set(connection.execute(text(
        "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = "
        "to_regclass(:name) AND attnum > 0 AND NOT attisdropped"),
        {"name": table}).scalars())
    for column, kind in _ADDED:
        if column not in present:
            connection.exec_driver_sql(
                f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS "
                f"{column} {kind}")


def _failure_entry(branch, result):
    return dict(result.to_dict(), branch=branch)


class RunRecord:
    """One run's row. :meth:`add` notes each schema's result (called from
    the run's progress); :meth:`beat` writes the progress (called by the
    run lock's watcher); :meth:`finish` completes it."""

    def __init__(self, table, run_id):
        self.table = table
        self.id = run_id
        self._lock = threading.Lock()
        self._counts = {}
        self._failures = []
        self._dirty = False

    @classmethod
    def start(cls, connection, shared_schema, command, target, *,
              lock_backend=None, selection=None, destinations=None):
        ensure_table(connection, shared_schema)
        pid, backend_start = lock_backend or (None, None)
        run_id = connection.execute(text(
            f"INSERT INTO {runs_table(shared_schema)} (command, target, "
            "host, pid, lock_pid, lock_backend_start, heartbeat, selection, "
            "destinations) VALUES (:command, :target, :host, :pid, "
            ":lock_pid, :lock_start, now(), CAST(:selection AS jsonb), "
            "CAST(:destinations AS jsonb)) RETURNING id"), {
                "command": command, "target": target,
                "host": socket.gethostname(), "pid": os.getpid(),
                "lock_pid": pid, "lock_start": backend_start,
                "selection": json.dumps(selection),
                "destinations": json.dumps(destinations)}).scalar()
        return cls(runs_table(shared_schema), run_id)

    def add(self, branch, result):
        with self._lock:
            key = f"{branch}:{result.status}"
            self._counts[key] = self._counts.get(key, 0) + 1
            if not result.ok:
                self._failures.append(_failure_entry(branch, result))
            self._dirty = True

    def beat(self, connection):
        with self._lock:
            dirty, self._dirty = self._dirty, False
            counts = dict(self._counts)
            failures = list(self._failures[:_BEAT_FAILURES])
        if not dirty:
            connection.execute(text(
                f"UPDATE {self.table} SET heartbeat = now() WHERE id = :id"),
                {"id": self.id})
            return
        connection.execute(text(
            f"UPDATE {self.table} SET heartbeat = now(), counts = "
            "CAST(:counts AS jsonb), failures = CAST(:failures AS jsonb) "
            "WHERE id = :id"), {"counts": json.dumps(counts),
                                "failures": json.dumps(failures),
                                "id": self.id})

    def finish(self, report, connect, connection=None):
        """Complete the row from ``report``: on ``connection`` (the lock's)
        or, if that fails, on new connections from ``connect()``, a few
        times. Returns an error message when it could not be written (the
        next command corrects it; see :func:`reconcile`)."""
        counts, failures = {}, []
        for branch in report.branches:
            for result in branch.results:
                key = f"{branch.branch}:{result.status}"
                counts[key] = counts.get(key, 0) + 1
                if not result.ok:
                    failures.append(_failure_entry(branch.branch, result))
        if report.ok:
            status = "ok"
        elif report.aborted:
            status = "aborted"
        else:
            status = "halted" if report.halted else "failed"
        note = report.aborted or report.halted
        # A halted run's tenants of waves it never started are left behind
        # as much as its failures: --retry-failed takes them on too.
        unfinished = [schema for wave in report.waves
                      if wave.status == "not-started"
                      for schema in wave.schemas] if report.halted else None
        return self._complete(status, counts, failures, note, connect,
                              connection, unfinished)

    def abort(self, reason, connect, connection=None):
        """Complete the row of a run that stopped on an exception."""
        with self._lock:
            counts, failures = dict(self._counts), list(self._failures)
        failures.append({"error": reason})
        return self._complete("aborted", counts, failures, reason, connect,
                              connection)

    def _complete(self, status, counts, failures, note, connect,
                  connection, unfinished=None):
        params = {"status": status, "counts": json.dumps(counts),
                  "failures": json.dumps(failures), "note": note,
                  "unfinished": json.dumps(unfinished), "id": self.id}
        statement = text(
            f"UPDATE {self.table} SET finished = now(), heartbeat = now(), "
            "status = :status, counts = CAST(:counts AS jsonb), failures = "
            "CAST(:failures AS jsonb), note = :note, unfinished = "
            "CAST(:unfinished AS jsonb) WHERE id = :id")
        error = None
        for attempt in range(4):
            try:
                if attempt == 0 and connection is not None:
                    connection.execute(statement, params)
                else:
                    with connect() as fresh:
                        fresh.execute(statement, params)
                        fresh.commit()
                return None
            except Exception as exc:
                error = " ".join(str(getattr(exc, "orig", None) or exc)
                                 .split())
                if attempt:
                    time.sleep(0.2 * attempt)
        return (f"the outcome of run #{self.id} could not be recorded "
                f"({error}); the next 'tenant-migrate <ini> runs' or run "
                "works it out from the database")


@dataclass
class RunRow:
    """A row of the runs table, as ``runs`` lists it."""

    id: int
    command: str
    target: str
    started: object
    finished: object
    status: str
    host: str
    pid: int
    counts: dict
    failures: list
    selection: dict = None
    destinations: dict = None
    unfinished: list = None
    note: str = None
    #: The fleet database it ran on (``None``: not a fleet).
    database: str = None

    @property
    def fleet_run(self):
        """The fleet run it was part of (its databases' records share
        it), or ``None``."""
        return (self.selection or {}).get("fleet_run")

    def to_dict(self):
        return {
            "database": self.database, "fleet_run": self.fleet_run,
            "id": self.id, "command": self.command, "target": self.target,
            "started": self.started.isoformat() if self.started else None,
            "finished": self.finished.isoformat() if self.finished else None,
            "status": self.status, "host": self.host, "pid": self.pid,
            "counts": self.counts or {}, "failures": self.failures or [],
            "selection": self.selection, "unfinished": self.unfinished,
            "note": self.note,
        }


def recent_runs(connection, shared_schema, limit=20):
    """The last ``limit`` runs, newest first (empty if none ever ran)."""
    if not _exists(connection, shared_schema):
        return []
    ensure_table(connection, shared_schema)
    rows = connection.execute(text(
        f"SELECT {_COLUMNS} FROM {runs_table(shared_schema)} "
        "ORDER BY id DESC LIMIT :limit"), {"limit": limit})
    return [RunRow(*row) for row in rows]


_DEAD_RUNS = """
SELECT r.id, r.selection, r.destinations, r.failures, r.lock_pid
FROM {table} r
WHERE r.status = 'running' AND NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_stat_activity a
    WHERE a.pid = r.lock_pid AND a.backend_start = r.lock_backend_start)
  AND (r.lock_pid IS NOT NULL OR NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_locks l WHERE l.locktype = 'advisory'
    AND l.granted AND l.classid = :run_class AND l.objsubid = 2))
ORDER BY r.id
"""


def reconcile(connection, shared_schema, unfinished_of):
    """Complete the rows of runs whose process is gone (see the module
    docstring). ``unfinished_of(selection, destinations)`` returns the
    tenants of such a run that are not at its target, or ``None`` when
    that cannot be told. Returns the ids completed."""
    from .reserved import RUN_LOCK

    if not _exists(connection, shared_schema):
        return []
    ensure_table(connection, shared_schema)
    table = runs_table(shared_schema)
    rows = connection.execute(text(_DEAD_RUNS.format(table=table)),
                              {"run_class": RUN_LOCK}).fetchall()
    completed = []
    for run_id, selection, destinations, failures, _ in rows:
        try:
            unfinished = unfinished_of(selection, destinations)
        except Exception:
            unfinished = None
        recorded = [f for f in failures or () if f.get("schema")]
        if recorded:
            status = "failed"
        elif unfinished == []:
            status = "ok"
        else:
            status = "interrupted"
        if unfinished is None:
            note = ("its process ended before recording the outcome; which "
                    "tenants it left behind could not be told")
        elif unfinished:
            note = (f"its process ended before recording the outcome; "
                    f"{len(unfinished)} of its tenants are not at its "
                    "target (found by a later command)")
        else:
            note = ("its process ended before recording the outcome; every "
                    "tenant it selected is at its target (found by a later "
                    "command)")
        connection.execute(text(
            f"UPDATE {table} SET status = :status, finished = "
            "coalesce(heartbeat, started), unfinished = CAST(:unfinished AS "
            "jsonb), note = :note WHERE id = :id AND status = 'running'"), {
                "status": status, "note": note, "id": run_id,
                "unfinished": json.dumps(unfinished)})
        completed.append(run_id)
    return completed


def retry_tenants(connection, shared_schema, command):
    """Tenants to retry for ``command``: those that failed or were not
    attempted in its last run, and those it left unfinished; ``None`` if
    no such run was recorded. Call :func:`reconcile` first."""
    for row in recent_runs(connection, shared_schema, limit=50):
        if row.command != command or row.status == "running":
            continue
        names = [f["schema"] for f in row.failures or ()
                 if f.get("branch") == "tenant" and f.get("schema")
                 and f.get("status") not in ("rejected", "ahead")]
        names.extend(row.unfinished or ())
        return list(dict.fromkeys(names))
    return None
