"""One function per ``tenant-migrate`` command, usable from Python.

Like Alembic's ``alembic.command``, each function is a thin layer: it takes
a :class:`~pyramid_tenantmigrate.migrator.TenantMigrator`; schema-changing
commands hand a :class:`~.run.RunOptions` to :func:`~.run.run`. The
console script only parses arguments around these.

Schema-changing commands return a
:class:`~pyramid_tenantmigrate.report.RunReport`; they do not raise when
some tenants fail (the report says which), only when nothing could run.
"""
import os
import re
import shutil
import sys

from alembic import command as alembic_command

from . import autogenerate as autogen
from . import drift, spares
from .errors import TenantSourceUnavailable, UsageError
from .plan import (
    DOWNGRADE,
    SHARED,
    STAMP,
    TENANT,
    UPGRADE,
    StepPlanner,
    branch_has_revisions,
    branch_heads,
)
from .report import BranchStatus, StatusReport
from .run import RunOptions, run, unfinished_tenants
from .runlog import recent_runs, reconcile
from .tenants import select_tenants

TEMPLATE_DIRECTORY = os.path.join(os.path.dirname(__file__), "template")

#: Revision ids ``revision --rev-id`` accepts: a file name in versions/ and
#: a value of a version table's varchar(32).
_REVISION_ID = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")


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
    if rev_id is not None and not _REVISION_ID.match(rev_id):
        raise UsageError(
            f"--rev-id {rev_id!r} is not a revision id this tool writes: use "
            "1 to 32 ASCII letters, digits, '_' or '-' (it names a file in "
            "versions/ and is stored in every version table)")
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


def upgrade(migrator, target="heads", force=False, **options):
    """Upgrade the shared schema, then the tenants, to ``target``.

    ``target`` is ``heads`` (default), ``shared``/``tenant`` (that branch's
    head), ``tenant@<rev>``, ``tenant@+1`` or a revision id. ``options``
    are those of :class:`~.run.RunOptions`.

    With ``tenantmigrate.lint_before_upgrade``, what it would run is
    linted first (:func:`.lint.gate`) and an error-level finding raises
    :class:`~.errors.LintRefused`, nothing run, unless ``force``; the run
    reuses the revisions lint rendered. ``sql`` does not lint.
    """
    options = RunOptions(**options).resolve(migrator.settings)
    if (migrator.settings.lint_before_upgrade and not force
            and not options.sql):
        from . import lint as lint_module
        lint_module.gate(migrator, target, options)
    return run(migrator, UPGRADE, target, options)


def downgrade(migrator, target, **options):
    """Downgrade the tenants, then the shared schema, to ``target``
    (e.g. ``tenant@-1``, ``tenant@base``, ``base``)."""
    return run(migrator, DOWNGRADE, target, RunOptions(**options))


def stamp(migrator, target, **options):
    """Set version tables to ``target`` without running migrations;
    moving a version away from a revision it holds needs ``yes=True``."""
    return run(migrator, STAMP, target, RunOptions(**options))


def lint(migrator, rev_range=None):
    """Lint the revisions still to run (or ``rev_range``, ``rev1:rev2``)
    with squawk, weighed by the tenants that will run them; returns a
    :class:`~pyramid_tenantmigrate.lint.LintReport` (see :mod:`.lint`).
    Nothing is changed in the database."""
    from . import lint as lint_module
    return lint_module.lint(migrator, rev_range)


def fill_spares(migrator, count=None, lock_wait=None, locked=False):
    """Keep ``count`` spare tenant schemas (default: the
    ``tenantmigrate.spare_schemas`` setting) ready at the tenant head; see
    :func:`pyramid_tenantmigrate.spares.fill_spares`."""
    return spares.fill_spares(migrator, count=count, lock_wait=lock_wait,
                              locked=locked)


