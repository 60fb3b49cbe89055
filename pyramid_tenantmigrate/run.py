"""A run: select tenants -> read versions -> plan -> execute -> record.

:func:`run` is what ``upgrade``, ``downgrade`` and ``stamp`` do. Under the
run lock (:mod:`.locking`), with a row in the runs table
(:mod:`.runlog`), for each branch in order (shared first going up,
tenants first going down):

1. **select**: the shared schema, or the tenants of the source narrowed by
   the options (:mod:`.tenants`);
2. **read versions** of all of them in a few round trips (:mod:`.versions`);
3. **plan**: who is behind, with which steps (:mod:`.plan`);
4. **execute**: one transaction per schema (:mod:`.execute`);
5. **record** each result as it comes.

The tenant branch is not done after one pass. Tenants created meanwhile
(sign-ups) are looked for again and migrated, until a pass finds none;
the last look is taken while no tenant is being created (sign-ups hold
the provisioning lock shared while they create one, the run takes it
exclusively). So ``upgrade`` exits 0 only if every tenant the source
lists when it ends is at the target.

An ``upgrade`` with waves (:mod:`.waves`) runs the first pass's pending
tenants wave by wave, and halts when a wave's gate says so; later passes
(tenants created meanwhile) run as one.
"""
import contextlib
import sys
from dataclasses import dataclass, field, replace

from sqlalchemy.exc import DBAPIError

from .citus import check_before_tenants
from .citus import check_run as check_citus
from .engine.execute import execute_branch
from .errors import TenantSourceUnavailable, UsageError, sqlstate
from .isolation import grant_tenant_sql, grants_to_app, install_functions
from .locking import RunLock
from .plan import (
    SHARED,
    STAMP,
    TENANT,
    UPGRADE,
    StepPlanner,
    branch_heads,
    is_relative,
    plan_branch,
    resolve_destinations,
)
from .report import REJECTED, BranchReport, RunReport, SchemaResult
from .reserved import PROVISIONING_LOCK, lock_key
from .retry import LOCK_NOT_AVAILABLE
from .runlog import RunRecord, reconcile, retry_tenants
from .tenanthead import record_tenant_head
from .tenants import TenantSelection, select_tenants
from .waves import Gate, Wave, order_tenants, parse_waves, split_waves

#: Passes over new tenants without blocking sign-ups, before the last one.
FREE_PASSES = 3
#: Seconds the last pass waits for sign-ups in flight to commit.
PROVISIONING_WAIT = 60


