"""Citus schema-based sharding: tenant schemas as distributed schemas.

Citus 12 and later distributes a schema as a unit: every table created in a
*distributed schema* becomes a single-shard table of that schema's
colocation group, placed on one worker node, and the schema moves between
nodes as a whole (``citus_schema_move``, the rebalancer). That is the
schema-per-tenant model this package migrates. With
``tenantmigrate.citus`` (``auto``, the default: whenever the database has
the ``citus`` extension at 12.0 or later; ``on``: required, exit 2
without it; ``off``) this module makes the tool fit it:

- tenant schemas it creates (``create_tenant``, ``clone_tenant``, spare
  schemas, ``upgrade --create-missing``) are created as distributed
  schemas, in the transaction that creates them and before any table is
  made in them (:func:`create_schema_sql`);
- each tenant's transaction in a run starts with ``SET LOCAL
  citus.propagate_set_commands = 'local'``, so the ``SET LOCAL`` lock and
  statement timeouts that follow are sent to the worker nodes that hold
  the tenant's shards (:data:`PROPAGATE_SET_LOCAL`); and every statement
  goes to the server as a query of its own (:func:`one_statement_per_query`);
- before a run, the tenant revisions it will run are rendered (capture,
  the rendering ``lint`` and replay use) and checked for what Citus
  refuses inside a distributed schema (:func:`check_run`); an upgrade
  with such a statement exits 2 naming the revision and the statement,
  before anything ran. ``tenant-migrate <ini> lint`` reports the same
  findings (rule names ``citus-...``).

Citus is not installed where this package is tested: what is verified
here, and what rests on Citus' documentation, regression tests and
source, is told in ``docs/citus.rst``.
"""
import re
from dataclasses import dataclass, field

from .errors import ConfigurationError, TenantSourceUnavailable, UsageError
from .names import quote_schema

#: Schema-based sharding came with Citus 12.0 (``citus_schema_distribute``
#: is in citus--11.3-2--12.0-1.sql).
MIN_CITUS_MAJOR = 12

#: Where the rules below come from.
REGRESS = ("https://github.com/citusdata/citus/blob/main/src/test/regress/"
           "expected/schema_based_sharding.out")
DOCS_LIMITS = ("https://docs.citusdata.com/en/latest/develop/"
               "reference_workarounds.html#schema-based-sharding-sql-"
               "compatibility")

_DETECT = ("SELECT extversion FROM pg_catalog.pg_extension "
           "WHERE extname = 'citus'")
_SETTINGS = ("SELECT current_setting('citus.shard_replication_factor', "
             "true), current_setting('citus.enable_schema_based_sharding', "
             "true), current_setting('citus.propagate_set_commands', true)")
#: For each qualified name a tenant statement references: does the table
#: exist, and is it a reference table (pg_dist_partition: partmethod 'n',
#: repmodel 't', as Citus' own IsReferenceTableByDistParams tells)?
_REFERENCED = """
SELECT s.nspname, s.relname, c.oid IS NOT NULL,
       EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p
               WHERE p.logicalrelid = c.oid AND p.partmethod = 'n'
                 AND p.repmodel = 't')
FROM unnest(CAST(%(schemas)s AS text[]), CAST(%(tables)s AS text[]))
     AS s(nspname, relname)
LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = s.nspname
LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid
                               AND c.relname = s.relname
"""


def _major(version):
    try:
        return int(str(version).split(".")[0].split("-")[0])
    except ValueError:
        return 0