def runs(migrator, limit=20):
    """The last ``limit`` recorded runs, newest first, as
    :class:`~pyramid_tenantmigrate.runlog.RunRow`. Runs whose process
    ended without recording the outcome are completed first, from the
    database (:func:`~.runlog.reconcile`)."""
    if migrator.runs_fleet:
        # Each database's records; those of one fleet run together, in
        # the fleet's order of databases, newest run first.
        names = migrator.fleet.names
        rows, started = [], {}
        for member in migrator.fleet.members():
            for row in runs(member, limit):
                row.database = member.database_name
                rows.append(row)
                group = row.fleet_run or (row.database, row.id)
                started[group] = max(started.get(group, row.started),
                                     row.started)
        rows.sort(key=lambda row: (
            -started[row.fleet_run or (row.database, row.id)].timestamp(),
            row.fleet_run or "", names.index(row.database)))
        return rows[:limit]
    with migrator.connect(migrator.run_engine) as connection:
        connection = connection.execution_options(
            isolation_level="AUTOCOMMIT")
        reconcile(connection, migrator.shared_schema,
                  lambda selection, destinations: unfinished_tenants(
                      migrator, selection, destinations))
        return recent_runs(connection, migrator.shared_schema, limit)


def current(migrator, tenants=(), exclude_tenants=(), skip_tenants=False,
            databases=()):
    """Report the shared schema's revision and every tenant's, with how far
    each is behind its branch's head. Returns a
    :class:`~pyramid_tenantmigrate.report.StatusReport` (a fleet's: a
    :class:`~.fleetrun.FleetStatus`, by database; ``databases`` narrows
    it)."""
    if migrator.runs_fleet and not skip_tenants:
        from .fleetrun import fleet_status
        return fleet_status(migrator, tenants, exclude_tenants, databases)
    script = migrator.script
    status = StatusReport()
    with migrator.connect() as connection:
        shared = [migrator.shared_schema]
        status.branches.append(branch_status(
            script, SHARED, migrator.read_versions(connection, shared),
            shared))
        if skip_tenants:
            return status
        try:
            selection = select_tenants(
                migrator.discover_tenants(connection),
                migrator.shared_schema, only=tenants,
                exclude=exclude_tenants)
        except TenantSourceUnavailable as exc:
            status.branches.append(BranchStatus(
                TENANT, branch_heads(script, TENANT), note=str(exc)))
            return status
        versions = migrator.read_versions(connection, selection.schemas)
        status.branches.append(branch_status(
            script, TENANT, versions, selection.schemas, selection.rejected))
        status.spares = spares.count_spares(migrator, connection)
    return status


def doctor(migrator, tenants=(), exclude_tenants=(), shard=None):
    """Compare every selected tenant's tables with what the migrations
    build at the tenant's revision (drift: hotfixes made by hand, stale
    clones, non-transactional work cut short); nothing is changed. Returns
    a :class:`~pyramid_tenantmigrate.report.DriftReport`, ``ok`` when no
    tenant differs. ``shard`` is ``(index, count)``, as for ``upgrade``.
    :mod:`~pyramid_tenantmigrate.drift` tells how."""
    with migrator.connect() as connection:
        selection = select_tenants(
            migrator.discover_tenants(connection), migrator.shared_schema,
            only=tenants, exclude=exclude_tenants, shard=shard)
        ahead = drift.build_ahead(migrator)  # while the versions are read
        versions = migrator.read_versions(connection, selection.schemas)
    positions = branch_status(migrator.script, TENANT, versions,
                              selection.schemas, selection.rejected)
    return drift.examine(migrator, positions, ahead)


def branch_status(script, branch, versions, schemas, rejected=None):
    """Where ``schemas`` of ``branch`` stand (a
    :class:`~.report.BranchStatus`)."""
    head = branch_heads(script, branch)
    planner = StepPlanner(script, UPGRADE, f"{branch}@heads") if head else None
    result = BranchStatus(branch, head, rejected=rejected or {})
    for schema in schemas:
        version = versions[schema]
        if version.problem is not None:
            result.unreadable[schema] = version.problem
            continue
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