@dataclass
class RunOptions:
    """What a run is asked to do, besides the operation and the target.

    - ``tenants`` / ``exclude_tenants``: only these tenants / not these;
    - ``shard``: ``(index, count)``, one shard's tenants (tenant branch
      only; shards of one deploy run side by side);
    - ``retry_failed``: the tenants the last run of this command failed or
      left unfinished;
    - ``sql`` / ``output``: write the SQL instead of running it; a
      ``start:end`` target renders from ``start``;
    - ``fail_fast``: stop at the first failing tenant (default: the
      setting);
    - ``create_missing``: create tenant schemas the source lists but the
      database lacks;
    - ``workers``: parallel connections (default: the setting);
    - ``lock_wait``: seconds to wait for another run's lock (default: the
      setting; 0 fails at once naming the holder; ``None`` after
      resolving means forever);
    - ``yes``: ``stamp`` may move version tables away from what they say;
    - ``progress``: told about each branch (``planned(branch, count)``)
      and each schema (``progress(branch, result)``);
    - ``config_uri``: the ini file, for the hints in reports;
    - ``databases``: in a fleet, only these databases (:mod:`.fleetrun`);
    - ``waves``: ``upgrade`` runs the tenants in waves of these sizes
      (``"1,5%,rest"`` or :func:`.waves.parse_waves`'s tuple; default:
      the setting); ``canaries``: tenants that go first;
      ``confirm_wave(wave)``: asked after each wave but the last, false
      halts the run (:mod:`.waves`).
    """

    tenants: tuple = ()
    exclude_tenants: tuple = ()
    shard: tuple = None
    retry_failed: bool = False
    sql: bool = False
    output: object = None
    fail_fast: bool = None
    create_missing: bool = False
    workers: int = None
    lock_wait: float = None
    yes: bool = False
    progress: object = None
    config_uri: str = None
    waves: object = None
    canaries: tuple = ()
    confirm_wave: object = None
    databases: tuple = ()
    #: Set by a fleet run: the id its databases' run records share.
    fleet_run: str = None
    #: Set by :func:`run`: the setting's value when not given.
    resolved: bool = field(default=False, repr=False)

    def resolve(self, settings):
        """These options with the settings' defaults filled in, checked."""
        if self.workers is not None and (
                not isinstance(self.workers, int) or self.workers < 1):
            raise UsageError(f"--workers must be 1 or more, got "
                             f"{self.workers!r}")
        waves = self.waves
        if isinstance(waves, str):
            try:
                waves = parse_waves(waves)
            except ValueError as exc:
                raise UsageError(f"--waves {waves}: {exc}") from None
        waves = waves or settings.waves
        if (self.canaries or self.confirm_wave) and not waves:
            raise UsageError("--canary and --wave-pause are for a run in "
                             "waves: give --waves or set tenantmigrate.waves")
        return replace(
            self,
            tenants=tuple(dict.fromkeys(self.tenants)),
            exclude_tenants=tuple(self.exclude_tenants),
            fail_fast=(settings.fail_fast if self.fail_fast is None
                       else self.fail_fast),
            workers=self.workers or settings.workers,
            lock_wait=(settings.lock_wait if self.lock_wait is None
                       else self.lock_wait),
            output=self.output if self.output is not None else sys.stdout,
            progress=self.progress or NullProgress(),
            waves=waves, canaries=tuple(dict.fromkeys(self.canaries)),
            resolved=True)

    @property
    def selects_tenants(self):
        return bool(self.tenants or self.exclude_tenants or self.shard
                    or self.retry_failed)

    @property
    def whole_fleet(self):
        """Every tenant of the source (a shard is its share of the whole)."""
        return not (self.tenants or self.exclude_tenants
                    or self.retry_failed)


class NullProgress:
    """The progress interface, doing nothing."""

    def planned(self, branch, pending):
        pass

    def __call__(self, branch, result):
        pass


def run(migrator, operation, target, options=None, before_tenants=None):
    """Plan and execute ``operation`` (upgrade, downgrade or stamp) to
    ``target`` with :class:`RunOptions`; return a
    :class:`~.report.RunReport`. Failed tenants are in the report, not
    raised.

    A fleet's migrator runs each database's part (:mod:`.fleetrun`), which
    returns a :class:`~.fleetrun.FleetReport`; ``before_tenants`` is how
    it has every part wait for the control database's shared branch."""
    if migrator.runs_fleet:
        from .fleetrun import run_fleet
        return run_fleet(migrator, operation, target, options)
    options = (options or RunOptions()).resolve(migrator.settings)
    start, target = _split_range(target, options.sql)
    destinations = resolve_destinations(migrator.script, operation, target)
    _check_tenant_options(options, destinations)
    if options.sql:
        from .engine.offline import render_run
        return render_run(migrator, operation, destinations, start, options)
    if options.shard:
        destinations = _shard_destinations(migrator, operation, destinations)
    if any(branch == TENANT for branch, _ in destinations):
        check_tenants_early(migrator, options.tenants,
                            options.exclude_tenants, options.canaries)
    check_citus(migrator, operation, destinations, options)
    with RunLock(migrator, operation, wait=options.lock_wait,
                 shard=options.shard) as lock:
        return Run(migrator, operation, target, options, lock,
                   before_tenants).execute(destinations)