class CitusState:
    """Whether the migrator's database runs Citus, found out once
    (``migrator.citus``)."""

    _UNKNOWN = object()

    def __init__(self, migrator):
        self.migrator = migrator
        self._version = self._UNKNOWN
        #: What :func:`check_run` found before a run, for
        #: :func:`check_before_tenants` in it.
        self.pending_check = None

    @property
    def mode(self):
        return getattr(self.migrator.settings, "citus", "auto")

    def version(self, connection=None):
        """The ``citus`` extension's version on the database, or ``None``;
        read on ``connection`` (or a connection of the migrator's) the
        first time only."""
        if self._version is self._UNKNOWN:
            if connection is None:
                with self.migrator.connect() as own:
                    self._version = own.exec_driver_sql(_DETECT).scalar()
            else:
                self._version = connection.exec_driver_sql(_DETECT).scalar()
        return self._version

    def enabled(self, connection=None):
        """True in Citus mode. ``on`` without Citus 12+ is a
        :class:`~.errors.ConfigurationError` naming the setting."""
        mode = self.mode
        if mode == "off":
            return False
        version = self.version(connection)
        if version is not None and _major(version) >= MIN_CITUS_MAJOR:
            return True
        if mode == "on":
            found = ("has no citus extension (no pg_extension row for "
                     "citus)" if version is None else
                     f"has citus {version}, older than 12.0, which has no "
                     "schema-based sharding")
            raise ConfigurationError(
                f"setting tenantmigrate.citus = on, but the database "
                f"{found}: tenant schemas cannot be distributed schemas. "
                "Install Citus 12 or later on the coordinator (CREATE "
                "EXTENSION citus), or set tenantmigrate.citus = auto or off")
        return False


def enabled(migrator, connection=None):
    """Citus mode for ``migrator`` (cached on it, :class:`CitusState`)."""
    state = getattr(migrator, "citus", None)
    return bool(state is not None and state.enabled(connection))


# What Citus mode sends.

#: The first statement of a run's tenant transaction in Citus mode: later
#: ``SET LOCAL`` commands of the transaction (search_path, lock_timeout,
#: statement_timeout) are sent to the workers it opens transactions on,
#: and to those already open (citus.propagate_set_commands, "local: only
#: SET LOCAL commands are propagated"). Transaction-scoped, like them.
PROPAGATE_SET_LOCAL = "SET LOCAL citus.propagate_set_commands = 'local'"


#: Around ``CREATE SCHEMA`` of a tenant schema in Citus mode: schema-based
#: sharding on for that statement only, then as it was. set_config() and
#: not SET LOCAL: a function call, never sent on to the workers, and the
#: setting is put back exactly for the rest of the (caller's) transaction.
SHARDING_ON = (
    "SELECT set_config('tenantmigrate.saved_schema_sharding', coalesce("
    "nullif(current_setting('citus.enable_schema_based_sharding', true), "
    "''), 'off'), true)",
    "SELECT set_config('citus.enable_schema_based_sharding', 'on', true)")
SHARDING_BACK = (
    "SELECT set_config('citus.enable_schema_based_sharding', "
    "current_setting('tenantmigrate.saved_schema_sharding'), true)")


def create_schema_sql(schema, citus):
    """The statements creating the tenant schema ``schema``: in Citus mode
    as a distributed schema, empty, in the transaction they run in.

    With ``citus.enable_schema_based_sharding`` on, Citus registers a
    schema created by ``CREATE SCHEMA`` as a distributed schema, and every
    table created in it later in the transaction becomes a single-shard
    table of its colocation group; rolled back, nothing of it remains.
    Citus' regression test runs exactly that inside BEGIN ... COMMIT and
    BEGIN ... ROLLBACK (schema_based_sharding.sql, tenant_7 and tenant_8),
    which is why this route is taken rather than ``SELECT
    citus_schema_distribute(...)`` after ``CREATE SCHEMA``: that function
    is tested in a transaction block too
    (citus_schema_distribute_undistribute.sql), but only on a schema that
    existed before the transaction. The setting is put back right after:
    a later ``CREATE SCHEMA`` of the caller's transaction is left alone.
    """
    create = f"CREATE SCHEMA {quote_schema(schema)}"
    if not citus:
        return [create]
    return [*SHARDING_ON, create, SHARDING_BACK]


