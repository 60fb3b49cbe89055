"""Lock hazards of pending revisions, weighed by what the tenants hold.

The SQL comes from capture (:func:`.engine.capture.capture_steps`), the
rendering replay runs in every tenant, so what is linted is what will run.
The rules are squawk's (``squawk-cli``, a PostgreSQL migration linter);
this module adds only what squawk cannot know: how many tenants will run a
statement, the largest tenant's rows and bytes for the tables it touches
(one catalog read over all tenant schemas), which shared tables a tenant
statement locks (once per tenant), and a rough lock time per tenant.
"""
import json
import re
import shutil
import subprocess
import sysconfig
from dataclasses import asdict, dataclass, field

from . import citus
from .errors import TenantMigrateError, UsageError
from .plan import SHARED, TENANT, UPGRADE, StepPlanner, branch_heads
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
#: writes. Only to look up sizes; the rules are squawk's.
_NAME = r'((?:"[^"]+"|[\w$]+)(?:\s*\.\s*(?:"[^"]+"|[\w$]+))?)'
_TOUCHED = re.compile(
    r"\b(?:ALTER\s+TABLE(?:\s+IF\s+EXISTS)?(?:\s+ONLY)?"
    r"|\bON(?:\s+ONLY)?|REFERENCES|UPDATE|DELETE\s+FROM|INSERT\s+INTO"
    r"|TRUNCATE(?:\s+TABLE)?|DROP\s+TABLE(?:\s+IF\s+EXISTS)?"
    r"|LOCK(?:\s+TABLE)?)\s+" + _NAME, re.I)
_REFERENCES = re.compile(r"\bREFERENCES\s+" + _NAME, re.I)

#: One read of the catalog for every tenant and shared table: rows and
#: bytes as the planner's statistics have them (``reltuples``; the pages
#: of the table, its TOAST table and its indexes, as of the last VACUUM or
#: ANALYZE). Not ``pg_total_relation_size``: it looks at every file of
#: every relation, seconds over 10,000 tenants.
_TABLE_STATISTICS = """
WITH index_pages AS (
    SELECT x.indrelid, sum(i.relpages)::bigint AS pages
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
    GROUP BY x.indrelid)
SELECT n.nspname, c.relname, c.reltuples::bigint,
       (c.relpages::bigint + coalesce(t.relpages, 0)
        + coalesce(p.pages, 0)) * current_setting('block_size')::bigint
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
    #: Seconds the largest tenant holds the lock (see BYTES_PER_SECOND).
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


def lint(migrator, rev_range=None):
    """Render the pending revisions (or ``rev_range``, ``rev1:rev2``) with
    capture, run squawk on each, and weigh each finding by the tenants;
    return a :class:`LintReport`."""
    from .engine.capture import capture_steps
    squawk = squawk_path()
    script = migrator.script
    with migrator.connect() as connection:
        tenants = select_tenants(migrator.discover_tenants(connection),
                                 migrator.shared_schema).schemas
        shared = migrator.shared_schema
        versions = migrator.read_versions(connection, [shared, *tenants])
        statistics = _table_statistics(connection, [shared, *tenants])
    ranges = (_explicit_range(script, rev_range) if rev_range
              else _pending_ranges(script, versions, shared, tenants))
    report = LintReport()
    for branch, from_heads, steps in ranges:
        if not steps:
            continue
        behind = _schemas_behind(script, branch, versions,
                                 [shared] if branch == SHARED else tenants)
        captured = capture_steps(migrator, steps, from_heads, branch)
        for revision in captured:
            report.revisions.append(_lint_revision(
                squawk, migrator, branch, revision,
                len(behind.get(revision.revision, ())), statistics))
    return report


def _pending_ranges(script, versions, shared, tenants):
    """Shared: from its version to its head; tenant: from the oldest
    version any tenant is at (the longest way to the head)."""
    ranges = []
    for branch, schemas in ((SHARED, [shared]), (TENANT, tenants)):
        if not branch_heads(script, branch):
            continue
        planner = StepPlanner(script, UPGRADE, f"{branch}@heads")
        longest = ((), ())
        for schema in schemas:
            version = versions[schema]
            if version.problem is not None:
                continue
            steps = planner.steps_for(version.heads)
            if len(steps) > len(longest[1]):
                longest = (version.heads, steps)
        ranges.append((branch, *longest))
    return ranges


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
    return [(branch, from_heads, steps)]


def _schemas_behind(script, branch, versions, schemas):
    """revision id -> schemas that will still run it on the way to the
    branch's head."""
    planner = StepPlanner(script, UPGRADE, f"{branch}@heads")
    behind = {}
    for schema in schemas:
        version = versions[schema]
        if version.problem is not None:
            continue
        try:
            steps = planner.steps_for(version.heads)
        except Exception:
            continue
        for step in steps:
            behind.setdefault(step.revision.revision, []).append(schema)
    return behind


