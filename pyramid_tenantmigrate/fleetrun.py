"""A run over every database of a fleet (:mod:`.fleet`), and its report.

:func:`run_fleet` is what :func:`.run.run` does with a fleet's migrator.
Each database's part is an ordinary run (:class:`.run.Run`) of that
database's migrator, in a thread of its own: its run lock, its run record,
its shared branch first, its tenants in per-tenant transactions, its last
pass under the provisioning lock. So everything a run promises on one
database holds on each. What the fleet adds:

- **one plan, captured once**: the members share the captured programs;
  capture runs on the control database, so every part waits for the
  control database's shared branch before its tenants;
- **a worker budget**: ``workers`` per database, at most
  ``total_workers`` in all;
- **one report** (:class:`FleetReport`), grouped by database. A database
  that cannot be reached, whose lock another run holds, or whose shared
  schema is behind fails its own tenants, with the reason; the others go
  on. A tenant the source lists that no database holds is reported too.
"""
import sys
import threading
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from sqlalchemy.exc import DBAPIError

from .errors import (
    ConfigurationError,
    TenantMigrateError,
    TenantSourceUnavailable,
    UsageError,
    describe_error,
)
from .plan import (
    SHARED,
    STAMP,
    UPGRADE,
    StepPlanner,
    branch_heads,
    resolve_destinations,
)
from .report import FAILED, SchemaResult
from .settings import shown_url


def run_fleet(migrator, operation, target, options):
    """Run ``operation`` to ``target`` on every selected database of
    ``migrator``'s fleet; return a :class:`FleetReport`."""
    from .run import RunOptions, _split_range
    fleet = migrator.fleet
    options = options or RunOptions()
    names = selected_databases(fleet, options.databases)
    _, end = _split_range(target, options.sql)
    destinations = resolve_destinations(migrator.script, operation, end)
    fleet.ensure_table()
    try:
        where, unplaced = fleet.all_tenants()
    except TenantSourceUnavailable:
        # A source reading a shared table not made yet: each database's
        # run reads it after its shared branch.
        where, unplaced = {}, {}
    run = FleetRun(fleet, operation, target, options, destinations, where,
                   unplaced)
    report = FleetReport(operation, config_uri=options.config_uri)
    if options.whole_fleet and not options.databases:
        report.unplaced = unplaced
    report.parts = [
        DatabasePart(name, shown_url_of(fleet, name), tenants=sorted(
            s for s, d in where.items() if d == name)) for name in names]
    report.fleet_run = run.id
    run.execute(report.parts,
                sequential=bool(options.sql) or operation == STAMP)
    return report.finish()


