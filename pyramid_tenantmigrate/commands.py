"""One function per ``tenant-migrate`` command, usable from Python.

Like Alembic's ``alembic.command``, each function is a thin layer: it takes
a :class:`~pyramid_tenantmigrate.migrator.TenantMigrator`, plans with
:mod:`.plan` and runs with :mod:`.execute`. The console script only parses
arguments around these.

Schema-changing commands return a
:class:`~pyramid_tenantmigrate.report.RunReport`; they do not raise when
some tenants fail (the report says which), only when nothing could run.
"""
import os
import shutil
import sys

from alembic import command as alembic_command
from sqlalchemy.exc import DBAPIError

from . import autogenerate as autogen
from . import spares
from .errors import UsageError
from .execute import execute_branch
from .locking import RunLock, lock_is_held
from .plan import (
    DOWNGRADE, SHARED, STAMP, TENANT, UPGRADE,
    StepPlanner, branch_has_revisions, plan_branch,
    resolve_destinations,
)
from .report import (
    REJECTED, BranchReport, BranchStatus, RunReport, SchemaResult,
    StatusReport,
)
from .runlog import RunRecord, last_failed_tenants, recent_runs
from .tenants import select_tenants
from .versions import SchemaVersion

TEMPLATE_DIRECTORY = os.path.join(os.path.dirname(__file__), "template")


