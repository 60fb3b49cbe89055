"""What a run did, per schema: the report a command prints and returns.

A :class:`RunReport` holds one :class:`BranchReport` per branch the command
touched, each with one :class:`SchemaResult` per schema. It renders as text
for people (:meth:`RunReport.render_text`) and as JSON for CI
(:meth:`RunReport.to_dict`). The commands that change nothing report the
same way: ``current`` a :class:`StatusReport`, ``doctor`` a
:class:`DriftReport`.
"""
from dataclasses import dataclass, field
from datetime import datetime, timezone

#: A schema's outcome. ``done`` and ``up-to-date`` are successes, the rest
#: make the run fail (exit 1).
DONE = "done"
UP_TO_DATE = "up-to-date"
RENDERED = "rendered"
FAILED = "failed"
NOT_RUN = "not-run"
REJECTED = "rejected"
MISSING = "missing"
#: Past an upgrade's target: nothing was done, upgrade does not go down.
AHEAD = "ahead"
#: The deploy role cannot read the schema or its version table.
UNREADABLE = "unreadable"
#: Not at the tenant head: ``run`` did not call its function there.
BEHIND = "behind"
#: The connection was lost while the schema's transaction committed, and
#: the database could not be asked how it ended.
UNKNOWN = "unknown"

SUCCESS_STATUSES = frozenset({DONE, UP_TO_DATE, RENDERED})


def _revs(heads):
    return ",".join(heads) if heads else "base"


def count_statuses(items):
    """``{status: how many of items have it}``, in order of first sight."""
    counts = {}
    for item in items:
        counts[item.status] = counts.get(item.status, 0) + 1
    return counts


@dataclass
class SchemaResult:
    """The outcome for one schema (the shared one or a tenant)."""

    schema: str
    status: str
    from_heads: tuple = ()
    to_heads: tuple = ()
    revisions: tuple = ()
    error: str = None
    failed_revision: str = None
    duration: float = 0.0
    #: Something worth knowing about a success (e.g. another process
    #: migrated the schema meanwhile).
    note: str = None
    #: ``{revision: "replay" | "alembic"}``: how each revision ran.
    paths: dict = field(default=None, repr=False)

    @property
    def ok(self):
        return self.status in SUCCESS_STATUSES

    def to_dict(self):
        document = {
            "schema": self.schema,
            "status": self.status,
            "from": list(self.from_heads),
            "to": list(self.to_heads),
            "revisions": list(self.revisions),
            "error": self.error,
            "failed_revision": self.failed_revision,
            "duration_ms": round(self.duration * 1000, 3),
        }
        if self.note:
            document["note"] = self.note
        if self.paths:
            document["paths"] = self.paths
        return document


@dataclass
class BranchReport:
    """The outcome of one branch's part of a run."""

    branch: str
    operation: str
    destination: str
    results: list = field(default_factory=list)
    note: str = None
    workers: int = 1
    #: What went wrong around the schemas (connections that could not be
    #: opened), for the report.
    warnings: list = field(default_factory=list)
    #: Tenants a move took to another database of the fleet during the
    #: run: ``{schema: database}`` (see :mod:`.fleetrun`).
    moved: dict = field(default_factory=dict)

    @property
    def failures(self):
        return [r for r in self.results if not r.ok]

    def add(self, part):
        """Take in a part of the branch run on its own (a pass, a wave)."""
        self.results.extend(part.results)
        self.warnings.extend(part.warnings)
        self.moved.update(part.moved)
        self.workers = max(self.workers, part.workers)

    def counts(self):
        """``{status: number of schemas}``."""
        return count_statuses(self.results)

    def to_dict(self):
        counts = self.counts()
        return {
            "branch": self.branch,
            "operation": self.operation,
            "destination": self.destination,
            "note": self.note,
            "workers": self.workers,
            "warnings": self.warnings,
            "counts": counts,
            "schemas": [r.to_dict() for r in self.results],
        }