class FleetRun:
    """Each database's part of one fleet run (module docstring)."""

    def __init__(self, fleet, operation, target, options, destinations,
                 where, unplaced):
        self.fleet = fleet
        self.operation = operation
        self.target = target
        self.destinations = destinations
        self.where = where
        self.tenants = _placed(options.tenants, where, unplaced, "--tenant")
        self.canaries = _placed(options.canaries, where, unplaced,
                                "--canary")
        self.options = options
        self.progress = (_Serialised(options.progress) if options.progress
                         else None)
        self.control_shared = threading.Event()
        #: Shared by the run records of its databases.
        self.id = uuid.uuid4().hex[:12]

    def execute(self, parts, sequential):
        """Run every part: side by side, or (``--sql``: a script in
        order; ``stamp``: a refusal before anything is stamped) one after
        the other."""
        self.workers = _workers(self.fleet.settings, self.options.workers,
                                len(parts))
        self._prepare(parts, sequential)
        if sequential:
            for part in parts:
                self.run_part(part)
                if part.error is not None:
                    raise part.error
        else:
            threads = [threading.Thread(target=self.run_part, args=(part,),
                                        name=f"tenant-migrate {part.name}")
                       for part in parts]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        errors = [part.error for part in parts if part.error is not None]
        if errors and not any(part.report for part in parts):
            raise errors[0]
        for part in parts:
            if part.error is not None:
                part.problem = str(part.error)
        self._settle_moved(parts)

    def _settle_moved(self, parts):
        """A tenant a move took to another database while a part ran was
        let go by that part (:meth:`.run.Run._forget_moved`). Every part
        done, it must be at the target where it is now (the last pass
        there, or the move's catch-up, may have brought it): if not, it
        fails in the part it left, saying where it is and what to run."""
        for part in parts:
            for branch in part.report.branches if part.report else ():
                by_database = {}
                for schema, database in branch.moved.items():
                    by_database.setdefault(database, []).append(schema)
                for database, schemas in by_database.items():
                    branch.results.extend(_behind_where_moved(
                        self.fleet, database, branch, schemas))

    def part_options(self, name):
        def here(names):
            return tuple(n for n in names if self.where.get(n) == name)
        return replace(self.options, databases=(), fleet_run=self.id,
                       tenants=here(self.tenants),
                       canaries=here(self.canaries), workers=self.workers,
                       progress=self.progress)

    def _prepare(self, parts, sequential):
        control = self.fleet.control
        runs_control = control in [part.name for part in parts] and not (
            self.tenants and not self.part_options(control).tenants)
        if not runs_control or sequential:
            # One after the other, nothing runs beside the control
            # database's shared branch: no part waits for it.
            self.control_shared.set()
        if not runs_control:
            self._check_control_shared()
        if self.options.retry_failed:
            self._check_last_fleet_run(parts)
        if self.operation == STAMP:
            self._confirm_stamp(parts)

    def _confirm_stamp(self, parts):
        """A ``stamp`` needing ``--yes`` on any database is refused before
        any database is stamped, naming the schemas of every database. A
        database that cannot be asked is left to its part, which reports
        it and stamps nothing there."""
        from .run import stamp_moves, stamp_refused
        moved = []
        for part in parts:
            options = self.part_options(part.name)
            if part.full_retry:
                options = replace(options, retry_failed=False)
            if self.tenants and not options.tenants:
                continue
            try:
                moved.extend(f"{part.name}:{schema}" for schema in stamp_moves(
                    self.fleet.database(part.name), self.target, options))
            except (UsageError, ConfigurationError):
                raise
            except Exception:  # unreachable, locked: its part says so
                continue
        if moved:
            raise stamp_refused(moved)

    def _check_control_shared(self):
        """Revisions are captured on the control database: when its part
        may not run, its shared schema must already be at its head."""
        control = self.fleet.database(self.fleet.control)
        if self.operation != UPGRADE or not any(
                branch != SHARED for branch, _ in self.destinations):
            return
        problem = _shared_behind(control, UPGRADE, [
            (branch, d) for branch, d in self.destinations
            if branch != SHARED])
        if problem is not None:
            raise UsageError(
                f"revisions are captured on the control database "
                f"({self.fleet.control}), which this run leaves out, and its "
                f"shared schema is behind its head: run 'tenant-migrate "
                f"<ini> upgrade shared --database {self.fleet.control}' "
                "first; nothing was run")

    def _check_last_fleet_run(self, parts):
        """``--retry-failed`` takes each database's last run; a database
        the last fleet run did not reach (unreachable, locked, added
        since) has nothing recorded of it, so it is run in full instead
        of being found to have nothing to retry."""
        from .runlog import recent_runs
        last = {}
        for part in parts:
            member = self.fleet.database(part.name)
            try:
                with member.connect(member.run_engine) as connection:
                    rows = [row for row in recent_runs(
                        connection, member.shared_schema, limit=50)
                        if row.command == self.operation
                        and row.status != "running"]
            except (TenantMigrateError, DBAPIError):
                continue  # its part reports it
            last[part.name] = rows[0] if rows else None
        runs = [row for row in last.values() if row is not None]
        newest = max(runs, key=lambda row: row.started).fleet_run if (
            runs) else None
        for part in parts:
            row = last.get(part.name, False)
            if row is not False and (row is None or row.fleet_run != newest
                                     or newest is None):
                part.full_retry = True

    def run_part(self, part):
        is_control = part.name == self.fleet.control
        try:
            member = self.fleet.database(part.name)
            options = self.part_options(part.name)
            if part.full_retry:
                options = replace(options, retry_failed=False)
                part.note = ("the last fleet run did not reach this "
                             "database: all its tenants were run")
            if self.tenants and not options.tenants:
                part.skipped = "none of the selected tenants is here"
                return
            part.problem = _shared_behind(member, self.operation,
                                          self.destinations)
            if part.problem is None and self.options.sql:
                (self.options.output or sys.stdout).write(
                    f"\n-- database {part.name} ({part.url})\n")
            if part.problem is None:
                part.report = _run_member(
                    member, self.operation, self.target, options,
                    self.control_shared.set if is_control
                    else self.control_shared.wait)
        except (UsageError, ConfigurationError) as exc:
            part.error = exc
        except (TenantMigrateError, DBAPIError) as exc:
            part.problem = " ".join(str(exc).split())
        except Exception as exc:  # reported, never a hung fleet
            part.problem = f"{type(exc).__name__}: {exc}"
        finally:
            if is_control:
                self.control_shared.set()