def create_schema(migrator, connection, schema):
    """``CREATE SCHEMA`` for a tenant on ``connection``, in its
    transaction: a distributed schema in Citus mode."""
    for sql in create_schema_sql(schema, enabled(migrator, connection)):
        connection.exec_driver_sql(sql)


def one_statement_per_query(citus, statements):
    """The scripts to send for ``statements`` (SQL texts, in order): one
    query joining them all, or in Citus mode each on its own.

    Citus hands some commands on with the text of the whole query they came
    in, not the statement's own: ``SET LOCAL`` (utility_hook.c calls
    PostprocessVariableSetStmt with queryString, kept and replayed at the
    start of every later remote transaction), DDL on triggers and ``DROP
    POLICY`` (DDLTaskList(relationId, queryString)); a worker refuses a
    command of several statements ("cannot execute multiple utility
    events", worker_data_fetch_protocol.c). PostgreSQL gives a utility
    statement the text of the whole simple-query message it came in.
    """
    if not citus:
        return [";\n".join(statements) + ";"]
    return list(statements)


# Plan-time checks.

@dataclass
class CitusFinding:
    """What Citus would refuse (``error``) or may refuse or change
    (``warning``) in one statement of one tenant revision."""

    revision: str
    severity: str
    rule: str
    message: str
    statement: str = None
    statement_index: int = None
    help: str = None


@dataclass
class CitusCheck:
    """The findings of :func:`check_steps`, per revision in order.

    ``unrendered``: revisions capture could not render (checked after the
    shared branch, if it runs). ``undecided``: a finding depends on a
    table that does not exist yet.
    """

    revisions: list = field(default_factory=list)
    findings: list = field(default_factory=list)
    unrendered: dict = field(default_factory=dict)
    undecided: bool = False
    notes: list = field(default_factory=list)

    @property
    def errors(self):
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self):
        return [f for f in self.findings if f.severity == "warning"]

    def warning_lines(self):
        lines = [f"citus: revision {f.revision}: {f.rule}: {f.message}"
                 + (f" (statement {f.statement_index + 1}: "
                    f"{_shown(f.statement)})" if f.statement else "")
                 for f in self.warnings]
        lines.extend(f"citus: revision {revision} was not checked for "
                     f"Citus: {reason}"
                     for revision, reason in self.unrendered.items())
        return lines + [f"citus: {note}" for note in self.notes]

    def render_text(self):
        lines = []
        for revision in self.revisions:
            findings = [f for f in self.findings if f.revision == revision]
            if not findings and revision not in self.unrendered:
                continue
            lines.append(f"{revision} (tenant)")
            if revision in self.unrendered:
                lines.append(f"  note: not checked: "
                             f"{self.unrendered[revision]}")
            for severity in ("error", "warning"):
                for f in findings:
                    if f.severity != severity:
                        continue
                    lines.append(f"  {f.severity}: {f.rule}: {f.message}")
                    if f.statement:
                        lines.append(f"    statement {f.statement_index + 1}"
                                     f": {_shown(f.statement)}")
                    if f.help:
                        lines.append(f"    help: {f.help}")
        return "\n".join(lines)


def _shown(sql):
    return " ".join(sql.split())[:160]


class CitusRefused(UsageError):
    """An upgrade in Citus mode would run a statement Citus refuses in a
    distributed schema; nothing of it ran (exit 2)."""

    def __init__(self, check, after_shared=False):
        self.check = check
        first = check.errors[0]
        where = ("the shared branch was upgraded, no tenant was migrated"
                 if after_shared else "nothing was run")
        super().__init__(
            f"refusing to upgrade in Citus mode (tenantmigrate.citus): "
            f"revision {first.revision}, statement "
            f"{first.statement_index + 1} ({_shown(first.statement)[:60]}"
            f"...) is refused in a distributed schema ({first.rule}); "
            f"{where}. {len(check.errors)} error(s):\n"
            f"{check.render_text()}")