@dataclass
class RunReport:
    """Everything a schema-changing command did."""

    command: str
    branches: list = field(default_factory=list)
    started: datetime = field(
        default_factory=lambda: datetime.now(timezone.utc)
    )
    finished: datetime = None
    aborted: str = None
    config_uri: str = None
    run_id: int = None
    #: A :class:`~pyramid_tenantmigrate.spares.SpareReport` when the run
    #: topped up the spare schemas.
    spares: object = None
    #: Things that went wrong around the schemas (a run record that could
    #: not be written).
    warnings: list = field(default_factory=list)
    #: Whether the command takes ``--retry-failed`` (a recorded run).
    retry_failed: bool = True
    #: The tenant branch's :class:`~pyramid_tenantmigrate.waves.Wave`\ s,
    #: when it ran in waves.
    waves: list = field(default_factory=list)
    #: ``halted after wave K of N: <reason>`` when a wave's gate stopped
    #: the run (:mod:`.waves`).
    halted: str = None

    @property
    def ok(self):
        return self.aborted is None and self.halted is None and not any(
            b.failures for b in self.branches
        )

    @property
    def failures(self):
        return [(b, r) for b in self.branches for r in b.failures]

    def finish(self):
        self.finished = datetime.now(timezone.utc)
        return self

    def to_dict(self):
        return {
            "command": self.command,
            "run_id": self.run_id,
            "ok": self.ok,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat() if self.finished else None,
            "aborted": self.aborted,
            "halted": self.halted,
            "waves": [wave.to_dict() for wave in self.waves],
            "warnings": self.warnings + [
                w for b in self.branches for w in b.warnings],
            "branches": [b.to_dict() for b in self.branches],
            "spares": self.spares.to_dict() if self.spares else None,
        }

    def _retry_hint(self, schemas):
        ini = self.config_uri or "<ini>"
        selection = " ".join(f"--tenant {name}" for name in schemas[:5])
        if len(schemas) > 5:
            selection += " ..."
        return f"tenant-migrate {ini} {self.command} {selection}".rstrip()

    def _not_started(self):
        return sum(len(w.schemas) for w in self.waves
                   if w.status == "not-started")

    def failure_summary(self):
        """A few lines naming each failed schema, its revision and error;
        schemas that failed the same way are grouped."""
        lines = []
        if self.aborted:
            lines.append(f"run stopped: {self.aborted}")
        if self.halted:
            lines.append(
                f"run {self.halted}; {self._not_started()} tenant(s) of the "
                f"later waves "
                f"were not started. Look into it, then run the same "
                f"'tenant-migrate {self.config_uri or '<ini>'} "
                f"{self.command}' again (same waves): it resumes with the "
                "tenants still pending")
        groups = {}
        for branch, result in self.failures:
            if result.status == NOT_RUN:
                continue
            key = (branch.branch, result.status, result.failed_revision,
                   result.error)
            groups.setdefault(key, []).append(result.schema)
        for (branch, status, revision, error), schemas in groups.items():
            where = f" at revision {revision}" if revision else ""
            label = "FAILED" if status == FAILED else status.upper()
            if len(schemas) == 1:
                who = f"{branch} schema {schemas[0]}"
            else:
                shown = ", ".join(schemas[:5]) + (
                    f" and {len(schemas) - 5} more" if len(schemas) > 5
                    else "")
                who = f"{len(schemas)} {branch} schemas ({shown})"
            lines.append(f"{label} {who}{where}: {error}")
        not_run = [r.schema for _, r in self.failures if r.status == NOT_RUN]
        if not_run:
            lines.append(
                f"{len(not_run)} schema(s) not attempted: "
                + ", ".join(not_run[:10])
                + (" ..." if len(not_run) > 10 else "")
            )
        failed_tenants = [
            r.schema for b, r in self.failures
            if b.branch == "tenant" and r.status in (FAILED, NOT_RUN, UNKNOWN)
        ]
        if failed_tenants:
            lines.append(
                "Each failed tenant was rolled back and is still at its "
                "previous revision, unless its error says otherwise. Fix the "
                "cause, then re-run: " + self._retry_hint(failed_tenants)
                + (f" (or: tenant-migrate {self.config_uri or '<ini>'} "
                   f"{self.command} --retry-failed)"
                   if len(failed_tenants) > 5 and self.retry_failed
                   else ""))
        return "\n".join(lines)

    def render_text(self):
        """The human summary printed by the console script."""
        lines = []
        for branch in self.branches:
            lines.append(_render_branch(branch))
        if self.halted:
            lines[-1] += (f"; {self._not_started()} not started (run "
                          "halted)")
        lines.extend(_render_wave(wave, len(self.waves))
                     for wave in self.waves)
        if self.spares is not None:
            lines.append(self.spares.render_text())
        for warning in self.warnings + [
                w for b in self.branches for w in b.warnings]:
            lines.append(f"warning: {warning}")
        if not self.ok:
            lines.append(self.failure_summary())
        return "\n".join(line for line in lines if line)


def _render_wave(wave, count):
    counts = wave.counts()
    parts = [f"{counts[s]} {s}" for s in sorted(counts)]
    median = wave.median_duration
    if median is not None:
        parts.append(f"median {median * 1000:.0f} ms per tenant")
    if wave.status != "done":
        parts.append(wave.status)
    return (f"  wave {wave.index}/{count} ({len(wave.schemas)} tenant(s)): "
            + ", ".join(parts))


