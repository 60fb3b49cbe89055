"""Per-tenant work: an app's callable, run in each tenant, one transaction
each (``tenant-migrate <ini> run``, :func:`run_in_tenants`).

A data fix, a backfill, the app's seed (:mod:`.seeds`): the callable
gets a :class:`TenantTask` per tenant and works through its
``connection`` (or ``session``), on which tables declared without a
schema are the tenant's and the ``search_path`` starts with the tenant.
Each tenant's transaction:

1. waits for the tenant's advisory lock, the one its migrations take, so
   the task never runs beside a migration of that tenant;
2. reads the tenant's version under that lock: a tenant not at the
   tenant head is reported (``behind``: run ``upgrade`` first) and the
   callable is not called, since it is written for the head's tables;
3. calls the callable and commits; an exception rolls the tenant back and
   is reported, and the other tenants go on (``fail_fast`` stops).

Selection, workers and the report are those of ``upgrade``: exit 0 when
the callable ran and committed in every selected tenant, 1 otherwise.
The run lock is not taken: a long task does not hold deploys back, and
the per-tenant lock is what keeps it from a tenant's migration.

:func:`run_in_new_tenant` calls such a function in a tenant being
created, from a ``TenantCreated`` subscriber: the seed of
:mod:`.seeds` runs both ways.
"""
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from .engine.sql import search_path_sql, tenant_lock_sql, timeouts_sql
from .errors import describe_error
from .plan import branch_heads
from .report import (
    BEHIND,
    DONE,
    FAILED,
    NOT_RUN,
    REJECTED,
    BranchReport,
    RunReport,
    SchemaResult,
)
from .tenants import select_tenants
from .versions import read_schema_versions
from .workers import WorkerPool


@dataclass
class TenantTask:
    """What the callable gets, for one tenant.

    - ``schema``: the tenant;
    - ``connection``: in the tenant's transaction (committed after the
      callable returns); tables without a schema are the tenant's;
    - ``session``: an ORM session on that connection (made when first
      used; flushed before the commit);
    - ``args``: the command line's arguments after the callable's name;
    - ``registry`` (the app's, when the command loaded it), ``migrator``.
    """

    schema: str
    connection: object
    migrator: object
    registry: object = None
    args: tuple = ()
    _session: Session = field(default=None, repr=False)

    @property
    def session(self):
        if self._session is None:
            self._session = Session(bind=self.connection)
        return self._session

    def _finish(self):
        # What the callable left in the session is written before the
        # tenant's transaction commits.
        if self._session is not None:
            self._session.flush()
            self._session.close()


class _Behind(Exception):
    pass


def resolve_task(spec):
    """The function ``spec`` names: ``package.module:function``, or a
    script, ``path/to/script.py[:function]`` (default ``run``), loaded
    from its file. Raises ``ValueError`` saying why not."""
    path, _, function = spec.partition(":")
    if path.endswith(".py"):
        task = getattr(_load_script(path), function or "run", None)
        if task is None:
            raise ValueError(f"{path} defines no function "
                             f"{function or 'run'}")
    else:
        from pyramid.path import DottedNameResolver
        try:
            task = DottedNameResolver().resolve(spec)
        except (ImportError, ValueError) as exc:
            raise ValueError(f"cannot import {spec}: {exc}") from None
    if not callable(task):
        raise ValueError(f"{spec} is not a function")
    return task


def _load_script(path):
    import importlib.util
    import os
    if not os.path.isfile(path):
        raise ValueError(f"no such script: {path}")
    name = "tenantmigrate_script_" + os.path.basename(path)[:-3]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ValueError(f"loading {path} failed: "
                         f"{describe_error(exc)}") from None
    return module


