"""Lock hazards of pending revisions, weighed by what the tenants hold.

The SQL comes from capture (:func:`.engine.capture.capture_steps`), the
rendering replay runs in every tenant, so what is linted is what will run.
The rules are squawk's (``squawk-cli``, a PostgreSQL migration linter);
this module adds only what squawk cannot know: how many tenants will run a
statement, the largest tenant's rows and bytes for the tables it touches
(one catalog read over all tenant schemas), which shared tables a tenant
statement locks (once per tenant), and a rough lock time per tenant.
"""
import collections
import json
import re
import shutil
import subprocess
import sysconfig
from dataclasses import asdict, dataclass, field

from . import citus
from .errors import (
    LintRefused,
    TenantMigrateError,
    TenantSourceUnavailable,
    UsageError,
)
from .plan import (
    SHARED,
    TENANT,
    UPGRADE,
    StepPlanner,
    branch_has_revisions,
    heads_after,
    resolve_destinations,
)
from .tenants import select_tenants

#: The squawk executable's name (squawk-cli's wheel installs it next to
#: the interpreter's scripts, which need not be on PATH).
SQUAWK = "squawk"

#: Rules left out of squawk's report: every tenant's revisions run in a
#: transaction of their own (rerun whole if they fail) with the
#: ``lock_timeout`` / ``statement_timeout`` settings set by this tool, so
#: asking the revision for them is noise.
EXCLUDED_RULES = ("require-timeout-settings", "require-lock-timeout",
                  "require-statement-timeout", "prefer-robust-stmts")

#: The rule this module adds: a tenant statement locking a shared table,
#: once per tenant (an error only when the lock is long, see
#: :func:`_shared_lock_finding`).
SHARED_LOCK_RULE = "tenant-locks-shared-table"

#: squawk rules whose statement reads the whole table under its lock
#: (rewrite, index build, constraint scan): these get a lock-time estimate.
SCANNING_RULES = frozenset({
    "changing-column-type", "require-concurrent-index-creation",
    "adding-foreign-key-constraint", "constraint-missing-not-valid",
    "adding-not-nullable-field", "adding-serial-primary-key-field",
    "adding-field-with-default", "disallowed-unique-constraint",
    "adding-required-field",
})

#: The throughput assumed for a lock-time estimate: 100 MB of table (heap,
#: TOAST and indexes, in the catalog's statistics) read or rewritten per
#: second.
#: A rough order of magnitude for a disk-bound rewrite; real time depends
#: on the hardware, the indexes rebuilt and what else runs.
BYTES_PER_SECOND = 100 * 1024 * 1024

#: Table names a statement touches: what it alters, indexes, references,
#: writes. Only to look up sizes and shared locks; the rules are squawk's.
_NAME = r'((?:"[^"]+"|[\w$]+)(?:\s*\.\s*(?:"[^"]+"|[\w$]+))?)'
_TOUCHED = re.compile(
    r"\b(ALTER\s+TABLE(?:\s+IF\s+EXISTS)?(?:\s+ONLY)?"
    r"|\bON(?:\s+ONLY)?|REFERENCES|UPDATE|DELETE\s+FROM|INSERT\s+INTO"
    r"|TRUNCATE(?:\s+TABLE)?|DROP\s+TABLE(?:\s+IF\s+EXISTS)?"
    r"|LOCK(?:\s+TABLE)?)\s+" + _NAME, re.I)
_ALTERED = re.compile(
    r"\s*ALTER\s+TABLE(?:\s+IF\s+EXISTS)?(?:\s+ONLY)?\s+" + _NAME, re.I)
_CREATE_TABLE = re.compile(
    r"\s*CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?(?:(?:TEMP|TEMPORARY|UNLOGGED)\s+)?"
    r"TABLE\b", re.I)
_ADD_FOREIGN_KEY = re.compile(
    r"\bADD\s+(?:CONSTRAINT\s+(?:\"[^\"]+\"|[\w$]+)\s+)?FOREIGN\s+KEY\b",
    re.I)
_REFERENCES = re.compile(r"\bREFERENCES\b", re.I)
_NOT_VALID = re.compile(r"\bNOT\s+VALID\b", re.I)
_DEFAULT = re.compile(r"\bDEFAULT\b", re.I)