class Run:
    """One locked run (see the module docstring)."""

    def __init__(self, migrator, operation, target, options, lock,
                 before_tenants=None):
        self.before_tenants = before_tenants
        self.migrator = migrator
        self.operation = operation
        self.target = target
        self.options = options
        self.lock = lock
        self.record = None
        self.spares_first = None
        self.report = RunReport(operation, config_uri=options.config_uri)

    def execute(self, destinations):
        migrator, options = self.migrator, self.options
        with self.lock.using() as connection:
            reconcile(connection, migrator.shared_schema,
                      self._unfinished_of)
            if options.retry_failed:
                names = retry_tenants(connection, migrator.shared_schema,
                                      self.operation)
                if not names:
                    return self._nothing_to_retry(names)
                self.options = options = replace(options, tenants=tuple(
                    names))
        if self.operation == STAMP and not options.yes:
            self._confirm_stamp(destinations)
        with self.lock.using() as connection:
            self.record = RunRecord.start(
                connection, migrator.shared_schema, self.operation,
                self.target, lock_backend=self.lock.backend,
                selection=self._selection(), destinations=self._targets(
                    destinations))
        self.lock.on_beat = self.record.beat
        try:
            self._branches(destinations)
        except BaseException as exc:
            problem = self.record.abort(
                f"{type(exc).__name__}: {exc}", self._fresh_connection,
                self._lock_connection())
            if problem:
                self.report.warnings.append(problem)
            raise
        finally:
            self.lock.on_beat = None
        if self.lock.lost and not self.report.aborted:
            self.report.aborted = self.lock.lost
        self.report.run_id = self.record.id
        self._refill_spares()
        self.report.finish()
        problem = self.record.finish(self.report, self._fresh_connection,
                                     self._lock_connection())
        if problem:
            self.report.warnings.append(problem)
        return self.report

    def _nothing_to_retry(self, names):
        branch = BranchReport(TENANT, self.operation, self.target or "")
        branch.note = ("no earlier run recorded" if names is None else
                       "nothing to retry: the last run left no tenant "
                       "failed or unfinished")
        self.report.branches.append(branch)
        return self.report.finish()

    # What the run record keeps of the selection and the targets.

    def _selection(self):
        options = self.options
        selection = {"tenants": list(options.tenants) or None,
                     "exclude": list(options.exclude_tenants),
                     "shard": list(options.shard) if options.shard else None}
        if options.fleet_run:
            selection["fleet_run"] = options.fleet_run
        return selection

    def _targets(self, destinations):
        script = self.migrator.script
        targets = {}
        for branch, destination in destinations:
            if is_relative(destination):
                targets[branch] = None
            else:
                targets[branch] = sorted(
                    r.revision for r in script.get_revisions(destination)
                    if r is not None)
        return targets

    def _unfinished_of(self, selection, destinations):
        """The tenants of a dead run's selection not at its target."""
        return unfinished_tenants(self.migrator, selection, destinations)

    def _lock_connection(self):
        return None if self.lock.lost else self.lock.connection

    def _fresh_connection(self):
        return self.migrator.run_connection("record")

    # Branches.

    def _progress(self, branch, result):
        self.record.add(branch, result)
        self.options.progress(branch, result)

    def _stop_reason(self):
        return self.lock.lost

    def _branches(self, destinations):
        for branch, destination in destinations:
            if branch == SHARED:
                report, aborted = self._shared(destination)
            else:
                if self.before_tenants is not None:
                    self.before_tenants()
                report, aborted = self._tenants(destination)
            self.report.branches.append(report)
            if aborted:
                self.report.aborted = aborted
                return
            if report.failures and (branch == SHARED
                                    or self.options.fail_fast):
                if branch == SHARED and len(destinations) > 1:
                    self.report.aborted = (
                        "the shared schema failed, so no tenant was "
                        "migrated (tenant revisions may depend on it)")
                return

    def _execute(self, plan, planner):
        options = self.options
        options.progress.planned(plan.branch, len(plan.pending))
        return execute_branch(
            self.migrator, plan, planner, self.migrator.programs,
            workers=options.workers if plan.branch == TENANT else 1,
            fail_fast=options.fail_fast,
            create_missing=options.create_missing and plan.branch == TENANT,
            progress=self._progress, should_stop=self._stop_reason,
            closing=self._grants if plan.branch == TENANT else None)

    def _grants(self, schema):
        """Before a tenant's transaction commits: what its revisions made
        granted to its role, or the app role (:mod:`.isolation`)."""
        settings = self.migrator.settings
        return (grant_tenant_sql(settings, schema)
                if grants_to_app(settings) else None)

    def _plan(self, planner, branch, schemas):
        with self.migrator.connect(self.migrator.run_engine) as connection:
            versions = self.migrator.read_versions(
                connection, schemas, workers=self.options.workers)
        return plan_branch(planner, branch, versions, schemas)

    def _shared(self, destination):
        planner = StepPlanner(self.migrator.script, self.operation,
                              destination)
        plan = self._plan(planner, SHARED, [self.migrator.shared_schema])
        return self._execute(plan, planner)

    def _tenants(self, destination):
        """Passes over the tenants until none is new (module docstring)."""
        migrator, options = self.migrator, self.options
        planner = StepPlanner(migrator.script, self.operation, destination)
        check_before_tenants(migrator, destination, options, self.report)
        with migrator.connect(migrator.run_engine) as connection:
            install_functions(connection, migrator.settings)
        self._record_tenant_head(destination)
        self._fill_spares_first(destination)
        report = BranchReport(TENANT, self.operation, destination)
        seen = set()
        last_pass = not options.whole_fleet
        passes = 0
        while True:
            with contextlib.ExitStack() as stack:
                if last_pass and options.whole_fleet:
                    problem = self._hold_provisioning_lock(stack)
                    if problem:
                        return report, problem
                selection = self._select()
                new = [s for s in selection.schemas if s not in seen]
                for name, reason in selection.rejected.items():
                    if name not in seen:
                        seen.add(name)
                        report.results.append(
                            SchemaResult(name, REJECTED, error=reason))
                seen.update(new)
                if new:
                    plan = self._plan(planner, TENANT, new)
                    part, aborted = self._execute_pass(plan, planner,
                                                       first=passes == 0)
                    self._forget_moved(part)
                    report.add(part)
                    if aborted or self.report.halted:
                        return report, aborted
                    if part.failures and options.fail_fast:
                        return report, None
            if last_pass:
                return report, None
            passes += 1
            # Nothing new, or enough free passes: the next is the last.
            last_pass = not new or passes >= FREE_PASSES

    def _forget_moved(self, part):
        """A tenant a move took to another database of the fleet while
        the pass went (:mod:`.moving`) failed here for want of its schema:
        it is not this database's any more. The fleet run looks for it
        where it went once every database is done (a last pass there, or
        the move itself, may have brought it to the target)."""
        failed = [result.schema for result in part.failures]
        moved = self.migrator.moved_away(failed) if failed else {}
        if moved:
            part.results = [r for r in part.results
                            if r.schema not in moved]
            part.moved.update(moved)
            part.warnings.extend(
                f"{schema} was moved to database {database} during the "
                "run, so it was not migrated here ('tenant-migrate <ini> "
                "current' shows it there)"
                for schema, database in moved.items())

    def _execute_pass(self, plan, planner, first):
        """An upgrade with waves runs its first pass in waves."""
        if first and self.operation == UPGRADE and self.options.waves:
            return self._execute_waves(plan, planner)
        return self._execute(plan, planner)

    def _execute_waves(self, plan, planner):
        """The plan's pending tenants wave by wave (:mod:`.waves`), the
        others with the first; after each wave but the last its gate may
        halt the run (``self.report.halted``)."""
        migrator, options = self.migrator, self.options
        if not plan.pending:
            return self._execute(plan, planner)
        with migrator.connect(migrator.run_engine) as connection:
            ordered = order_tenants(
                connection, [p.schema for p in plan.pending],
                migrator.settings.wave_order, options.canaries)
        waves = [Wave(index, schemas) for index, schemas in enumerate(
            split_waves(options.waves, ordered), 1)]
        self.report.waves = waves
        schema_plans = {p.schema: p for p in plan.pending}
        gate = Gate(migrator, options.confirm_wave)
        report = BranchReport(TENANT, plan.operation, plan.destination)
        others = replace(plan, pending=[])
        nothing_else = replace(plan, pending=[], current=[], ahead=[],
                               unplannable={}, unreadable={})
        for wave in waves:
            wave_plan = replace(others if wave is waves[0] else nothing_else,
                                pending=[schema_plans[name]
                                         for name in wave.schemas])
            part, aborted = self._execute(wave_plan, planner)
            report.add(part)
            in_wave = set(wave.schemas)
            wave.results = [r for r in part.results if r.schema in in_wave]
            wave.status = "done"
            if aborted or (part.failures and options.fail_fast):
                return report, aborted
            if wave is waves[-1]:
                break
            reason = gate.verdict(wave, waves[0])
            if reason:
                wave.status = "halted"
                self.report.halted = (f"halted after wave {wave.index} of "
                                      f"{len(waves)}: {reason}")
                break
        return report, None

    def _select(self):
        migrator, options = self.migrator, self.options
        with migrator.connect(migrator.run_engine) as connection:
            discovered = migrator.discover_tenants(connection)
        only = options.tenants
        if options.retry_failed:
            # Tenants dropped since the run that left them are not retried.
            known = set(discovered)
            only = tuple(name for name in only if name in known)
            if not only:
                return TenantSelection(schemas=[])
        return select_tenants(discovered, migrator.shared_schema,
                              only=only,
                              exclude=options.exclude_tenants,
                              shard=options.shard)

    def _hold_provisioning_lock(self, stack):
        """Wait until no tenant is being created, and keep it so until the
        last pass is done. Returns a problem, or ``None``."""
        key = lock_key(self.migrator.shared_schema)
        # In a fleet: the control database's, then this database's.
        for engine in self.migrator.provisioning_lock_engines():
            connection = stack.enter_context(self.migrator.connect(engine))
            connection = connection.execution_options(
                isolation_level="AUTOCOMMIT")
            connection.exec_driver_sql(
                f"SET lock_timeout = {PROVISIONING_WAIT * 1000}")
            try:
                connection.exec_driver_sql(
                    f"SELECT pg_advisory_lock({PROVISIONING_LOCK}, {key})")
            except DBAPIError as exc:
                if sqlstate(exc) != LOCK_NOT_AVAILABLE:
                    raise
                return (f"transactions creating tenants did not finish "
                        f"within {PROVISIONING_WAIT}s, so this run cannot "
                        "tell that every tenant is at its target; re-run")
        # Closing the connections lets go of the locks.
        return None

    def _record_tenant_head(self, destination):
        """Full runs record the tenant head they migrate to, for app code
        older than the database (:mod:`.tenanthead`)."""
        if (self.operation == STAMP or is_relative(destination)
                or not self.options.whole_fleet):
            return
        heads = self._targets([(TENANT, destination)])[TENANT]
        with self.lock.using() as connection:
            record_tenant_head(connection, self.migrator.shared_schema,
                               self.migrator.script, heads)

    def _spares_wanted(self, destination):
        script = self.migrator.script
        return (self.operation == UPGRADE and self.options.whole_fleet
                and not self.options.shard
                and self.migrator.settings.spare_schemas > 0
                and self._targets([(TENANT, destination)])[TENANT]
                == list(branch_heads(script, TENANT)))

    def _fill_spares_first(self, destination):
        """Spares at the new head before the tenants are migrated: a
        sign-up during the run (from old code too) takes one."""
        if self._spares_wanted(destination):
            self.spares_first = self._fill_spares()

    def _refill_spares(self):
        """The deploy is where the tenant head moves: spares made at the
        old head are replaced here, under the same lock."""
        destinations = [b for b in self.report.branches
                        if b.branch == TENANT]
        if (self.report.ok and destinations
                and self._spares_wanted(destinations[0].destination)):
            self.report.spares = self._fill_spares().after(self.spares_first)

    def _fill_spares(self):
        from . import spares
        try:
            return spares.fill_spares(self.migrator, locked=True)
        except Exception as exc:  # the upgrade itself goes on
            return spares.SpareReport(error=" ".join(str(exc).split()))

    def _confirm_stamp(self, destinations):
        """``stamp`` that moves version tables away from a revision they
        hold needs ``yes`` (their tables stay as they are): checked for
        every branch before anything is stamped."""
        moved = self.stamp_moves(destinations)
        if moved:
            raise stamp_refused(moved)

    def stamp_moves(self, destinations):
        """The schemas stamping to ``destinations`` would set away from a
        revision they hold."""
        moved = []
        for branch, destination in destinations:
            planner = StepPlanner(self.migrator.script, STAMP, destination)
            schemas = ([self.migrator.shared_schema] if branch == SHARED
                       else self._select().schemas)
            plan = self._plan(planner, branch, schemas)
            moved.extend(p.schema for p in plan.pending if p.from_heads)
        return moved