#: SQL text with string literals, comments and dollar-quoted bodies blanked
#: out (double-quoted identifiers are kept): what the rules read.
_SKIPPED = re.compile(
    r"\"(?:[^\"]|\"\")*\"|'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/"
    r"|(\$(?:[A-Za-z_]\w*)?\$).*?\1", re.S)
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
_NAME = rf"({_IDENT})(?:\s*\.\s*({_IDENT}))?"
_CREATE_TABLE = re.compile(
    r"\s*CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?(?P<kind>(?:TEMP|TEMPORARY|UNLOGGED)"
    rf"\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}", re.I)
_CREATE_FOREIGN = re.compile(
    rf"\s*CREATE\s+FOREIGN\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}", re.I)
_ALTER_TABLE = re.compile(
    rf"\s*ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{_NAME}", re.I)
_REFERENCES = re.compile(rf"\bREFERENCES\s+{_NAME}", re.I)
_PARTITION_OF = re.compile(rf"\bPARTITION\s+OF\s+{_NAME}", re.I)
_ATTACH = re.compile(rf"\bATTACH\s+PARTITION\s+{_NAME}", re.I)
_SET_SCHEMA = re.compile(r"\bSET\s+SCHEMA\b", re.I)
_CREATE_SCHEMA = re.compile(r"\s*CREATE\s+SCHEMA\b", re.I)
_SCHEMA_TABLE_ELEMENT = re.compile(
    r"\bCREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?(?:(?:TEMP|TEMPORARY|UNLOGGED)\s+)?"
    r"TABLE\b", re.I)
#: Statements Citus hands on with the whole query's text (see
#: one_statement_per_query).
_WHOLE_TEXT = re.compile(
    r"\A\s*(?:SET\b|RESET\b|CREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?"
    r"TRIGGER\b|ALTER\s+TRIGGER\b|DROP\s+TRIGGER\b|DROP\s+POLICY\b"
    r"|ALTER\s+TABLE\b.*\b(?:ENABLE|DISABLE)\s+(?:ALWAYS\s+|REPLICA\s+)?"
    r"TRIGGER\b)", re.I | re.S)


def _code(sql):
    return _SKIPPED.sub(lambda m: m.group(0) if m.group(0).startswith('"')
                        else " ", sql)


def _ident(text):
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text.lower()


def _name(match):
    """``(schema or None, name)`` from a match ending with _NAME."""
    one, two = match.groups()[-2:]
    return (_ident(one), _ident(two)) if two else (None, _ident(one))


def _statements_of(code):
    """The statements of an SQL text, split at its semicolons (literals,
    comments and dollar-quoted bodies already blanked out)."""
    return [part for part in code.split(";") if part.strip()]


@dataclass
class _Context:
    shared_schema: str
    #: (schema, table) -> (exists, is a reference table); None when the
    #: database has no Citus metadata to ask.
    referenced: dict = None
    replication_factor: int = 1
    schema_sharding_on: bool = False
    undecided: bool = False
    propagate: str = None


def _referenced_names(sqls):
    names = set()
    for sql in sqls:
        for match in _REFERENCES.finditer(_code(sql)):
            schema, table = _name(match)
            if schema is not None:
                names.add((schema, table))
    return sorted(names)


def _read_context(migrator, connection, sqls):
    """What the rules need from the database: the tables the statements
    reference in other schemas (reference tables or not), and the Citus
    settings the tenants' transactions will see."""
    context = _Context(migrator.shared_schema)
    names = _referenced_names(sqls)
    factor, sharding, context.propagate = connection.exec_driver_sql(
        _SETTINGS).one()
    try:
        context.replication_factor = int(factor or 1)
    except ValueError:
        context.replication_factor = 1
    context.schema_sharding_on = (sharding or "").lower() in ("on", "true")
    if names:
        rows = connection.exec_driver_sql(_REFERENCED, {
            "schemas": [s for s, _ in names],
            "tables": [t for _, t in names]}).all()
        context.referenced = {(s, t): (exists, reference)
                              for s, t, exists, reference in rows}
    else:
        context.referenced = {}
    return context