#: How a tenant statement locks a shared table (see _shared_locks).
_FOREIGN_KEY, _TABLE_LOCK, _ROW_LOCKS = "foreign key", "table", "rows"

#: One read of the catalog for every tenant and shared table: rows, bytes
#: and the table's own pages as the planner's statistics have them
#: (``reltuples``; the pages of the table, its TOAST table and its
#: indexes, as of the last VACUUM or ANALYZE). Not
#: ``pg_total_relation_size``: it looks at every file of every relation,
#: seconds over 10,000 tenants.
_TABLE_STATISTICS = """
WITH index_pages AS (
    SELECT x.indrelid, sum(i.relpages)::bigint AS pages
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
    GROUP BY x.indrelid)
SELECT n.nspname, c.relname, c.reltuples::bigint,
       (c.relpages::bigint + coalesce(t.relpages, 0)
        + coalesce(p.pages, 0)) * current_setting('block_size')::bigint,
       c.relpages
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
LEFT JOIN index_pages p ON p.indrelid = c.oid
WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname = ANY(%(schemas)s)
"""


@dataclass
class Finding:
    """One hazard of one statement of one revision."""

    revision: str
    branch: str
    severity: str          # "error" or "warning"
    rule: str
    message: str
    statement: str = None
    statement_index: int = None
    help: str = None
    #: How many schemas will run it (tenants behind it; 1 for shared).
    runs_in: int = 0
    #: table -> {"rows": largest tenant's reltuples, "bytes": ...,
    #: "schema": that tenant}
    tables: dict = field(default_factory=dict)
    #: Shared tables the statement locks in each tenant's transaction.
    shared_tables_locked: list = field(default_factory=list)
    #: Seconds the largest tenant holds the lock (see BYTES_PER_SECOND):
    #: what the statement reads or rewrites under it; for
    #: ``tenant-locks-shared-table``, the shared table's lock from the
    #: statement to the tenant's commit.
    estimated_lock_seconds: float = None


@dataclass
class RevisionLint:
    revision: str
    branch: str
    runs_in: int
    #: How many statements were linted.
    statements: int = 0
    rendered: bool = True
    note: str = None
    findings: list = field(default_factory=list)


@dataclass
class LintReport:
    revisions: list = field(default_factory=list)

    @property
    def errors(self):
        return [f for r in self.revisions for f in r.findings
                if f.severity == "error"]

    @property
    def ok(self):
        return not self.errors

    def to_dict(self):
        return {"ok": self.ok, "assumed_bytes_per_second": BYTES_PER_SECOND,
                "revisions": [asdict(r) for r in self.revisions]}

    def render_text(self):
        if not self.revisions:
            return "nothing to lint: every schema is at its head"
        lines = []
        for rev in self.revisions:
            where = ("runs once in the shared schema" if rev.branch == SHARED
                     else f"runs in {rev.runs_in} tenant(s)")
            lines.append(f"{rev.revision} ({rev.branch}, {where})")
            if rev.note:
                lines.append(f"  note: {rev.note}")
            for severity in ("error", "warning"):
                for f in rev.findings:
                    if f.severity == severity:
                        lines.extend(_finding_lines(f))
            if not rev.findings:
                lines.append("  no findings")
        errors = len(self.errors)
        lines.append(f"{errors} error(s), "
                     f"{sum(len(r.findings) for r in self.revisions) - errors}"
                     " warning(s)")
        return "\n".join(lines)


def _finding_lines(f):
    lines = [f"  {f.severity}: {f.rule}: {f.message}"]
    if f.statement:
        lines.append(f"    statement {f.statement_index + 1}: "
                     + " ".join(f.statement.split())[:160])
    for table, stats in f.tables.items():
        whose = ("shared table" if stats["shared"]
                 else f"largest tenant {stats['schema']}")
        lines.append(f"    {table}: {whose} has {stats['rows']} rows, "
                     f"{stats['bytes']} bytes")
    for table in f.shared_tables_locked:
        lines.append(f"    locks shared table {table} once in each of "
                     f"{f.runs_in} tenant(s)")
    if f.estimated_lock_seconds is not None:
        lines.append(f"    estimated lock time per tenant: "
                     f"~{f.estimated_lock_seconds:.2f}s (largest tenant)")
    if f.help:
        lines.append(f"    help: {f.help}")
    return lines