def _render_branch(branch):
    if branch.note:
        return f"{branch.branch}: {branch.note}"
    if branch.branch == "shared":
        if not branch.results:
            return "shared: nothing to do"
        result = branch.results[0]
        if result.status == UP_TO_DATE:
            return (f"shared ({result.schema}): already at "
                    f"{_revs(result.from_heads)}")
        if result.status in (DONE, RENDERED):
            return (f"shared ({result.schema}): {branch.operation} "
                    f"{_revs(result.from_heads)} -> {_revs(result.to_heads)}")
        return f"shared ({result.schema}): {result.status}"
    counts = branch.counts()
    total = len(branch.results)
    parts = [f"{counts[s]} {s}" for s in (
        DONE, RENDERED, UP_TO_DATE, FAILED, UNKNOWN, UNREADABLE, AHEAD,
        BEHIND, MISSING, REJECTED, NOT_RUN) if counts.get(s)]
    to = "" if branch.operation == "run" else " to"
    return (f"tenants: {total} selected, {branch.operation}{to} "
            f"{branch.destination}: " + (", ".join(parts) or "none"))


@dataclass
class BranchStatus:
    """Where one branch stands: its head and each schema's position.

    ``schemas`` holds ``(schema, heads, behind, exists)`` tuples; ``behind``
    counts the revisions up to the head, ``None`` when it cannot be told
    (the version table names a revision the scripts do not have).
    """

    branch: str
    head: tuple
    schemas: list = field(default_factory=list)
    rejected: dict = field(default_factory=dict)
    #: Schemas whose version could not be read: the reason and the fix.
    unreadable: dict = field(default_factory=dict)
    #: Why the branch's schemas could not be listed at all.
    note: str = None

    def to_dict(self):
        return {
            "branch": self.branch,
            "head": list(self.head),
            "schemas": [
                {"schema": s, "revision": list(h), "behind": b, "exists": e}
                for s, h, b, e in self.schemas
            ],
            "rejected": self.rejected,
            "unreadable": self.unreadable,
            "note": self.note,
        }


@dataclass
class StatusReport:
    """What ``current`` found: the shared schema, then the tenants."""

    branches: list = field(default_factory=list)
    #: ``{"ready": n, "stale": m}`` spare schemas, when there are any.
    spares: dict = None

    @property
    def behind(self):
        """Schemas that are not at their branch's head (unreadable ones
        included: nobody can tell they are)."""
        return [(b.branch, s) for b in self.branches
                for s, _, behind, exists in b.schemas
                if behind or not exists] + [
            (b.branch, s) for b in self.branches for s in b.unreadable]

    def to_dict(self):
        return {"branches": [b.to_dict() for b in self.branches],
                "behind": len(self.behind), "spares": self.spares}

    def render_text(self, verbose=False):
        lines = []
        for branch in self.branches:
            if branch.branch == "shared":
                lines.extend(
                    f"shared ({schema}): {_revs(heads)}"
                    + _position(heads, branch.head, behind)
                    for schema, heads, behind, _ in branch.schemas)
            else:
                lines.extend(_render_tenants(branch, verbose))
        if self.spares is not None:
            lines.append(f"spares: {self.spares['ready']} ready at the "
                         "tenant head" + (
                             f", {self.spares['stale']} made at another "
                             "revision (fill-spares replaces them)"
                             if self.spares["stale"] else ""))
        return "\n".join(lines)


def _render_tenants(branch, verbose):
    """Tenants grouped by revision, biggest group first."""
    if branch.note:
        return [f"tenants: cannot be listed: {branch.note}"]
    count = len(branch.schemas) + len(branch.unreadable)
    lines = [f"tenants: {count} (tenant head {_revs(branch.head)})"]
    groups = {}
    for schema, heads, behind, exists in branch.schemas:
        key = (heads, behind) if exists else ("missing", None)
        groups.setdefault(key, []).append(schema)
    for (heads, behind), schemas in sorted(
            groups.items(), key=lambda kv: -len(kv[1])):
        label = ("schema missing" if heads == "missing" else
                 _revs(heads) + _position(heads, branch.head, behind))
        if verbose:
            lines.append(f"  {label}:")
            lines.extend(f"    {s}" for s in schemas)
        else:
            more = (f", ... (+{len(schemas) - 5})" if len(schemas) > 5
                    else "")
            lines.append(f"  {label}: {len(schemas)} "
                         f"({', '.join(schemas[:5])}{more})")
    lines.extend(f"  unreadable {name}: {reason}"
                 for name, reason in branch.unreadable.items())
    lines.extend(f"  rejected {name!r}: {reason}"
                 for name, reason in branch.rejected.items())
    return lines


def _position(heads, head, behind):
    if behind is None:
        return " (unknown revision, not in the scripts)"
    if behind == 0 and tuple(heads) == tuple(head):
        return " (head)"
    if behind == 0:
        return ""
    return f" (behind by {behind})"