def _table_statistics(connection, schemas):
    """(schema, table) -> (rows, bytes), from one catalog read."""
    cursor = connection.exec_driver_sql(_TABLE_STATISTICS,
                                        {"schemas": list(schemas)})
    return {(schema, table): (max(rows, 0), size)
            for schema, table, rows, size in cursor}


def _lint_revision(squawk, migrator, branch, captured, runs_in, statistics):
    result = RevisionLint(captured.revision, branch,
                          1 if branch == SHARED else runs_in)
    statements = [s for s in captured.statements if not _is_read(s)]
    result.statements = len(statements)
    if captured.reason is not None:
        result.note = f"does not replay ({captured.reason})"
    if not statements:
        if captured.reason is not None:
            result.rendered = False
            result.note = f"could not be rendered: {captured.reason}"
        return result
    for index, issue in _squawk(squawk, captured.revision, statements):
        result.findings.append(_finding(
            migrator, branch, result, index, statements[index].sql, issue,
            statistics))
    shared = migrator.shared_schema
    if branch == TENANT:
        for index, sql in enumerate(s.sql for s in statements):
            locked = _shared_tables_locked(sql, shared, statistics)
            if locked:
                finding = _finding(migrator, branch, result, index, sql, {
                    "rule_name": "tenant-locks-shared-table",
                    "level": "error",
                    "message": (
                        f"locks shared table(s) {', '.join(locked)} in "
                        f"every tenant's transaction: {result.runs_in} "
                        "times, each held until that tenant commits"),
                    "help": "the lock is held through each tenant's "
                            "transaction, one tenant after another: add a "
                            "foreign key NOT VALID (no scan under the "
                            "lock) and VALIDATE CONSTRAINT in a later "
                            "revision"}, statistics)
                result.findings.append(finding)
    if branch == TENANT and citus.enabled(migrator):
        result.findings.extend(  # what Citus refuses: citus.py
            Finding(branch=branch, runs_in=result.runs_in, **asdict(f))
            for f in citus.revision_findings(migrator, captured.revision,
                                             statements))
    return result


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


def _finding(migrator, branch, result, index, sql, issue, statistics):
    finding = Finding(
        revision=result.revision, branch=branch,
        severity=_severity(migrator, issue), rule=issue["rule_name"],
        message=issue["message"], help=issue.get("help"), statement=sql,
        statement_index=index, runs_in=result.runs_in)
    shared = migrator.shared_schema
    largest_bytes = 0
    for schema, table in _touched_tables(sql, shared):
        largest = _largest(statistics, schema, table, shared, branch)
        if largest is not None:
            where, rows, size = largest
            finding.tables[f"{schema}.{table}" if schema else table] = {
                "schema": where, "rows": rows, "bytes": size,
                "shared": where == shared}
            largest_bytes = max(largest_bytes, size)
    if branch == TENANT:
        finding.shared_tables_locked = _shared_tables_locked(
            sql, shared, statistics)
    if finding.rule in SCANNING_RULES:
        finding.estimated_lock_seconds = round(
            largest_bytes / BYTES_PER_SECOND, 3)
    return finding


def _severity(migrator, issue):
    """``error`` for the rules ``tenantmigrate.lint_errors`` names (and
    what squawk itself calls an error: SQL it cannot parse), else
    ``warning``: squawk reports all of its rules as warnings."""
    if (issue["rule_name"] in migrator.settings.lint_errors
            or issue["level"].lower() == "error"
            and issue["rule_name"] != "tenant-locks-shared-table"):
        return "error"
    return "warning"


def _largest(statistics, schema, table, shared, branch):
    """(schema, rows, bytes) of the largest copy of ``table``: the largest
    tenant's for a tenant table, the shared schema's for a shared one."""
    if schema is not None or branch == SHARED:
        key = (schema or shared, table)
        return (key[0], *statistics[key]) if key in statistics else None
    copies = [(s, *stats) for (s, t), stats in statistics.items()
              if t == table and s != shared]
    return max(copies, key=lambda c: (c[2], c[1])) if copies else None


def _split(name):
    parts = [p.strip().strip('"') for p in name.split(".")]
    if len(parts) == 2:
        return parts[0], parts[1]
    return None, parts[0]


def _touched_tables(sql, shared):
    seen = []
    for match in _TOUCHED.finditer(sql):
        name = _split(match.group(1))
        if name not in seen:
            seen.append(name)
    return seen


def _shared_tables_locked(sql, shared, statistics):
    """Shared tables a tenant statement locks: those it names with the
    shared schema, or unqualified ones only the shared schema has (found
    on ``extra_search_path``)."""
    tenant_tables = {t for (s, t) in statistics if s != shared}
    locked = []
    for schema, table in _touched_tables(sql, shared):
        if schema == shared or (schema is None and table not in tenant_tables
                                and (shared, table) in statistics):
            name = f"{shared}.{table}"
            if name not in locked:
                locked.append(name)
    return locked
