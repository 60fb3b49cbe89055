"""One run at a time: PostgreSQL advisory locks around schema changes.

Every command that changes schemas (and the ``pserve`` startup hook) holds
the *run lock* on a connection of its own for the whole run. The lock
lives in the database, so it works across processes and machines, and the
server releases it when the holding connection goes away, even if the
process is killed with ``-9``.

- An ordinary run takes it exclusively: one at a time.
- A shard (``--shard I/N``) takes it shared, plus the exclusive lock of
  its own shard: the shards of a deploy run side by side, the same shard
  never twice, and no ordinary run runs beside a shard.

Shards of different N may run at once and share tenants; what keeps them
(and everything else) from working on one tenant at the same time is the
tenant lock every tenant transaction takes (:func:`.sql.tenant_lock_sql`).

The holding connection is kept alive and watched: ``idle_session_timeout``
is switched off for it, and a thread pings it every second. When it dies
all the same (the server restarted, a network cut, an administrator
terminated it), :attr:`RunLock.lost` says so, and the run stops starting
tenants and exits 1: another run may have started meanwhile.

While it holds the lock, the connection's ``application_name`` says who it
is (command, host and pid), so a second run can name the holder.
"""
import contextlib
import os
import socket
import threading

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .errors import TenantMigrateError, sqlstate
from .reserved import RUN_LOCK, SHARD_LOCK, lock_key
from .retry import LOCK_NOT_AVAILABLE

_HOLDERS = text("""
SELECT a.pid, a.application_name, a.client_addr, a.backend_start, l.mode
FROM pg_catalog.pg_locks l
JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND ((l.classid = :run_class AND l.objid = :run_key)
    OR (l.classid = :shard_class AND l.objid = :shard_key))
ORDER BY a.backend_start
""")

#: Seconds between two pings of the lock's connection.
WATCH_INTERVAL = 1.0


class RunLocked(TenantMigrateError):
    """Another run holds the lock; ``holder`` describes it."""

    def __init__(self, holder, waited):
        self.holder = holder
        how = f"after waiting {waited:g}s" if waited else "(not waiting)"
        super().__init__(
            f"another migration run holds the lock {how}: {holder}. Wait "
            "for it to finish, or re-run with --wait SECONDS")


def holder_label(purpose):
    """What ``application_name`` says while a run holds the lock."""
    label = f"tenant-migrate {purpose} pid={os.getpid()} " \
            f"host={socket.gethostname()}"
    return label[:63]


def run_lock_key(shared_schema):
    return lock_key(shared_schema)


def shard_lock_key(shared_schema, shard):
    index, count = shard
    return lock_key(f"{shared_schema} shard {index}/{count}")


class RunLock:
    """The run lock of one shared schema's migrations (see the module
    docstring).

    ``with RunLock(migrator, "upgrade", wait=30):`` holds it for the
    block; ``wait`` is seconds to wait for another holder, 0 not to wait,
    ``None`` to wait as long as it takes; ``shard`` is ``(index, count)``.
    """

    def __init__(self, migrator, purpose, wait=0, shard=None):
        self.migrator = migrator
        self.purpose = purpose
        self.wait = wait
        self.shard = shard
        self.connection = None
        #: Why the lock was lost while the run went on, or ``None``.
        self.lost = None
        #: The holding backend: ``(pid, backend_start)``.
        self.backend = None
        self._keys = {
            "run_class": RUN_LOCK,
            "run_key": run_lock_key(migrator.shared_schema),
            "shard_class": SHARD_LOCK,
            "shard_key": (shard_lock_key(migrator.shared_schema, shard)
                          if shard else -1),
        }
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._watcher = None
        self.on_beat = None

    # Taking and letting go.

    def acquire(self):
        connection = self.migrator.run_connection(self.purpose)
        try:
            connection.execute(text(
                "SELECT set_config('application_name', :name, false)"),
                {"name": holder_label(self.purpose)})
            self._keep_alive(connection)
            if self.shard:
                got = (self._take(connection, "pg_advisory_lock_shared",
                                  "run_class", "run_key")
                       and self._take(connection, "pg_advisory_lock",
                                      "shard_class", "shard_key"))
            else:
                got = self._take(connection, "pg_advisory_lock",
                                 "run_class", "run_key")
            if not got:
                raise RunLocked(self.describe_holders(connection),
                                self.wait or 0)
            self.backend = tuple(connection.exec_driver_sql(
                "SELECT pg_backend_pid(), backend_start FROM "
                "pg_catalog.pg_stat_activity WHERE pid = pg_backend_pid()"
            ).one())
        except BaseException:
            connection.close()
            raise
        self.connection = connection
        self._watcher = threading.Thread(
            target=self._watch, name="tenantmigrate-lock-watch", daemon=True)
        self._watcher.start()
        return self

    def _keep_alive(self, connection):
        """No server timeout may end this idle session: losing it loses
        the lock."""
        version = connection.dialect.server_version_info or (0,)
        settings = ["idle_in_transaction_session_timeout", "statement_timeout"]
        if version >= (14,):
            settings.append("idle_session_timeout")
        for setting in settings:
            connection.exec_driver_sql(f"SET {setting} = 0")

    def _take(self, connection, function, class_name, key_name):
        params = {"a": self._keys[class_name], "b": self._keys[key_name]}
        if self.wait == 0:
            try_function = function.replace("pg_advisory", "pg_try_advisory")
            return connection.execute(text(
                f"SELECT {try_function}(:a, :b)"), params).scalar()
        timeout_ms = 0 if self.wait is None else int(self.wait * 1000)
        connection.exec_driver_sql(f"SET lock_timeout = {max(timeout_ms, 0)}")
        try:
            connection.execute(text(f"SELECT {function}(:a, :b)"), params)
            return True
        except DBAPIError as exc:
            if sqlstate(exc) != LOCK_NOT_AVAILABLE:
                raise
            return False
        finally:
            connection.exec_driver_sql("RESET lock_timeout")

    def describe_holders(self, connection):
        """Who holds the lock, from ``pg_stat_activity``."""
        rows = connection.execute(_HOLDERS, self._keys).fetchall()
        if not rows:
            return "a run that has just finished"
        seen, described = set(), []
        for pid, name, addr, backend_start, _ in rows:
            if pid in seen:
                continue
            seen.add(pid)
            where = f" from {addr}" if addr else ""
            described.append(
                f"'{name or 'unknown'}' (server pid {pid}{where}, "
                f"connected since {backend_start:%Y-%m-%d %H:%M:%S %Z})")
        return "; ".join(described)

    def release(self):
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if self.connection is not None:
            try:
                # Closing the session lets go of every advisory lock of it.
                self.connection.close()
            except SQLAlchemyError:
                pass  # the connection died: the server dropped the lock
            self.connection = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()

    # Watching.

    def _watch(self):
        while not self._stop.wait(WATCH_INTERVAL):
            with self._mutex:
                try:
                    self.connection.exec_driver_sql("SELECT 1")
                except Exception as exc:
                    self.lost = (
                        "the run lock was lost: its connection went away ("
                        + " ".join(str(getattr(exc, "orig", None) or exc)
                                   .split())
                        + "); another run may have started")
                    return
                if self.on_beat is not None:
                    try:
                        self.on_beat(self.connection)
                    except Exception:
                        pass  # progress is written again at the next beat

    @contextlib.contextmanager
    def using(self):
        """The lock's connection, for one short use (run records), while
        the watcher is not using it."""
        with self._mutex:
            yield self.connection