def run_in_tenants(migrator, task, tenants=(), exclude_tenants=(),
                   shard=None, workers=None, fail_fast=None, args=(),
                   registry=None, progress=None, name=None):
    """Call ``task(TenantTask)`` in each selected tenant (all the tenant
    source lists, or ``tenants``), each in its own transaction; return a
    :class:`~.report.RunReport` (command ``run``)."""
    settings = migrator.settings
    with migrator.connect() as connection:
        discovered = migrator.discover_tenants(connection)
    selection = select_tenants(discovered, settings.shared_schema,
                               tenants, exclude_tenants, shard)
    head = branch_heads(migrator.script, "tenant")
    name = name or _name_of(task)
    branch = BranchReport("tenant", "run", name)
    branch.results.extend(
        SchemaResult(schema, REJECTED, error=reason)
        for schema, reason in selection.rejected)
    report = RunReport(f"run {name}", branches=[branch], retry_failed=False)
    fail_fast = settings.fail_fast if fail_fast is None else fail_fast

    results_lock = threading.Lock()

    def work(worker, schema):
        result = _run_one(migrator, worker.connection, schema, task, head,
                          registry, tuple(args))
        with results_lock:
            branch.results.append(result)
        if progress is not None:
            progress("tenant", result)
        if fail_fast and not result.ok:
            pool.stop(f"stopped at the first failing tenant ({schema})")
        if worker.connection.invalidated or worker.connection.closed:
            worker.reconnect()  # lost with this tenant: the next gets one

    pool = WorkerPool(lambda: migrator.connect(migrator.run_engine),
                      min(workers or settings.workers,
                          max(1, len(selection.schemas))),
                      name="tenantmigrate-task")
    if progress is not None:
        progress.planned("tenant", len(selection.schemas))
    pool.run(selection.schemas, work)
    branch.workers = pool.opened
    branch.warnings.extend(pool.warnings)
    reason = pool.aborted or "run stopped"
    branch.results.extend(SchemaResult(schema, NOT_RUN, error=reason)
                          for schema in pool.leftover)
    branch.results.sort(key=lambda r: r.schema)
    report.aborted = pool.aborted
    return report.finish()


def _name_of(task):
    return f"{getattr(task, '__module__', '?')}:" \
           f"{getattr(task, '__qualname__', repr(task))}"


def _run_one(migrator, connection, schema, task, head, registry, args):
    settings = migrator.settings
    started = time.monotonic()
    heads = ()
    try:
        with connection.begin():
            connection.exec_driver_sql(tenant_lock_sql(schema))
            heads = read_schema_versions(
                connection, [schema], settings.version_table,
                commit=False)[schema].heads
            if tuple(sorted(heads)) != head:
                raise _Behind(
                    f"at {','.join(heads) or 'base'}, the tenant head is "
                    f"{','.join(head)}: run upgrade first")
            connection.exec_driver_sql(search_path_sql(
                schema, (settings.shared_schema,
                         *settings.extra_search_path)))
            connection.exec_driver_sql(timeouts_sql(
                settings.lock_timeout, settings.statement_timeout))
            connection.execution_options(
                schema_translate_map={None: schema})
            tenant = TenantTask(schema, connection, migrator, registry, args)
            task(tenant)
            tenant._finish()
        status, error = DONE, None
    except _Behind as exc:
        status, error = BEHIND, str(exc)
    except Exception as exc:
        status, error = FAILED, describe_error(exc)
    finally:
        if not (connection.invalidated or connection.closed):
            connection.execution_options(schema_translate_map=None)
    return SchemaResult(schema, status, from_heads=tuple(heads),
                        to_heads=tuple(heads), error=error,
                        duration=time.monotonic() - started)


def run_in_new_tenant(event, task, args=()):
    """Call ``task(TenantTask)`` in the tenant a
    :class:`~.events.TenantCreated` event announces, in the transaction
    creating it; for the event's subscriber.

    The tenant is as :func:`run_in_tenants` gives it: tables without a
    schema and the ``search_path`` are the tenant's. Its lock is held and
    its version is not checked: the transaction has just made it. The
    ``search_path`` of the creating transaction (a sign-up's request) is
    put back after. An exception goes up: the tenant's creation fails with
    it, and is rolled back.
    """
    connection = event.connection
    settings = event.migrator.settings
    saved = connection.exec_driver_sql(
        "SELECT current_setting('search_path')").scalar()
    connection.exec_driver_sql(search_path_sql(
        event.schema, (settings.shared_schema, *settings.extra_search_path)))
    tenant = TenantTask(event.schema, connection, event.migrator,
                        event.registry, tuple(args))
    task(tenant)
    tenant._finish()
    connection.exec_driver_sql(
        "SELECT set_config('search_path', %(path)s, true)", {"path": saved})