def stamp_refused(moved):
    """The refusal of a ``stamp`` that would move ``moved`` without
    ``--yes``."""
    shown = ", ".join(moved[:5]) + (" ..." if len(moved) > 5 else "")
    return ConfirmationNeeded(
        f"stamp would set the version of {len(moved)} schema(s) "
        f"({shown}) away from the revision they are at, without "
        "changing their tables; nothing was changed. Pass --yes if "
        "that is what you want")


def stamp_moves(migrator, target, options):
    """What :meth:`Run.stamp_moves` says for a ``stamp`` to ``target``
    with ``options`` on ``migrator`` (none with ``yes`` or ``sql``),
    under the run lock the stamp itself would take: a fleet asks every
    database before it stamps any. Nothing is written."""
    options = options.resolve(migrator.settings)
    if options.yes or options.sql:
        return []
    _, target = _split_range(target, options.sql)
    destinations = resolve_destinations(migrator.script, STAMP, target)
    if options.shard:
        destinations = _shard_destinations(migrator, STAMP, destinations)
    with RunLock(migrator, STAMP, wait=options.lock_wait,
                 shard=options.shard) as lock:
        if options.retry_failed:
            with lock.using() as connection:
                names = retry_tenants(connection, migrator.shared_schema,
                                      STAMP)
            if not names:
                return []
            options = replace(options, tenants=tuple(names))
        return Run(migrator, STAMP, target, options, lock).stamp_moves(
            destinations)