def squawk_path():
    """The squawk executable, or a :class:`.UsageError` saying how to get
    it (``pip install pyramid_tenantmigrate[lint]``)."""
    path = (shutil.which(SQUAWK)
            or shutil.which(SQUAWK, path=sysconfig.get_path("scripts")))
    if path is None:
        raise UsageError(
            "lint needs squawk (a PostgreSQL migration linter): "
            "pip install 'pyramid_tenantmigrate[lint]'")
    return path


def lint(migrator, rev_range=None, target=None, tenants=(),
         exclude_tenants=(), shard=None):
    """Render the revisions still to run (or ``rev_range``, ``rev1:rev2``)
    with capture, run squawk on each, and weigh each finding by the
    tenants; return a :class:`LintReport`.

    Without a range, what ``upgrade target`` (default: to every head of
    both branches) would run in the tenants
    selected as ``upgrade`` selects them (``tenants``,
    ``exclude_tenants``, ``shard``): every path a group of tenants at one
    revision takes to the target, each revision linted once, counted for
    every tenant that runs it. Tenant revisions are rendered by the
    migrator's :class:`~.engine.program.Programs`: an ``upgrade`` after
    ``lint`` with the same migrator does not capture them again.
    """
    squawk = squawk_path()
    script = migrator.script
    shared = migrator.shared_schema
    if rev_range:
        explicit = _explicit_range(script, rev_range)
        destinations = [(explicit[0], f"{explicit[0]}@heads")]
    else:
        explicit = None
        destinations = (
            resolve_destinations(script, UPGRADE, target) if target
            else [(branch, f"{branch}@heads") for branch in (SHARED, TENANT)
                  if branch_has_revisions(script, branch)])
        if shard:
            destinations = [d for d in destinations if d[0] == TENANT]
    with migrator.connect() as connection:
        try:
            schemas = select_tenants(
                migrator.discover_tenants(connection), shared,
                only=tenants, exclude=exclude_tenants, shard=shard).schemas
        except TenantSourceUnavailable:
            # The tenants table is the shared branch's to create: there
            # are no tenants yet.
            schemas = []
        versions = migrator.read_versions(connection, [shared, *schemas])
        catalog = _Catalog(_table_statistics(connection, [shared, *schemas]),
                           shared)
    report = LintReport()
    estimates = _Estimates()
    # Base first: a revision after those it builds on.
    order = {revision.revision: index for index, revision in enumerate(
        reversed(list(script.walk_revisions())))}
    for branch, destination in destinations:
        paths, runs_in = _pending_paths(
            script, branch, destination, versions,
            [shared] if branch == SHARED else schemas)
        if explicit is not None:
            paths = [explicit[1:]]
        linted = {}
        for from_heads, steps in paths:
            new = [i for i, step in enumerate(steps)
                   if step.revision.revision not in linted]
            if not new:
                continue
            captured = _render(migrator, branch, from_heads, steps)
            path = [step.revision.revision for step in steps]
            for index in new:
                revision = path[index]
                linted[revision] = _lint_revision(
                    squawk, migrator, branch, captured[index],
                    runs_in.get(revision, 0), catalog, estimates)
                estimates.paths[revision] = path
        report.revisions.extend(sorted(
            linted.values(), key=lambda r: order.get(r.revision, 0)))
    estimates.complete(report)
    return report


def gate(migrator, target="heads", options=None):
    """What ``upgrade`` does first with ``tenantmigrate.lint_before_upgrade``:
    lint what it will run (``options``: its :class:`~.run.RunOptions`, for
    the tenants it selects) and raise :class:`~.errors.LintRefused` when
    there is an error-level finding. Returns the :class:`LintReport` (a
    fleet's: each database's tenants linted in turn, the first with an
    error refusing, or the last)."""
    if migrator.runs_fleet:
        from .fleetrun import selected_databases
        fleet = migrator.fleet
        report = None
        for name in selected_databases(fleet, getattr(options, "databases",
                                                       ())):
            where = fleet.all_tenants()[0]
            wanted = getattr(options, "tenants", ())
            mine = tuple(t for t in wanted if where.get(t) == name)
            if wanted and not mine:
                continue
            report = gate(fleet.database(name), target,
                          _only(options, mine))
        return report
    report = lint(migrator, target=target,
                  tenants=getattr(options, "tenants", ()),
                  exclude_tenants=getattr(options, "exclude_tenants", ()),
                  shard=getattr(options, "shard", None))
    if not report.ok:
        raise LintRefused(report)
    return report