def _behind_where_moved(fleet, database, branch, schemas):
    """Failed results for those of ``schemas`` (moved to ``database``
    during ``branch``'s run) not at the branch's destination there."""
    try:
        member = fleet.database(database)
        with member.connect() as connection:
            versions = member.read_versions(connection, schemas, workers=1)
    except (TenantMigrateError, DBAPIError) as exc:
        return [SchemaResult(schema, FAILED, error=(
            f"moved to database {database} during the run; its revision "
            f"there could not be read: {describe_error(exc)}"))
            for schema in schemas]
    planner = StepPlanner(member.script, branch.operation,
                          branch.destination)
    behind = []
    for schema in schemas:
        version = versions[schema]
        try:
            at_target = not planner.steps_for(version.heads)
        except Exception:  # a revision the migrations do not have
            at_target = False
        if version.exists and version.problem is None and at_target:
            continue
        behind.append(SchemaResult(
            schema, FAILED, from_heads=version.heads, error=(
                f"moved to database {database} during the run, before it "
                f"was migrated: at {', '.join(version.heads) or 'base'} "
                f"there; run the command again with --tenant {schema}")))
    return behind


def _run_member(member, operation, target, options, before_tenants):
    from .run import run
    return run(member, operation, target, options,
               before_tenants=before_tenants)


def selected_databases(fleet, databases):
    """``--database`` names checked, in the fleet's order (all without)."""
    for name in databases or ():
        fleet.database(name)  # an unknown name is a UsageError
    return [name for name in fleet.names
            if not databases or name in databases]


def shown_url_of(fleet, name):
    from .migrator import engine_url
    try:
        return shown_url(engine_url(fleet.urls[name]))
    except Exception:
        return name


def _placed(names, where, unplaced, flag):
    """``--tenant``/``--canary`` names must be tenants of the fleet."""
    unknown = [name for name in names if name not in where]
    if unknown:
        reasons = [f"{name} ({unplaced[name]})" if name in unplaced
                   else name for name in unknown]
        raise UsageError(
            f"{flag} names unknown tenant(s): " + ", ".join(reasons)
            + "; see 'tenant-migrate <ini> current'")
    return tuple(names)