class ConfirmationNeeded(UsageError):
    """A command would do something that cannot be taken back; it runs
    only when confirmed (``--yes``). Nothing was changed."""


def _split_range(target, sql):
    if target and ":" in target:
        if not sql:
            raise UsageError(
                f"range {target!r} is only for --sql (offline) mode")
        start, _, end = target.partition(":")
        return start or None, end
    return None, target


def _check_tenant_options(options, destinations):
    if options.selects_tenants and not any(
            branch == TENANT for branch, _ in destinations):
        raise UsageError(
            "--tenant, --exclude-tenant, --tenants-from, --shard and "
            "--retry-failed select tenants, but this target moves the "
            "shared schema only; nothing was run")


def _shard_destinations(migrator, operation, destinations):
    """A shard runs the tenant branch only, and only once the shared schema
    is where the run needs it."""
    tenant_destinations = [d for d in destinations if d[0] == TENANT]
    if not tenant_destinations:
        raise UsageError("--shard splits tenants: give a tenant target "
                         "(e.g. 'tenant@head'); run the shared branch once, "
                         "without --shard")
    if operation == UPGRADE and any(d[0] == SHARED for d in destinations):
        with migrator.connect() as connection:
            version = migrator.read_versions(
                connection, [migrator.shared_schema], workers=1)[
                migrator.shared_schema]
        if set(version.heads) != set(branch_heads(migrator.script, SHARED)):
            raise UsageError(
                "the shared schema is behind its head: run 'tenant-migrate "
                "<ini> upgrade shared' once, then the shards")
    return tenant_destinations