def _only(options, tenants):
    """``options`` narrowed to ``tenants`` (a fleet database's share)."""
    from dataclasses import replace
    return replace(options, tenants=tenants) if options is not None else (
        None)


def _pending_paths(script, branch, destination, versions, schemas):
    """``([(from_heads, steps)], {revision: schemas that run it})``: one
    path per group of schemas at the same version, longest first."""
    planner = StepPlanner(script, UPGRADE, destination)
    groups = collections.Counter(
        versions[schema].heads for schema in schemas
        if versions[schema].problem is None)
    paths, runs_in = [], collections.Counter()
    for heads, count in groups.items():
        try:
            steps = planner.steps_for(heads)
        except Exception:
            continue  # upgrade reports it: not a revision it runs
        if steps:
            paths.append((heads, steps))
            for step in steps:
                runs_in[step.revision.revision] += count
    paths.sort(key=lambda path: -len(path[1]))
    return paths, runs_in


def _render(migrator, branch, from_heads, steps):
    """One :class:`~.engine.capture.CapturedRevision` per step: for the
    tenant branch, those of the program the run will use (captured once
    for the migrator, see :class:`~.engine.program.Programs`)."""
    programs = migrator.programs
    if branch == TENANT and programs.replay:
        program = programs.get(UPGRADE, from_heads, steps,
                               heads_after(from_heads, steps), TENANT)
        captured = [step.captured for step in program.steps]
        if len(captured) == len(steps) and None not in captured:
            if any(_not_rendered(c) for c in captured):
                # It may need shared revisions this upgrade runs first:
                # the run captures it again once they have run.
                programs.discard(program)
            return captured
    from .engine.capture import capture_steps
    return capture_steps(migrator, steps, from_heads, branch)


def _not_rendered(captured):
    return not captured.statements and captured.reason is not None


def _explicit_range(script, rev_range):
    start, colon, end = rev_range.partition(":")
    if not colon or not end:
        raise UsageError(
            f"lint range {rev_range!r} is not 'rev1:rev2' (e.g. "
            "'base:tenant@head' or 't1:t3')")
    from .plan import branch_of_revision
    try:
        end_revision = script.get_revision(end)
        branch = branch_of_revision(script, end_revision.revision)
        from_heads = (() if start == "base" else
                      tuple(r.revision for r in script.get_revisions(start)))
        steps = StepPlanner(script, UPGRADE, end).steps_for(from_heads)
    except UsageError as exc:
        raise UsageError(f"lint range {rev_range!r}: {exc}") from None
    except Exception as exc:
        raise UsageError(f"lint range {rev_range!r}: {exc}") from None
    return branch, from_heads, steps


@dataclass(frozen=True)
class _Size:
    rows: int    # reltuples: -1 when never vacuumed or analyzed
    bytes: int   # table, TOAST and indexes
    pages: int   # the table's own pages

    @property
    def has_rows(self):
        return self.rows > 0 or self.pages > 0


class _Catalog:
    """The statistics of every table of the shared and tenant schemas."""

    def __init__(self, sizes, shared):
        self.shared = shared
        self.sizes = sizes
        #: table -> [(tenant schema, _Size)]
        self.copies = collections.defaultdict(list)
        for (schema, table), size in sizes.items():
            if schema != shared:
                self.copies[table].append((schema, size))

    def largest(self, schema, table, branch):
        """(schema, _Size) of the largest copy of ``table``: the largest
        tenant's for a tenant table, the shared schema's for a shared one,
        or ``None``."""
        if schema is not None or branch == SHARED:
            key = (schema or self.shared, table)
            return (key[0], self.sizes[key]) if key in self.sizes else None
        copies = self.copies.get(table)
        if not copies:
            return None
        return max(copies, key=lambda c: (c[1].bytes, c[1].rows))

    def has_rows(self, schema, table):
        """Whether ``schema.table``, or some tenant's copy of ``table``,
        holds rows (statistics: rows or pages as of the last VACUUM or
        ANALYZE)."""
        if schema is not None:
            size = self.sizes.get((schema, table))
            return size is not None and size.has_rows
        return any(size.has_rows for _, size in self.copies.get(table, ()))

    def is_shared(self, schema, table):
        """Named with the shared schema, or unqualified and only the shared
        schema has it (found on ``extra_search_path``)."""
        return schema == self.shared or (
            schema is None and table not in self.copies
            and (self.shared, table) in self.sizes)