def _workers(settings, asked, databases):
    """Connections per database: ``workers``, within ``total_workers``."""
    per_database = asked or settings.workers
    if settings.total_workers:
        per_database = min(per_database,
                           max(1, settings.total_workers // databases))
    return per_database


def _shared_behind(member, operation, destinations):
    """An upgrade of tenants alone needs the database's shared schema at
    its head (tenant tables refer to shared ones on their own server):
    the problem, or ``None``."""
    if operation != UPGRADE or any(b == SHARED for b, _ in destinations):
        return None
    heads = set(branch_heads(member.script, SHARED))
    if not heads:
        return None
    with member.connect(member.run_engine) as connection:
        version = member.read_versions(
            connection, [member.shared_schema], workers=1)[
            member.shared_schema]
    if set(version.heads) != heads:
        at = ", ".join(version.heads) or "base"
        return (f"the shared schema is at {at}, behind its head "
                f"{', '.join(sorted(heads))}: run 'tenant-migrate <ini> "
                f"upgrade shared --database {member.database_name}' first; "
                "no tenant of this database was migrated")
    return None


class _Serialised:
    """A run's progress callbacks, called from one database's thread at a
    time."""

    def __init__(self, progress):
        self._progress = progress
        self._lock = threading.Lock()

    def planned(self, branch, pending):
        with self._lock:
            self._progress.planned(branch, pending)

    def __call__(self, branch, result):
        with self._lock:
            self._progress(branch, result)


@dataclass
class DatabasePart:
    """One database's part of a fleet run."""

    name: str
    url: str
    #: The tenants placed on it when the run began.
    tenants: list = field(default_factory=list)
    #: Its :class:`~.report.RunReport`, when it ran.
    report: object = None
    #: Why it did not run (unreachable, locked, shared schema behind).
    problem: str = None
    #: Why it was left out on purpose (no selected tenant there).
    skipped: str = None
    #: ``--retry-failed`` found no record of the last fleet run here.
    full_retry: bool = False
    note: str = None
    error: Exception = field(default=None, repr=False)

    @property
    def ok(self):
        if self.skipped:
            return True
        return self.problem is None and self.report is not None and (
            self.report.ok)

    def to_dict(self):
        return {"database": self.name, "url": self.url, "ok": self.ok,
                "problem": self.problem, "skipped": self.skipped,
                "note": self.note,
                "tenants": len(self.tenants),
                "report": self.report.to_dict() if self.report else None}

    def render_text(self):
        head = f"database {self.name} ({self.url})"
        if self.skipped:
            return f"{head}: skipped, {self.skipped}"
        if self.problem is not None:
            if not self.tenants:
                return (f"{head}: FAILED, {self.problem}\n"
                        "  none of its tenants was migrated")
            return (f"{head}: FAILED, {self.problem}\n"
                    f"  its {len(self.tenants)} tenant(s) were not "
                    "migrated: " + ", ".join(self.tenants[:10])
                    + (" ..." if len(self.tenants) > 10 else ""))
        body = self.report.render_text()
        if self.note:
            body = f"note: {self.note}\n" + body
        return head + ":\n" + "\n".join(
            "  " + line for line in body.splitlines())


@dataclass
class FleetReport:
    """What a fleet run did, database by database."""

    command: str
    parts: list = field(default_factory=list)
    #: ``{schema: reason}``: tenants the source lists that no database
    #: of the fleet holds (they were not migrated).
    unplaced: dict = field(default_factory=dict)
    config_uri: str = None
    started: datetime = field(
        default_factory=lambda: datetime.now(timezone.utc))
    finished: datetime = None
    #: The id its databases' run records share (``runs`` groups them).
    fleet_run: str = None

    @property
    def ok(self):
        return not self.unplaced and all(part.ok for part in self.parts)

    @property
    def reports(self):
        return [part.report for part in self.parts if part.report]

    @property
    def branches(self):
        return [b for report in self.reports for b in report.branches]

    @property
    def failures(self):
        return [f for report in self.reports for f in report.failures]

    def finish(self):
        self.finished = datetime.now(timezone.utc)
        return self

    def to_dict(self):
        return {"command": self.command, "ok": self.ok, "fleet": True,
                "fleet_run": self.fleet_run,
                "started": self.started.isoformat(),
                "finished": (self.finished.isoformat() if self.finished
                             else None),
                "databases": [part.to_dict() for part in self.parts],
                "unplaced": self.unplaced}

    def failure_summary(self):
        lines = []
        for part in self.parts:
            if part.problem is not None:
                lines.append(f"database {part.name}: {part.problem}")
            elif part.report is not None and not part.report.ok:
                lines.append(f"database {part.name}: "
                             + part.report.failure_summary())
        if self.unplaced:
            lines.append(_unplaced_line(self.unplaced))
        return "\n".join(lines)

    def render_text(self):
        lines = [part.render_text() for part in self.parts]
        if self.unplaced:
            lines.append(_unplaced_line(self.unplaced))
        failed = [p.name for p in self.parts if not p.ok]
        if failed:
            lines.append(
                f"{len(failed)} of {len(self.parts)} database(s) did not "
                f"finish: {', '.join(failed)}. Fix the cause, then run the "
                "same command again (or --database NAME): the others are "
                "done and will be left alone")
        return "\n".join(lines)


def _unplaced_line(unplaced):
    shown = [f"{schema} ({reason})" for schema, reason in
             list(unplaced.items())[:5]]
    return (f"{len(unplaced)} tenant(s) not migrated, on no database of the "
            f"fleet: " + "; ".join(shown)
            + (" ..." if len(unplaced) > 5 else ""))


def fleet_status(migrator, tenants=(), exclude_tenants=(), databases=()):
    """``current`` over a fleet: each database's
    :class:`~.report.StatusReport` in a :class:`FleetStatus`."""
    from . import commands
    where, unplaced = migrator.fleet.all_tenants()
    _placed(tenants, where, unplaced, "--tenant")

    def current(member):
        mine = tuple(t for t in tenants if where.get(t) == (
            member.database_name))
        if tenants and not mine:
            return None
        return commands.current(member, tenants=mine,
                                exclude_tenants=exclude_tenants)

    return FleetStatus(each_database(migrator, current, databases).databases,
                       unplaced=unplaced if not tenants else {})


@dataclass
class DatabaseStatus:
    name: str
    url: str
    status: object = None
    problem: str = None
    skipped: str = None

    def to_dict(self):
        return {"database": self.name, "url": self.url,
                "problem": self.problem, "skipped": self.skipped,
                **(self.status.to_dict() if self.status else {})}


@dataclass
class FleetStatus:
    """What ``current`` found on each database of a fleet."""

    databases: list = field(default_factory=list)
    unplaced: dict = field(default_factory=dict)

    @property
    def branches(self):
        return [branch for entry in self.databases if entry.status
                for branch in entry.status.branches]

    @property
    def behind(self):
        """As :attr:`.StatusReport.behind`; a database that could not be
        read counts as its shared schema behind (nobody can tell)."""
        return [item for entry in self.databases if entry.status
                for item in entry.status.behind] + [
            ("shared", f"{entry.name} (unreachable)")
            for entry in self.databases if entry.problem]

    def to_dict(self):
        return {"fleet": True,
                "databases": [entry.to_dict() for entry in self.databases],
                "behind": len(self.behind), "unplaced": self.unplaced}

    def render_text(self, verbose=False):
        lines = []
        for entry in self.databases:
            head = f"database {entry.name} ({entry.url})"
            if entry.skipped:
                lines.append(f"{head}: skipped, {entry.skipped}")
            elif entry.problem:
                lines.append(f"{head}: UNREACHABLE, {entry.problem}")
            else:
                lines.append(head + ":")
                lines.extend("  " + line for line in entry.status.render_text(
                    verbose=verbose).splitlines())
        if self.unplaced:
            lines.append(_unplaced_line(self.unplaced).replace(
                "not migrated, ", ""))
        return "\n".join(lines)



def each_database(migrator, command, databases=(), **kw):
    """A read-only command (``commands.current``, ``commands.doctor``) run
    on each selected database of ``migrator``'s fleet, side by side: a
    :class:`PerDatabase` report. A command returning ``None`` had nothing
    to do there; a database that cannot be read is reported, not
    raised."""
    fleet = migrator.fleet
    report = PerDatabase([
        DatabaseStatus(name, shown_url_of(fleet, name))
        for name in selected_databases(fleet, databases)])
    errors = []

    def one(entry):
        try:
            entry.status = command(fleet.database(entry.name), **kw)
            if entry.status is None:
                entry.skipped = "none of the selected tenants is here"
        except (UsageError, ConfigurationError) as exc:
            errors.append(exc)
        except (TenantMigrateError, DBAPIError) as exc:
            entry.problem = " ".join(str(exc).split())

    threads = [threading.Thread(target=one, args=(entry,))
               for entry in report.databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return report


@dataclass
class PerDatabase:
    """A read-only command's reports, one per database of a fleet; ``ok``
    when each is and every database could be read."""

    databases: list = field(default_factory=list)

    @property
    def ok(self):
        return all(entry.skipped or (entry.problem is None
                                     and entry.status.ok)
                   for entry in self.databases)

    def to_dict(self):
        return {"fleet": True, "ok": self.ok,
                "databases": [entry.to_dict() for entry in self.databases]}

    def render_text(self, **options):
        lines = []
        for entry in self.databases:
            head = f"database {entry.name} ({entry.url})"
            if entry.problem:
                lines.append(f"{head}: FAILED, {entry.problem}")
                continue
            if entry.skipped:
                lines.append(f"{head}: skipped, {entry.skipped}")
                continue
            lines.append(head + ":")
            lines.extend("  " + line for line in entry.status.render_text(
                **options).splitlines())
        return "\n".join(lines)