def _finding(revision, index, sql, severity, rule, message, help):
    return CitusFinding(revision, severity, rule, message, sql, index, help)


def statement_findings(revision, index, sql, context):
    """The :class:`CitusFinding` of one tenant statement (run in the
    tenant's schema: unqualified names are its own)."""
    code = _code(sql)
    found = []

    def add(severity, rule, message, help):
        found.append(_finding(revision, index, sql, severity, rule, message,
                              help))

    if len(_statements_of(code)) > 1 and any(
            _WHOLE_TEXT.match(part) for part in _statements_of(code)):
        add("error", "citus-one-statement-per-query",
            "several statements in one SQL text, one of them a SET, RESET, "
            "trigger command or DROP POLICY: Citus sends such a command to "
            "the workers with the text of the whole query it came in",
            "split it into one op.execute() per statement (Citus source: "
            "utility_hook.c, PostprocessVariableSetStmt(setStmt, "
            "queryString); trigger.c and policy.c, DDLTaskList(relationId, "
            "queryString); a worker refuses 'multiple utility events')")
    _foreign_key_findings(code, context, add)
    create = _CREATE_TABLE.match(code)
    if create and not (create.group("kind") or "").upper().startswith("TEMP"):
        # (A temporary table goes to pg_temp, never a distributed schema.)
        _create_table_findings(create, code, context, add)
    foreign = _CREATE_FOREIGN.match(code)
    if foreign and _name(foreign)[0] is None:
        add("error", "citus-foreign-table",
            "CREATE FOREIGN TABLE in a distributed schema: Citus refuses it "
            "('cannot create a foreign table in a distributed schema')",
            f"keep foreign tables in a regular schema ({REGRESS})")
    alter = _ALTER_TABLE.match(code)
    if alter:
        _alter_table_findings(alter, code, add)
    _create_schema_findings(code, context, add)
    return found


def _foreign_key_findings(code, context, add):
    for match in _REFERENCES.finditer(code):
        schema, table = _name(match)
        if schema is None:
            continue  # the tenant's own schema: Citus allows it
        exists, reference = (context.referenced or {}).get(
            (schema, table), (None, False))
        qualified = f"{schema}.{table}"
        if reference:
            continue
        help = (f"make {qualified} a reference table in a shared revision "
                f"(SELECT create_reference_table('{qualified}')), or drop "
                "the foreign key; Citus: 'foreign keys from distributed "
                "schemas can only point to the same distributed schema or "
                f"reference tables in regular schemas' ({REGRESS})")
        if exists:
            add("error", "citus-foreign-key-to-non-reference-table",
                f"a foreign key to {qualified}, which is not a reference "
                "table: Citus refuses foreign keys from a distributed "
                "schema to tables of other schemas that are not reference "
                "tables", help)
        else:
            context.undecided = True
            add("warning", "citus-foreign-key-to-non-reference-table",
                f"a foreign key to {qualified}, which does not exist yet "
                "(or Citus metadata could not be read): Citus refuses it "
                "unless it is a reference table when tenants run this",
                help)


def _create_schema_findings(code, context, add):
    schema = _CREATE_SCHEMA.match(code)
    if schema and _SCHEMA_TABLE_ELEMENT.search(code, schema.end()):
        add("error" if context.schema_sharding_on else "warning",
            "citus-create-schema-with-table",
            "CREATE SCHEMA ... CREATE TABLE: " + (
                "citus.enable_schema_based_sharding is on, and Citus "
                "refuses to create a distributed schema and a table in one "
                "statement" if context.schema_sharding_on else
                "with citus.enable_schema_based_sharding on Citus refuses "
                "it; off, the schema is a regular one"),
            f"create the schema, then its tables, in separate statements "
            f"({DOCS_LIMITS}; {REGRESS})")