def _table_statistics(connection, schemas):
    """(schema, table) -> _Size, from one catalog read."""
    cursor = connection.exec_driver_sql(_TABLE_STATISTICS,
                                        {"schemas": list(schemas)})
    return {(schema, table): _Size(rows, size, pages)
            for schema, table, rows, size, pages in cursor}


def _lint_revision(squawk, migrator, branch, captured, runs_in, catalog,
                   estimates):
    result = RevisionLint(captured.revision, branch,
                          1 if branch == SHARED else runs_in)
    statements = [s for s in captured.statements if not _is_read(s)]
    result.statements = len(statements)
    estimates.statements[captured.revision] = [
        [s.in_block, 0.0] for s in statements]
    if captured.reason is not None:
        result.note = f"does not replay ({captured.reason})"
    if not statements:
        if captured.reason is not None:
            result.rendered = False
            result.note = f"could not be rendered: {captured.reason}"
        return result
    for index, issue in _squawk(squawk, captured.revision, statements):
        finding = _finding(migrator, branch, result, index,
                           statements[index].sql, issue, catalog)
        result.findings.append(finding)
        estimates.add(captured.revision, index,
                      finding.estimated_lock_seconds)
    if branch == TENANT:
        for index, statement in enumerate(statements):
            locks = _shared_locks(statement.sql, catalog)
            if locks:
                finding = _shared_lock_finding(
                    migrator, result, index, statement, locks, catalog)
                result.findings.append(finding)
                estimates.add(captured.revision, index,
                              finding._own_seconds)
                estimates.holds.append((finding, statement.in_block))
    if branch == TENANT and citus.enabled(migrator):
        result.findings.extend(  # what Citus refuses: citus.py
            Finding(branch=branch, runs_in=result.runs_in, **asdict(f))
            for f in citus.revision_findings(migrator, captured.revision,
                                             statements))
    return result


def _shared_lock_finding(migrator, result, index, statement, locks,
                         catalog):
    """``tenant-locks-shared-table``: an error when the lock is long (a
    foreign key checked against a tenant table's rows, or a lock on the
    whole shared table taken by DDL); a warning when it is brief (a
    foreign key not checked here: a new table, ``NOT VALID``, a new
    column without a default, tables empty in every tenant) or rows
    written. Its message is written once the lock time is known
    (:meth:`_Estimates.complete`)."""
    sql = statement.sql
    checks_rows = any(kind == _FOREIGN_KEY and brief is None
                      for _, kind, brief in locks)
    long = checks_rows or any(kind == _TABLE_LOCK for _, kind, _ in locks)
    finding = _finding(migrator, TENANT, result, index, sql, {
        "rule_name": SHARED_LOCK_RULE, "level": "warning", "message": "",
        "help": None}, catalog)
    finding.severity = ("error" if long and SHARED_LOCK_RULE
                        in migrator.settings.lint_errors else "warning")
    finding._locks = locks
    # Only a check of existing rows reads tables under the lock.
    finding._own_seconds = _seconds(finding.tables) if checks_rows else 0.0
    return finding


def _shared_locks(sql, catalog):
    """``[(shared table, kind, brief)]`` a tenant statement locks, each
    until its tenant's transaction commits. ``kind``: ``foreign key`` (a
    reference to it: SHARE ROW EXCLUSIVE, which blocks its writers and
    conflicts with itself; ``brief`` says why the statement checks no
    existing rows under it, ``None`` when it does), ``table`` (DDL, an
    index or ``LOCK`` on the shared table itself) or ``rows`` (rows it
    writes)."""
    locks = []
    for verb, name in _touched(sql):
        schema, table = name
        if not catalog.is_shared(schema, table):
            continue
        verb = verb.split()[0].upper()
        full = f"{catalog.shared}.{table}"
        if verb == "REFERENCES":
            lock = (full, _FOREIGN_KEY, _unchecked(sql, catalog))
        elif verb in ("UPDATE", "DELETE", "INSERT"):
            lock = (full, _ROW_LOCKS, None)
        else:
            lock = (full, _TABLE_LOCK, None)
        if lock not in locks:
            locks.append(lock)
    return locks


