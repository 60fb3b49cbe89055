"""The record of runs, kept in a table of the shared schema.

Each schema-changing run inserts a row when it starts (``status =
'running'``) and completes it when it ends, with the counts per status and
the schemas that did not succeed. A run killed with ``-9`` leaves its row
``running`` with no lock holder: ``tenant-migrate <ini> runs`` shows it as
interrupted. ``upgrade --retry-failed`` reads the failures of the last
finished run.

Rows are written on the run lock's own autocommit connection, so they are
visible at once and never part of a tenant's transaction.
"""
import json
import os
import socket
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .names import quote_schema

TABLE = "tenantmigrate_runs"

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
    failures jsonb
)
"""


def runs_table(shared_schema):
    """The quoted, schema-qualified name of the runs table."""
    return f"{quote_schema(shared_schema)}.{quote_schema(TABLE)}"


def ensure_table(connection, shared_schema):
    """Create the runs table if it is not there yet."""
    exists = connection.execute(
        text("SELECT to_regclass(:name) IS NOT NULL"),
        {"name": runs_table(shared_schema)}).scalar()
    if not exists:
        try:
            connection.exec_driver_sql(
                _DDL.format(table=runs_table(shared_schema)))
        except DBAPIError:
            # Another shard's run created it at the same moment; the
            # connection is in autocommit mode, nothing to roll back.
            pass


class RunRecord:
    """One run's row; :meth:`finish` completes it from the report."""

    def __init__(self, connection, shared_schema, run_id):
        self.connection = connection
        self.table = runs_table(shared_schema)
        self.id = run_id

    @classmethod
    def start(cls, connection, shared_schema, command, target):
        ensure_table(connection, shared_schema)
        run_id = connection.execute(text(
            f"INSERT INTO {runs_table(shared_schema)} (command, target, "
            "host, pid) VALUES (:command, :target, :host, :pid) "
            "RETURNING id"), {
                "command": command, "target": target,
                "host": socket.gethostname(), "pid": os.getpid()}).scalar()
        return cls(connection, shared_schema, run_id)

    def finish(self, report):
        counts, failures = {}, []
        for branch in report.branches:
            for result in branch.results:
                key = f"{branch.branch}:{result.status}"
                counts[key] = counts.get(key, 0) + 1
                if not result.ok:
                    failures.append(dict(result.to_dict(),
                                         branch=branch.branch))
        status = "ok" if report.ok else (
            "aborted" if report.aborted else "failed")
        self._update(status, counts, failures)

    def abort(self, reason):
        """Complete the row of a run that stopped on an exception."""
        self._update("aborted", {}, [{"error": reason}])

    def _update(self, status, counts, failures):
        try:
            self.connection.execute(text(
                f"UPDATE {self.table} SET finished = now(), status = "
                ":status, counts = CAST(:counts AS jsonb), failures = "
                "CAST(:failures AS jsonb) WHERE id = :id"), {
                    "status": status, "counts": json.dumps(counts),
                    "failures": json.dumps(failures), "id": self.id})
        except SQLAlchemyError:
            pass  # the database went away; the row stays 'running'


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

    def to_dict(self):
        return {
            "id": self.id, "command": self.command, "target": self.target,
            "started": self.started.isoformat() if self.started else None,
            "finished": self.finished.isoformat() if self.finished else None,
            "status": self.status, "host": self.host, "pid": self.pid,
            "counts": self.counts or {}, "failures": self.failures or [],
        }


def recent_runs(connection, shared_schema, limit=20):
    """The last ``limit`` runs, newest first (empty if none ever ran)."""
    table = runs_table(shared_schema)
    exists = connection.execute(text("SELECT to_regclass(:name) IS NOT "
                                     "NULL"), {"name": table}).scalar()
    if not exists:
        return []
    rows = connection.execute(text(
        f"SELECT id, command, target, started, finished, status, host, pid, "
        f"counts, failures FROM {table} ORDER BY id DESC LIMIT :limit"),
        {"limit": limit})
    return [RunRow(*row) for row in rows]


def last_failed_tenants(connection, shared_schema, command):
    """Tenants that failed or were not attempted in the last finished run
    of ``command``; ``None`` if no such run was recorded."""
    for row in recent_runs(connection, shared_schema, limit=50):
        if row.command == command and row.finished is not None:
            return [f["schema"] for f in row.failures or ()
                    if f.get("branch") == "tenant"
                    and f.get("status") in ("failed", "not-run")]
    return None