def _create_table_findings(create, code, context, add):
    target_schema, _ = _name(create)
    rest = code[create.end():]
    in_tenant = target_schema is None
    parent = _PARTITION_OF.search(rest)
    if in_tenant and re.match(r"\s+OF\s", rest, re.I):
        add("error", "citus-create-table-of-type",
            "CREATE TABLE ... OF a type in a distributed schema: Citus "
            "refuses it ('cannot create tables in a distributed schema "
            "using CREATE TABLE OF syntax')",
            f"declare the columns instead ({REGRESS})")
    if re.search(r"\bINHERITS\s*\(", rest, re.I) and in_tenant:
        add("error", "citus-inherits",
            "CREATE TABLE ... INHERITS in a distributed schema: Citus "
            "refuses it ('tables in a distributed schema cannot inherit or "
            "be inherited')", f"use declarative partitioning ({REGRESS})")
    if parent:
        parent_schema = _name(parent)[0]
        if (parent_schema is None) != in_tenant:
            add("error", "citus-partition-across-schemas",
                "a partition and its parent in different schemas, one of "
                "them distributed: Citus refuses it ('partitioning within a "
                "distributed schema is not supported when the parent and "
                "the child are in different schemas')",
                f"keep both in the tenant's schema ({REGRESS})")
        if in_tenant and re.search(r"\bPARTITION\s+BY\b", rest, re.I):
            add("error", "citus-multi-level-partitioning",
                "a partition that is itself partitioned: Citus refuses "
                "multi-level partitioned tables",
                f"one level of partitions ({REGRESS})")
    if in_tenant and context.replication_factor > 1:
        add("error", "citus-shard-replication-factor",
            f"a table created in a distributed schema while "
            f"citus.shard_replication_factor is "
            f"{context.replication_factor}: Citus refuses it ('could not "
            "create single shard table: citus.shard_replication_factor is "
            "greater than 1')",
            "set citus.shard_replication_factor to 1 for the deploy role "
            f"(ALTER ROLE ... SET) ({REGRESS})")


def _alter_table_findings(alter, code, add):
    target_schema = _name(alter)[0]
    rest = code[alter.end():]
    attach = _ATTACH.search(rest)
    if attach and (_name(attach)[0] is None) != (target_schema is None):
        add("error", "citus-partition-across-schemas",
            "ATTACH PARTITION across schemas, one of them distributed: "
            "Citus refuses it ('partitioning within a distributed schema "
            "is not supported when the parent and the child are in "
            "different schemas')",
            f"keep both in the tenant's schema ({REGRESS})")
    if _SET_SCHEMA.search(rest):
        add("warning", "citus-set-schema",
            "ALTER TABLE ... SET SCHEMA: Citus undistributes a table that "
            "leaves a distributed schema, and refuses it when it is a "
            "partition or has foreign keys from or to its schema's tables; "
            "a table moved in must not be a distributed or reference table",
            f"see 'set schema is not allowed' in {REGRESS}")


def revision_findings(migrator, revision, statements, connection=None):
    """The :class:`CitusFinding` list of one tenant revision's captured
    ``statements`` (:class:`~.engine.capture.Statement`), reading what
    the rules need from the database (used by ``lint``)."""
    sqls = [s.sql for s in statements]
    if connection is None:
        with migrator.connect() as own:
            context = _read_context(migrator, own, sqls)
    else:
        context = _read_context(migrator, connection, sqls)
    return [f for index, sql in enumerate(sqls)
            for f in statement_findings(revision, index, sql, context)]