def _unchecked(sql, catalog, branch=TENANT):
    """Why a statement adding a foreign key checks no existing rows, or
    ``None`` when it does. PostgreSQL checks none for a table it creates,
    a constraint ``NOT VALID`` and a column added without a default; and
    there are none to check in a table empty in every tenant (as the
    statistics have it)."""
    if _CREATE_TABLE.match(sql):
        return "a new table"
    if _ADD_FOREIGN_KEY.search(sql):
        if _NOT_VALID.search(sql):
            return "NOT VALID"
    elif not _DEFAULT.search(sql):
        return "a new column without a default"
    altered = _ALTERED.match(sql)
    if altered is None:
        return None
    schema, table = _split(altered.group(1))
    if branch == SHARED:
        schema = schema or catalog.shared
    if catalog.has_rows(schema, table):
        return None
    return (f"{table} is empty" if schema or branch == SHARED
            else f"{table} is empty in every tenant")


class _Estimates:
    """Seconds each statement reads or rewrites tables under its lock, to
    tell how long a tenant holds a shared table: from the statement to the
    end of its transaction (later revisions of the path included, up to
    an autocommit block, which commits first)."""

    def __init__(self):
        #: revision -> [[in_block, seconds], ...] per linted statement
        self.statements = {}
        #: revision -> the revision ids of the path it was linted on
        self.paths = {}
        #: (finding, in_block) of tenant-locks-shared-table
        self.holds = []

    def add(self, revision, index, seconds):
        if seconds:
            entry = self.statements[revision][index]
            entry[1] = max(entry[1], seconds)

    def rest_of_transaction(self, revision, index):
        path = self.paths.get(revision, [revision])
        seconds = 0.0
        position = path.index(revision) if revision in path else 0
        for rev in path[position:]:
            entries = self.statements.get(rev, [])
            start = index + 1 if rev == revision else 0
            for in_block, statement_seconds in entries[start:]:
                if in_block:
                    return seconds
                seconds += statement_seconds
        return seconds

    def complete(self, report):
        for finding, in_block in self.holds:
            after = (0.0 if in_block else self.rest_of_transaction(
                finding.revision, finding.statement_index))
            own = finding._own_seconds
            finding.estimated_lock_seconds = round(own + after, 3)
            finding.message, finding.help = _shared_lock_text(
                finding, own, after)


def _shared_lock_text(finding, own, after):
    """The message and help of a tenant-locks-shared-table finding."""
    names = ", ".join(finding.shared_tables_locked)
    tenants = finding.runs_in
    kinds = {kind for _, kind, _ in finding._locks}
    each = (f"in each of {tenants} tenant(s), each time until that tenant "
            "commits")
    held = (f"held ~{own + after:.2f}s per tenant ({own:.2f}s checking "
            f"rows, then {after:.2f}s for the rest of the tenant's "
            f"transaction), up to ~{tenants} x that over the run")
    if _TABLE_LOCK in kinds:
        return (f"locks shared table(s) {names} itself (DDL, an index, "
                f"LOCK) {each}; {held}",
                "change shared tables in a shared revision: it runs once")
    briefs = [brief for _, kind, brief in finding._locks
              if kind == _FOREIGN_KEY]
    if briefs and None in briefs:
        return (f"a foreign key to {names} checks the tenant table's "
                f"existing rows under SHARE ROW EXCLUSIVE on {names}, which "
                f"blocks its writers, {each} (the lock conflicts with "
                f"itself: tenants take turns); {held}",
                "add the foreign key NOT VALID (no check under the lock) "
                "and VALIDATE CONSTRAINT in a later revision (that takes "
                "only ROW SHARE on the shared table: its writers go on)")
    if briefs:
        return (f"a foreign key to {names} takes SHARE ROW EXCLUSIVE on it, "
                f"which blocks its writers, {each}; brief, it checks no "
                f"existing rows ({', '.join(dict.fromkeys(briefs))}): "
                f"{held}",
                "the shared table's writers wait for the rest of each "
                "tenant's transaction after this statement: slow "
                "statements after it (later revisions included, up to an "
                "autocommit block) make every wait longer")
    return (f"writes rows of shared table(s) {names} {each}: those rows "
            f"stay locked; {held}",
            "write shared rows in a shared revision, or in a "
            "'tenant-migrate run' task")


