"""One run at a time: a PostgreSQL advisory lock around schema changes.

Every command that changes schemas (and the ``pserve`` startup hook) holds
a session-level advisory lock on a dedicated connection for the whole run.
The lock lives in the database, so it works across processes and machines
(another deploy, another pod), and it is released by the server when the
holding connection goes away, even if the process is killed with ``-9``.

While it holds the lock, the connection's ``application_name`` says who it
is (command, host and pid), so a second run can name the holder from
``pg_stat_activity``.
"""
import os
import socket
import zlib

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .errors import TenantMigrateError

#: First half of the two-int advisory lock key: this package's own space.
LOCK_CLASS_ID = 0x7E4A11
_HOLDER_QUERY = text("""
SELECT a.pid, a.application_name, a.client_addr, a.backend_start,
       a.query_start
FROM pg_catalog.pg_locks l
JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted
  AND l.classid = :class_id AND l.objid = :object_id AND l.objsubid = 2
""")


class RunLocked(TenantMigrateError):
    """Another run holds the lock; ``holder`` describes it."""

    def __init__(self, holder, waited):
        self.holder = holder
        how = f"after waiting {waited:g}s" if waited else "(not waiting)"
        super().__init__(
            f"another migration run holds the lock {how}: {holder}. Wait "
            "for it to finish, or re-run with --wait SECONDS")


def lock_object_id(shared_schema):
    """Second half of the key: one lock per shared schema (per app)."""
    # Stored in an int4 as an oid (unsigned); keep it in int4's range.
    return zlib.crc32(shared_schema.encode("utf-8")) & 0x7FFFFFFF


def lock_is_held(connection):
    """Tell whether any run of this package holds a lock right now."""
    return connection.execute(text(
        "SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = "
        "'advisory' AND granted AND classid = :class_id AND objsubid = 2"),
        {"class_id": LOCK_CLASS_ID}).scalar() > 0


def holder_label(purpose):
    """What ``application_name`` says while a run holds the lock."""
    label = f"tenant-migrate {purpose} pid={os.getpid()} " \
            f"host={socket.gethostname()}"
    return label[:63]


class RunLock:
    """The advisory lock of one shared schema's migrations.

    ``with RunLock(migrator, "upgrade", wait=30):`` holds it for the block;
    ``wait`` is seconds to wait for another holder, 0 not to wait, ``None``
    to wait as long as it takes.
    """

    def __init__(self, migrator, purpose, wait=0, scope=""):
        self.migrator = migrator
        self.purpose = purpose
        self.wait = wait
        # A scope (a shard, "2/4") gets a lock of its own, so that shards
        # of one deploy run side by side but never twice each.
        self.object_id = lock_object_id(migrator.shared_schema + scope)
        self.connection = None

    def _params(self):
        return {"class_id": LOCK_CLASS_ID, "object_id": self.object_id}

    def acquire(self):
        connection = self.migrator.connect()
        connection.execution_options(isolation_level="AUTOCOMMIT")
        try:
            connection.execute(text("SELECT set_config('application_name', "
                                    ":name, false)"),
                               {"name": holder_label(self.purpose)})
            if self.wait == 0:
                got = connection.execute(text(
                    "SELECT pg_try_advisory_lock(:class_id, :object_id)"),
                    self._params()).scalar()
            else:
                timeout_ms = 0 if self.wait is None else int(self.wait * 1000)
                connection.execute(text(
                    "SELECT set_config('lock_timeout', :ms, false)"),
                    {"ms": str(max(timeout_ms, 0))})
                try:
                    connection.execute(text(
                        "SELECT pg_advisory_lock(:class_id, :object_id)"),
                        self._params())
                    got = True
                except DBAPIError as exc:
                    if getattr(exc.orig, "pgcode", None) != "55P03":
                        raise
                    got = False
                connection.execute(text("RESET lock_timeout"))
            if not got:
                holder = self.describe_holder(connection)
                raise RunLocked(holder, self.wait or 0)
        except BaseException:
            connection.close()
            raise
        self.connection = connection
        return self

    def describe_holder(self, connection):
        """Who holds the lock, from ``pg_stat_activity``."""
        row = connection.execute(_HOLDER_QUERY, self._params()).first()
        if row is None:
            return "a run that has just finished"
        pid, name, addr, backend_start, _ = row
        where = f" from {addr}" if addr else ""
        return (f"'{name or 'unknown'}' (server pid {pid}{where}, "
                f"connected since {backend_start:%Y-%m-%d %H:%M:%S %Z})")

    def release(self):
        if self.connection is not None:
            try:
                self.connection.execute(text(
                    "SELECT pg_advisory_unlock(:class_id, :object_id)"),
                    self._params())
            except SQLAlchemyError:
                # The connection died (server restart, network): the
                # server dropped the lock with it.
                pass
            finally:
                self.connection.close()
                self.connection = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()