def check_steps(migrator, steps, from_heads):
    """Render tenant ``steps`` (from ``from_heads``) with capture, the
    rendering ``lint`` and replay use, and check every statement; return a
    :class:`CitusCheck`."""
    from .engine.capture import capture_steps
    if not steps:
        return CitusCheck()
    captured = capture_steps(migrator, steps, from_heads, "tenant")
    check = CitusCheck(revisions=[c.revision for c in captured])
    sqls = [s.sql for c in captured for s in c.statements]
    with migrator.connect() as connection:
        context = _read_context(migrator, connection, sqls)
    for revision in captured:
        if not revision.statements and revision.reason is not None:
            check.unrendered[revision.revision] = revision.reason
            continue
        for index, statement in enumerate(revision.statements):
            check.findings.extend(statement_findings(
                revision.revision, index, statement.sql, context))
    check.undecided = context.undecided
    if (context.propagate or "").lower() == "local":
        check.notes.append(
            "citus.propagate_set_commands is 'local' for the deploy role's "
            "sessions: Citus then sends a query holding a SET LOCAL to the "
            "workers whole, and this tool sends some (version reads) "
            "outside tenant transactions; set it to none for that role "
            "(the tool sets it in each tenant's transaction)")
    return check


def _pending_tenant_steps(migrator, destination, options):
    """The longest way a selected tenant has to ``destination``:
    ``(from_heads, steps)``; from base when the tenant source cannot be
    read yet (the shared branch makes it)."""
    from .plan import UPGRADE, StepPlanner
    from .tenants import select_tenants
    planner = StepPlanner(migrator.script, UPGRADE, destination)
    starts = []
    with migrator.connect() as connection:
        try:
            discovered = migrator.discover_tenants(connection)
        except TenantSourceUnavailable:
            discovered, starts = [], [()]
        selection = select_tenants(
            discovered, migrator.shared_schema, only=options.tenants,
            exclude=options.exclude_tenants, shard=options.shard)
        if selection.schemas:
            versions = migrator.read_versions(connection, selection.schemas)
            starts.extend(v.heads for v in versions.values()
                          if v.problem is None)
    longest = ((), [])
    for heads in dict.fromkeys(starts):
        try:
            steps = planner.steps_for(heads)
        except Exception:
            continue  # the run reports it
        if len(steps) > len(longest[1]):
            longest = (heads, steps)
    return longest


def check_run(migrator, operation, destinations, options):
    """Before a run (:func:`.run.run`), before anything: Citus mode is
    found out (``on`` without Citus: exit 2); for an upgrade of the tenant
    branch, the tenant revisions the selected tenants will run are
    checked, and an error refuses the run (:class:`CitusRefused`)."""
    from .plan import SHARED, TENANT, UPGRADE
    state = migrator.citus
    state.pending_check = None
    if not state.enabled():
        return
    tenant = [d for branch, d in destinations if branch == TENANT]
    if operation != UPGRADE or not tenant:
        return
    from_heads, steps = _pending_tenant_steps(migrator, tenant[0], options)
    check = check_steps(migrator, steps, from_heads)
    if check.errors:
        raise CitusRefused(check)
    shared_first = any(branch == SHARED for branch, _ in destinations)
    state.pending_check = (check, shared_first)


def check_before_tenants(migrator, destination, options, report):
    """In a run, once the shared branch is done and before any tenant:
    revisions that could not be rendered or decided before the shared
    branch ran (a foreign key to a table it creates) are checked again;
    an error refuses the tenants (:class:`CitusRefused`). The warnings go
    into ``report``."""
    state = getattr(migrator, "citus", None)
    pending = state.pending_check if state is not None else None
    if pending is None:
        return
    state.pending_check = None
    check, shared_first = pending
    if shared_first and (check.unrendered or check.undecided):
        from_heads, steps = _pending_tenant_steps(migrator, destination,
                                                  options)
        check = check_steps(migrator, steps, from_heads)
        if check.errors:
            raise CitusRefused(check, after_shared=True)
    report.warnings.extend(check.warning_lines())