def init(migrator, directory=None):
    """Write a new migrations folder (``env.py``, ``script.py.mako``,
    ``versions/shared/``, ``versions/tenant/``) and return its path.

    ``directory`` defaults to the ``tenantmigrate.script_location`` setting.
    An existing non-empty folder is left alone.
    """
    target = os.path.abspath(directory or migrator.script_location)
    if os.path.isdir(target) and os.listdir(target):
        raise UsageError(
            f"{target} already exists and is not empty; nothing was written")
    shutil.copytree(TEMPLATE_DIRECTORY, target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def revision(migrator, message, branch, rev_id=None, autogenerate=False):
    """Write a new revision file on ``branch`` (``shared`` or ``tenant``).

    The first revision of a branch starts it and carries its branch label;
    later ones follow the branch's head. Returns Alembic's ``Script``.

    With ``autogenerate``, the operations come from comparing the branch's
    models (``tenantmigrate.shared_metadata`` / ``tenant_metadata``) with
    the database, as :mod:`.autogenerate` explains.
    """
    if branch not in (SHARED, TENANT):
        raise UsageError(
            f"unknown branch {branch!r}: use --branch shared or "
            "--branch tenant")
    if branch_has_revisions(migrator.script, branch):
        head, branch_label = f"{branch}@head", None
    else:
        head, branch_label = "base", branch
    if autogenerate:
        return autogen.revision(
            migrator, message, branch, head, branch_label=branch_label,
            version_path=migrator.version_path(branch), rev_id=rev_id)
    return alembic_command.revision(
        migrator.alembic_config, message=message, head=head,
        branch_label=branch_label, version_path=migrator.version_path(branch),
        rev_id=rev_id, autogenerate=autogenerate,
    )


def check(migrator, branches=(SHARED, TENANT)):
    """Compare each branch's models with its migrations, as ``alembic
    check``. Returns ``{branch: [diff, ...]}``; every list is empty when
    models and migrations agree. Nothing is changed in the database."""
    for branch in branches:
        if branch not in (SHARED, TENANT):
            raise UsageError(f"unknown branch {branch!r}")
        # Every missing setting is reported before any database work.
        autogen.branch_metadata(migrator.settings, branch)
    return {branch: autogen.branch_diffs(migrator, branch)
            for branch in branches}


def upgrade(migrator, target="heads", **options):
    """Upgrade the shared schema, then the tenants, to ``target``.

    ``target`` is ``heads`` (default), ``shared``/``tenant`` (that branch's
    head), ``tenant@<rev>``, ``tenant@+1`` or a revision id. See
    :func:`run` for the options.
    """
    return run(migrator, UPGRADE, target, **options)


def downgrade(migrator, target, **options):
    """Downgrade the tenants, then the shared schema, to ``target``
    (e.g. ``tenant@-1``, ``tenant@base``, ``base``). See :func:`run`."""
    return run(migrator, DOWNGRADE, target, **options)


def stamp(migrator, target, **options):
    """Set version tables to ``target`` without running migrations.
    See :func:`run`."""
    return run(migrator, STAMP, target, **options)


def _split_range(target, sql):
    if target and ":" in target:
        if not sql:
            raise UsageError(
                f"range {target!r} is only for --sql (offline) mode")
        start, _, end = target.partition(":")
        return start or None, end
    return None, target


def _tenant_selection(migrator, connection, tenants, exclude_tenants,
                      shard=None):
    discovered = migrator.discover_tenants(connection)
    return select_tenants(discovered, migrator.shared_schema,
                          only=tenants, exclude=exclude_tenants, shard=shard)


def _check_tenants_early(migrator, tenants, exclude_tenants):
    """Refuse unknown ``--tenant`` names before the shared branch runs.

    The tenant source may only work once the shared branch has created its
    table; then the check happens after the shared branch, as usual.
    """
    with migrator.connect() as connection:
        try:
            with connection.begin():
                discovered = migrator.discover_tenants(connection)
        except DBAPIError:
            return
    select_tenants(discovered, migrator.shared_schema, only=tenants,
                   exclude=exclude_tenants)


def run(migrator, operation, target, *, tenants=(), exclude_tenants=(),
        sql=False, output=None, fail_fast=None, create_missing=False,
        progress=None, config_uri=None, lock_wait=None, workers=None,
        shard=None, retry_failed=False):
    """Plan and execute ``operation`` (upgrade, downgrade or stamp).

    - ``tenants`` / ``exclude_tenants``: narrow the tenant branch to these
      schemas (``--tenant`` / ``--exclude-tenant``).
    - ``sql``: write the SQL to ``output`` instead of running it (offline
      mode). Each schema's section starts from that schema's current
      revision, read from the database, or from ``start`` when ``target``
      is a ``start:end`` range.
    - ``fail_fast``: stop at the first failing tenant (default: the
      ``tenantmigrate.fail_fast`` setting). The shared branch failing always
      stops the run before any tenant.
    - ``create_missing``: create tenant schemas the source lists but the
      database does not have, instead of reporting them.
    - ``progress``: called with ``(branch, SchemaResult)`` after each schema.
    - ``workers``: parallel connections for tenants whose revisions replay
      (default: the ``tenantmigrate.workers`` setting).
    - ``lock_wait``: seconds to wait for another run's lock (default: the
      ``tenantmigrate.lock_wait`` setting; 0 fails at once naming the
      holder). Offline runs take no lock.
    - ``shard``: ``(index, count)``: only this shard's tenants, and the
      tenant branch only (run the shared branch once before the shards);
      each shard has its own lock, so shards run side by side.
    - ``retry_failed``: only the tenants that failed or were not attempted
      in the last finished run of the same command.

    Every locked run is recorded in the shared schema's
    ``tenantmigrate_runs`` table; ``report.run_id`` is its row.
    """
    options = dict(
        tenants=tuple(tenants), exclude_tenants=tuple(exclude_tenants),
        sql=sql, output=output, fail_fast=fail_fast,
        create_missing=create_missing, progress=progress,
        config_uri=config_uri, workers=workers, shard=shard)
    if sql:
        return _run(migrator, operation, target, **options)
    if lock_wait is None:
        lock_wait = migrator.settings.lock_wait
    scope = f" shard {shard[0]}/{shard[1]}" if shard else ""
    with RunLock(migrator, operation, wait=lock_wait, scope=scope) as lock:
        if retry_failed:
            failed = last_failed_tenants(lock.connection,
                                         migrator.shared_schema, operation)
            if not failed:
                report = RunReport(operation, config_uri=config_uri)
                report.branches.append(BranchReport(
                    TENANT, operation, target or "", note=(
                        "no earlier run recorded" if failed is None else
                        "nothing to retry: the last run had no failed "
                        "tenants")))
                return report.finish()
            options["tenants"] = tuple(failed)
        record = RunRecord.start(lock.connection, migrator.shared_schema,
                                 operation, target)
        try:
            report = _run(migrator, operation, target, **options)
        except BaseException as exc:
            record.abort(f"{type(exc).__name__}: {exc}")
            raise
        record.finish(report)
        report.run_id = record.id
        if (operation == UPGRADE and report.ok and not shard
                and migrator.settings.spare_schemas > 0):
            # The deploy is where the tenant head moves: spares made at
            # the old head are replaced here, under the same lock.
            try:
                report.spares = fill_spares(migrator, locked=True)
            except Exception as exc:  # the upgrade itself is done
                report.spares = spares.SpareReport(
                    error=" ".join(str(exc).split()))
        return report


def _run(migrator, operation, target, *, tenants, exclude_tenants, sql,
         output, fail_fast, create_missing, progress, config_uri, workers,
         shard):
    if fail_fast is None:
        fail_fast = migrator.settings.fail_fast
    output = output if output is not None else sys.stdout
    start, target = _split_range(target, sql)
    script = migrator.script
    destinations = resolve_destinations(script, operation, target)
    if shard:
        destinations = _tenant_destinations_for_shard(migrator, operation,
                                                      destinations)
    report = RunReport(operation, config_uri=config_uri)
    if tenants and not (sql and start is not None):
        _check_tenants_early(migrator, tenants, exclude_tenants)

    for branch, destination in destinations:
        planner = StepPlanner(script, operation, destination)
        rejected = {}
        if branch == SHARED:
            schemas = [migrator.shared_schema]
        else:
            schemas = None
        if sql and start is not None and (branch == SHARED or tenants):
            # Offline with an explicit start: no database needed at all.
            schemas = schemas or list(select_tenants(
                list(tenants), migrator.shared_schema, only=tenants,
                exclude=exclude_tenants).schemas)
            heads = (start,) if start not in (None, "base") else ()
            versions = {s: SchemaVersion(s, True, heads, bool(heads))
                        for s in schemas}
        else:
            with migrator.connect() as connection:
                if schemas is None:
                    selection = _tenant_selection(
                        migrator, connection, tenants, exclude_tenants,
                        shard)
                    schemas, rejected = selection.schemas, selection.rejected
                versions = migrator.read_versions(connection, schemas,
                                                  workers=workers)
            if start is not None:
                heads = (start,) if start != "base" else ()
                versions = {s: SchemaVersion(s, v.exists, heads, bool(heads))
                            for s, v in versions.items()}

        plan = plan_branch(planner, branch, versions, schemas)
        if hasattr(progress, "planned"):
            progress.planned(branch, len(plan.pending))
        branch_report, aborted = execute_branch(
            migrator, plan, planner, as_sql=sql, output=output,
            fail_fast=fail_fast, create_missing=create_missing,
            progress=progress, workers=workers)
        for name, reason in rejected.items():
            branch_report.results.append(
                SchemaResult(name, REJECTED, error=reason))
        report.branches.append(branch_report)
        if aborted:
            report.aborted = aborted
            break
        if branch_report.failures and (branch == SHARED or fail_fast):
            if branch == SHARED and len(destinations) > 1:
                report.aborted = (
                    "the shared schema failed, so no tenant was migrated "
                    "(tenant revisions may depend on it)")
            break
    return report.finish()


def _tenant_destinations_for_shard(migrator, operation, destinations):
    """A shard runs the tenant branch only, and only once the shared schema
    is where the run needs it."""
    tenant_destinations = [d for d in destinations if d[0] == TENANT]
    if not tenant_destinations:
        raise UsageError("--shard splits tenants: give a tenant target "
                         "(e.g. 'tenant@head'); run the shared branch once, "
                         "without --shard")
    if operation == UPGRADE and any(d[0] == SHARED for d in destinations):
        shared = current(migrator, tenants=(), skip_tenants=True)
        if shared.behind:
            raise UsageError(
                "the shared schema is behind its head: run 'tenant-migrate "
                "<ini> upgrade shared' once, then the shards")
    return tenant_destinations


def fill_spares(migrator, count=None, lock_wait=None, locked=False):
    """Keep ``count`` spare tenant schemas (default: the
    ``tenantmigrate.spare_schemas`` setting) ready at the tenant head; see
    :func:`pyramid_tenantmigrate.spares.fill_spares`."""
    return spares.fill_spares(migrator, count=count, lock_wait=lock_wait,
                              locked=locked)


def runs(migrator, limit=20):
    """The last ``limit`` recorded runs, newest first, as
    :class:`~pyramid_tenantmigrate.runlog.RunRow`; a run still marked
    ``running`` while no run holds the lock is reported ``interrupted``."""
    with migrator.connect() as connection:
        rows = recent_runs(connection, migrator.shared_schema, limit)
        if any(row.status == "running" for row in rows) and not lock_is_held(
                connection):
            for row in rows:
                if row.status == "running":
                    row.status = "interrupted"
    return rows


def current(migrator, tenants=(), exclude_tenants=(), skip_tenants=False):
    """Report the shared schema's revision and every tenant's, with how far
    each is behind its branch's head. Returns a
    :class:`~pyramid_tenantmigrate.report.StatusReport`."""
    script = migrator.script
    status = StatusReport()
    with migrator.connect() as connection:
        for branch in (SHARED,) if skip_tenants else (SHARED, TENANT):
            if branch == SHARED:
                schemas, rejected = [migrator.shared_schema], {}
            else:
                selection = _tenant_selection(migrator, connection, tenants,
                                              exclude_tenants)
                schemas, rejected = selection.schemas, selection.rejected
            versions = migrator.read_versions(connection, schemas)
            status.branches.append(
                _branch_status(script, branch, versions, schemas, rejected))
        if not skip_tenants:
            status.spares = spares.count_spares(migrator, connection)
    return status


def _branch_status(script, branch, versions, schemas, rejected):
    if branch_has_revisions(script, branch):
        head = tuple(sorted(
            r.revision for r in script.get_revisions(f"{branch}@head")))
        planner = StepPlanner(script, UPGRADE, f"{branch}@head")
    else:
        head, planner = (), None
    result = BranchStatus(branch, head, rejected=rejected)
    for schema in schemas:
        version = versions[schema]
        behind = 0
        if planner is not None:
            try:
                behind = len(planner.steps_for(version.heads))
            except Exception:
                behind = None
        result.schemas.append((schema, version.heads, behind, version.exists))
    return result


def history(migrator, rev_range=None, verbose=False, output=None):
    """Print the revision history (both branches), as ``alembic history``."""
    _with_stdout(migrator, output, alembic_command.history,
                 rev_range=rev_range, verbose=verbose)


def heads(migrator, verbose=False, output=None):
    """Print the head of each branch, as ``alembic heads``."""
    _with_stdout(migrator, output, alembic_command.heads, verbose=verbose)


def _with_stdout(migrator, output, fn, **kw):
    config = migrator.alembic_config
    saved = config.stdout
    config.stdout = output if output is not None else sys.stdout
    try:
        fn(config, **kw)
    finally:
        config.stdout = saved


def create_tenant(migrator, name, registry=None, request=None):
    """Create the tenant schema ``name`` at the tenant head, in a
    transaction of its own, sending ``TenantCreated`` through ``registry``
    when given. See :func:`pyramid_tenantmigrate.provisioning.create_tenant`
    for provisioning inside a caller's (a request's) transaction."""
    from .provisioning import create_tenant as provision
    return provision(migrator, name, registry=registry, request=request)


def drop_tenant(migrator, name, registry=None, request=None):
    """Drop the tenant schema ``name`` and everything in it, in a
    transaction of its own."""
    from .provisioning import drop_tenant as unprovision
    return unprovision(migrator, name, registry=registry, request=request)