def _is_read(statement):
    # Reads the revision checked (inspector, SELECT) lock nothing of note.
    return bool(statement.check) and statement.check[0] == "rows"


def _squawk(squawk, revision, statements):
    """Yield ``(statement index, squawk's finding)``.

    The revision's statements run in one transaction per tenant, those of
    an ``autocommit_block()`` by themselves: the text given to squawk says
    so with BEGIN/COMMIT around each part, so a ``CREATE INDEX
    CONCURRENTLY`` in a block is not taken for one inside a transaction.
    """
    lines, owners = [], []  # owners[i]: the statement line i belongs to
    in_transaction = False
    for index, statement in enumerate(statements):
        if statement.in_block == in_transaction:
            lines.append("COMMIT;" if in_transaction else "BEGIN;")
            owners.append(max(index - 1, 0))
            in_transaction = not in_transaction
        sql = statement.sql.strip().rstrip(";") + ";"
        lines.extend(sql.split("\n"))
        owners.extend([index] * (sql.count("\n") + 1))
    if in_transaction:
        lines.append("COMMIT;")
        owners.append(len(statements) - 1)
    completed = subprocess.run(
        [squawk, "--reporter", "json", "--stdin-filepath", revision,
         "--exclude", ",".join(EXCLUDED_RULES)],
        input="\n".join(lines), capture_output=True, text=True, timeout=120)
    try:
        issues = json.loads(completed.stdout or "[]")
    except ValueError:
        raise TenantMigrateError(
            f"squawk failed on revision {revision} (exit "
            f"{completed.returncode}): {completed.stderr.strip()}") from None
    for issue in issues:
        yield owners[min(issue["line"], len(owners) - 1)], issue


def _finding(migrator, branch, result, index, sql, issue, catalog):
    finding = Finding(
        revision=result.revision, branch=branch,
        severity=_severity(migrator, issue), rule=issue["rule_name"],
        message=issue["message"], help=issue.get("help"), statement=sql,
        statement_index=index, runs_in=result.runs_in)
    for schema, table in dict.fromkeys(name for _, name in _touched(sql)):
        largest = catalog.largest(schema, table, branch)
        if largest is not None:
            where, size = largest
            finding.tables[f"{schema}.{table}" if schema else table] = {
                "schema": where, "rows": max(size.rows, 0),
                "bytes": size.bytes, "shared": where == catalog.shared}
    if branch == TENANT:
        finding.shared_tables_locked = list(dict.fromkeys(
            name for name, _, _ in _shared_locks(sql, catalog)))
    if finding.rule in SCANNING_RULES:
        # A foreign key PostgreSQL does not check reads no table.
        finding.estimated_lock_seconds = (
            0.0 if _REFERENCES.search(sql)
            and _unchecked(sql, catalog, branch) is not None
            else _seconds(finding.tables))
    return finding


def _seconds(tables):
    """The tables' sizes (each the largest copy), added up, at
    BYTES_PER_SECOND."""
    return round(sum(stats["bytes"] for stats in tables.values())
                 / BYTES_PER_SECOND, 3)


def _severity(migrator, issue):
    """``error`` for the rules ``tenantmigrate.lint_errors`` names (and
    what squawk itself calls an error: SQL it cannot parse), else
    ``warning``: squawk reports all of its rules as warnings."""
    if (issue["rule_name"] in migrator.settings.lint_errors
            or issue["level"].lower() == "error"):
        return "error"
    return "warning"


def _split(name):
    parts = [p.strip().strip('"') for p in name.split(".")]
    if len(parts) == 2:
        return parts[0], parts[1]
    return None, parts[0]


def _touched(sql):
    """``(verb, (schema, table))`` for each table the statement names."""
    return [(match.group(1), _split(match.group(2)))
            for match in _TOUCHED.finditer(sql)]