#: ``doctor``: a tenant whose catalog is what its revision builds.
OK = "ok"
#: ``doctor``: a tenant whose catalog is not what its revision builds.
DRIFT = "drift"
#: ``doctor``: the version table names a revision the scripts lack.
UNKNOWN_REVISION = "unknown-revision"
#: ``doctor``: the tenant's revision could not be built to compare with.
UNCHECKED = "unchecked"


@dataclass
class TenantCheck:
    """What ``doctor`` found in one tenant: its ``status``, its
    ``revision`` (the version table's heads) and how many revisions it is
    ``behind`` the head, the ``differences`` from what its revision builds
    (dicts, see :func:`~pyramid_tenantmigrate.catalog.compare`), or a
    ``note`` saying why it could not be checked."""

    schema: str
    status: str
    revision: tuple = ()
    behind: int = None
    differences: list = field(default_factory=list)
    note: str = None

    def to_dict(self):
        return {"schema": self.schema, "status": self.status,
                "revision": list(self.revision), "behind": self.behind,
                "differences": self.differences, "note": self.note}


@dataclass
class DriftReport:
    """What ``doctor`` found: one :class:`TenantCheck` per selected tenant,
    and the names the tenant source gave that are not valid tenant names
    (``rejected``: name -> reason). ``ok`` when every tenant is as its
    revision builds it."""

    head: tuple
    tenants: list = field(default_factory=list)
    rejected: dict = field(default_factory=dict)

    @property
    def ok(self):
        return not self.rejected and all(
            t.status == OK for t in self.tenants)

    def counts(self):
        """``{status: number of tenants}``."""
        return count_statuses(self.tenants)

    def groups(self):
        """The tenants that are not ok, grouped by what was found: ``[(
        status, revision, behind, [schema, ...], [line, ...])]``, biggest
        group first. Drifting tenants at the same revision that differ
        alike are one group; the lines are their differences, or the
        note."""
        groups = {}
        for tenant in self.tenants:
            if tenant.status == OK:
                continue
            lines = (tuple(d["text"] for d in tenant.differences)
                     or (tenant.note or "",))
            key = (tenant.status, tenant.revision, tenant.behind, lines)
            groups.setdefault(key, []).append(tenant.schema)
        return sorted(((status, revision, behind, schemas, list(lines))
                       for (status, revision, behind, lines), schemas
                       in groups.items()),
                      key=lambda g: (-len(g[3]), g[0], g[3][0]))

    def to_dict(self):
        return {
            "ok": self.ok,
            "head": list(self.head),
            "counts": self.counts(),
            "tenants": [t.to_dict() for t in self.tenants],
            "groups": [{"status": status, "revision": list(revision),
                        "tenants": schemas, "differences": lines}
                       for status, revision, _, schemas, lines
                       in self.groups()],
            "rejected": self.rejected,
        }

    def render_text(self, verbose=False):
        """Tenants grouped by what was found, then a summary line. Up to
        5 names and 10 differences a group unless ``verbose`` (or only one
        tenant was checked)."""
        verbose = verbose or len(self.tenants) == 1
        lines = []
        for status, revision, behind, schemas, found in self.groups():
            if status in (UNREADABLE, MISSING):
                at = ""
            elif behind is None:  # a revision the scripts do not have
                at = f" at {_revs(revision)}"
            else:
                at = (f" at {_revs(revision)}"
                      + _position(revision, self.head, behind))
            count = (f"{len(schemas)} tenant"
                     + ("s" if len(schemas) > 1 else ""))
            shown = schemas if verbose else schemas[:5]
            more = "" if len(shown) == len(schemas) else (
                f", ... (+{len(schemas) - len(shown)})")
            lines.append(f"{status}: {count}{at}: {', '.join(shown)}{more}")
            listed = found if verbose else found[:10]
            lines.extend(f"  {line}" for line in listed)
            if len(listed) < len(found):
                lines.append(f"  ... and {len(found) - len(listed)} more "
                             "(--verbose, or --tenant NAME, lists them all)")
        lines.extend(f"rejected {name!r}: {reason}"
                     for name, reason in self.rejected.items())
        lines.append(self._summary())
        return "\n".join(lines)

    def _summary(self):
        if not self.tenants:
            return "tenants: none checked"
        counts = self.counts()
        parts = []
        for status in (OK, DRIFT, UNCHECKED, UNKNOWN_REVISION, UNREADABLE,
                       MISSING):
            if counts.get(status):
                parts.append(f"{counts[status]} {status}")
        behind = sum(1 for t in self.tenants if t.status == OK and t.behind)
        if behind:
            parts[0] += (f" ({behind} behind the head, each compared with "
                         "its own revision)")
        return (f"tenants: {len(self.tenants)} checked against what their "
                f"revision builds (tenant head {_revs(self.head)}): "
                + ", ".join(parts))
