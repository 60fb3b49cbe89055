"""The startup hook: what the app does about migrations when it starts.

``tenantmigrate.startup`` chooses: ``off`` (nothing), ``check`` (refuse to
start while the shared schema or a tenant is behind its head), ``shared``
(upgrade the shared branch) or ``all`` (the shared branch, then every
tenant).

It runs when a server creates the app (``pserve``; gunicorn, uWSGI and
``waitress-serve`` load it without saying who they are, which counts as
serving too), never when a script only bootstraps it: Pyramid's scripts
and ``pyramid.paster.bootstrap`` put ``__script__`` in the app factory's
``global_config``, which the app hands over with
``config.set_tenantmigrate_global_config(global_config)``; the
``tenant-migrate`` script switches the hook off with :func:`suppressed`.

Several processes may start at once (workers, ``pserve --reload``). Each
first checks versions without any lock (the usual case: nothing to do, no
waiting). Only a process that finds work calls
:func:`~pyramid_tenantmigrate.commands.upgrade`, which takes the run's
advisory lock and plans from versions read *after* taking it: the first
process migrates, the others wait for it, then find nothing left to do.
Within one process, Alembic's ``op`` and ``context`` are per thread
(:func:`~pyramid_tenantmigrate.environment.install_thread_proxies`).
"""
import contextlib
import logging

from sqlalchemy.exc import DBAPIError

from . import commands
from .errors import LintRefused, StartupRefused
from .locking import RunLocked
from .settings import PREFIX

log = logging.getLogger(__name__)

#: ``__script__`` of the one Pyramid script that serves the app.
SERVING_SCRIPTS = frozenset({"pserve"})

_suppressed = 0


@contextlib.contextmanager
def suppressed():
    """Within this block, apps created in this process skip the hook.

    The ``tenant-migrate`` script bootstraps the app inside it: a
    ``check`` hook must not stop the very command that would upgrade.
    """
    global _suppressed
    _suppressed += 1
    try:
        yield
    finally:
        _suppressed -= 1


def is_serving(loaded_by):
    """Tell whether an app loaded by ``loaded_by`` (the ``__script__`` of
    its ``global_config``, ``None`` when not given) is being served."""
    if _suppressed:
        return False
    return loaded_by is None or loaded_by in SERVING_SCRIPTS


def _describe_behind(status):
    lines = []
    for branch in status.branches:
        behind = [(schema, heads, count, exists)
                  for schema, heads, count, exists in branch.schemas
                  if count or not exists]
        if not behind:
            continue
        head = ",".join(branch.head) or "base"
        names = ", ".join(
            f"{schema} ({','.join(heads) or 'base'})" if exists
            else f"{schema} (schema missing)"
            for schema, heads, _, exists in behind[:5])
        more = f" and {len(behind) - 5} more" if len(behind) > 5 else ""
        lines.append(f"{branch.branch} branch (head {head}): {len(behind)} "
                     f"schema(s) behind: {names}{more}")
    return "; ".join(lines)


def lock_free_status(migrator):
    """Versions read without the run lock: ``(status, None)``, or
    ``(None, reason)`` when they cannot be read yet (a tenant source that
    queries a shared table the shared branch has not created)."""
    try:
        return commands.current(migrator), None
    except DBAPIError as exc:
        error = exc.orig if exc.orig is not None else exc
        return None, " ".join(str(error).split())


def _behind(status, mode):
    branches = ("shared",) if mode == "shared" else ("shared", "tenant")
    return [(branch, schema) for branch, schema in status.behind
            if branch in branches]


def run_startup(migrator, mode=None, lock_wait=None, config_uri=None):
    """Do what ``mode`` (default: ``tenantmigrate.startup``) says; return
    the run's report, or ``None`` when nothing had to run.

    Raises :class:`~pyramid_tenantmigrate.errors.StartupRefused` when the
    app must not start: behind in ``check`` mode, a failed migration, or
    another process holding the run lock longer than ``lock_wait``
    seconds (default: ``tenantmigrate.startup_lock_wait``).
    """
    settings = migrator.settings
    mode = mode or settings.startup
    if lock_wait is None:
        lock_wait = settings.startup_lock_wait
    ini = config_uri or "<ini>"
    if mode == "off":
        return None
    status, unreadable = lock_free_status(migrator)
    if status is not None and not _behind(status, mode):
        log.info("tenantmigrate.startup = %s: schemas are at their heads",
                 mode)
        return None
    if mode == "check":
        why = _describe_behind(status) if status is not None else (
            f"versions cannot be read: {unreadable}")
        raise StartupRefused(
            f"{PREFIX}startup = check: the database is behind its "
            f"migrations: {why}. Run 'tenant-migrate {ini} upgrade', then "
            f"start again (or set {PREFIX}startup = all to upgrade on start)")

    target = "shared" if mode == "shared" else "heads"
    log.info("tenantmigrate.startup = %s: upgrading to %s", mode, target)
    try:
        # upgrade() takes the run lock and re-reads every version after
        # taking it: a process that waited here finds nothing to do.
        report = commands.upgrade(migrator, target, lock_wait=lock_wait,
                                  config_uri=config_uri)
    except RunLocked as exc:
        raise StartupRefused(
            f"{PREFIX}startup = {mode}: {exc} (waited "
            f"{PREFIX}startup_lock_wait = {lock_wait:g}s)") from None
    except LintRefused as exc:
        raise StartupRefused(
            f"{PREFIX}startup = {mode}: {exc}\n"
            f"{exc.report.render_text()}") from None
    if not report.ok:
        raise StartupRefused(
            f"{PREFIX}startup = {mode}: the upgrade failed, so the app does "
            f"not start.\n{report.failure_summary()}")
    log.info("%s", report.render_text())
    return report


def on_application_created(event):
    """``ApplicationCreated`` subscriber: run the hook if the app is being
    served."""
    registry = event.app.registry
    migrator = getattr(registry, "tenant_migrator", None)
    if migrator is None or migrator.settings.startup == "off":
        return
    global_config = getattr(registry, "tenantmigrate_global_config", None)
    loaded_by = (global_config or {}).get("__script__")
    if not is_serving(loaded_by):
        log.debug("tenantmigrate.startup skipped: app loaded by %s",
                  loaded_by or "tenant-migrate")
        return
    config_uri = (global_config or {}).get("__file__")
    if global_config is None:
        # Without global_config a script cannot be told from a server.
        log.warning(
            "%sstartup = %s runs as if this process served the app: the app "
            "factory does not call "
            "config.set_tenantmigrate_global_config(global_config), so "
            "pshell and bootstrap scripts cannot be told from a server",
            PREFIX, migrator.settings.startup)
    try:
        run_startup(migrator, config_uri=config_uri)
    except StartupRefused as exc:
        # Said before the traceback the server prints after it.
        log.error("%s", exc)
        if global_config is None:
            raise StartupRefused(
                f"{exc}\n(If this process is a script, not a server, have "
                "the app factory call "
                "config.set_tenantmigrate_global_config(global_config) so "
                "the hook can tell.)") from None
        raise