def check_tenants_early(migrator, tenants, exclude_tenants, canaries=()):
    """Refuse a tenant source that cannot work, and unknown ``--tenant``
    and ``--canary`` names, before the shared branch runs: nothing is
    half-done.

    The tenant source may only work once the shared branch has created its
    table; then the check happens after the shared branch, as usual.
    """
    with migrator.connect() as connection:
        try:
            discovered = migrator.discover_tenants(connection)
        except TenantSourceUnavailable:
            return
    select_tenants(discovered, migrator.shared_schema, only=tenants,
                   exclude=exclude_tenants)
    unknown = [name for name in canaries if name not in set(discovered)]
    if unknown:
        raise UsageError("--canary names unknown tenant(s): "
                         + ", ".join(unknown))


def unfinished_tenants(migrator, selection, destinations):
    """The tenants a run selected (``selection`` as recorded) that are not
    at its tenant target; ``None`` when that cannot be told."""
    target = (destinations or {}).get(TENANT)
    if target is None or selection is None:
        return None if target is None else []
    with migrator.connect(migrator.run_engine) as connection:
        discovered = migrator.discover_tenants(connection)
        only = [n for n in selection.get("tenants") or () if n in discovered]
        shard = selection.get("shard")
        chosen = select_tenants(
            discovered, migrator.shared_schema, only=only,
            exclude=selection.get("exclude") or (),
            shard=tuple(shard) if shard else None)
        if selection.get("tenants") and not only:
            return []
        versions = migrator.read_versions(connection, chosen.schemas)
    return [name for name in chosen.schemas
            if set(versions[name].heads) != set(target)]


