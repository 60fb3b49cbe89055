"""Moving a tenant to another database of its fleet.

:func:`move_tenant` (``tenant-migrate <ini> move-tenant NAME --to
DATABASE``) copies a tenant's schema from the database it is placed on
(the source) to another database of the fleet (the target), checks the
copy, switches the placement and drops the source. Two servers and the
control database: no transaction spans them, so the commits are ordered
and each state between them is one :func:`settle` (``tenant-migrate <ini>
placements --repair``) knows how to finish or undo:

1. On the control database, for the whole move, a session holds the
   provisioning lock shared (a run's last look at the tenants waits for
   the move, as for a sign-up) and this tenant's move lock (how a run
   tells a move under way from one cut short). **C1**: a row of the moves
   table records the intent (source, target, and the name the source
   schema takes at the fence); with a tenant source that reads the
   catalog, the placement on the source is recorded too.
2. On the target, in a transaction: the schema is created and brought by
   the migrations to the source's revision (as ``clone_tenant`` makes a
   tenant), before anything is frozen.
3. On the source, in a transaction: the tenant's lock (a migration of it
   under way ends first), then ``LOCK TABLE ... IN EXCLUSIVE MODE`` on
   every table of the schema: **the write freeze**. Reads go on; writes
   wait. Every row committed before the freeze is in what the source
   transaction reads.
4. The copy: same tables and columns on both sides (else the source
   differs from what its revision makes: nothing is moved), the rows the
   revisions' data steps wrote in the new schema emptied, each table's
   rows through ``COPY`` (referenced tables first, the target's own
   triggers off meanwhile), each sequence set where the source's stands;
   then the version rows and every table's row count are compared. If the
   target database's tenants were migrated past that revision by a run
   that is done with them, the copy is brought to their tenant head here
   (each step still runs once: the source's copy is never migrated).
   **C2**: the target's transaction commits.
5. **C3**, the fence: the source transaction renames the schema to
   ``tenantmigrate-moved-<hex>`` and commits. Writers that waited fail
   (their table's name is gone) and retry against the placement; nothing
   can write into the renamed schema. If a migration of the tenant waits
   for its lock at that moment, the attempt is given up instead (source
   untouched, copy dropped) and the move starts again after it.
6. **C4**: the placement switches to the target.
7. **C5**: the renamed source schema is dropped; **C6**: the moves row is
   deleted, and the locks are let go.

A ``kill -9`` before C3 leaves the tenant placed on the source, intact
(the source transaction dies with the process); between C3 and C4, placed
on the source under its fenced name (unreachable until repaired: the
repair renames it back); after C4, placed on the target, complete. The
copy on the other side is what :func:`settle` drops, never the only one.

A run's ordinary passes skip a tenant under a live move
(:meth:`.fleet.Fleet.tenants_on`); its last pass waits for the move's
provisioning lock and finds the tenant wherever the move left it. A pass
that chose the tenant before the move and reached it after finds no
schema: :meth:`.fleet.DatabaseMigrator.moved_away` tells the run it left.
"""
import logging
import os
import secrets
import signal
import tempfile
import time
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from .citus import create_schema
from .engine.schema import migrate_in_transaction
from .engine.sql import quote_literal, tenant_lock_sql
from .engine.transaction import ScriptFailed, send_script
from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    MoveFailed,
    TenantMigrateError,
    UsageError,
    describe_error,
    sqlstate,
)
from .fleet import ensure_own_table, placements_table
from .isolation import grant_tenant
from .names import quote_schema, validate_schema_name
from .provisioning import _REFERENCES, _referenced_first
from .reserved import (
    MOVE_LOCK,
    MOVED_PREFIX,
    MOVES_TABLE,
    PROVISIONING_LOCK,
    TENANT_LOCK,
    lock_key,
)
from .tenanthead import older_than_recorded, recorded_tenant_head

log = logging.getLogger(__name__)

#: Test hook, for crash tests only: with ``TENANTMIGRATE_TEST_KILL_AT``
#: set to one of these points, a move kills its own process (SIGKILL) on
#: reaching it. ``copied``: the target's copy committed (C2), the source
#: not fenced; ``renamed``: the source fenced (C3), the placement not
#: switched; ``switched``: the placement switched (C4), the source not
#: dropped.
KILL_POINTS = ("copied", "renamed", "switched")
KILL_AT = "TENANTMIGRATE_TEST_KILL_AT"

#: Attempts given up because a migration of the tenant waited for it.
MAX_ATTEMPTS = 3
#: SQLSTATE of that: raised in the fence's transaction.
_WAITED_FOR = "TMM01"
#: Rows of one table kept in memory before the copy spills to a file.
_SPOOL_BYTES = 64 * 1024 * 1024

_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    schema_name text PRIMARY KEY,
    source text NOT NULL,
    target text NOT NULL,
    fenced_name text NOT NULL,
    started timestamptz NOT NULL DEFAULT now()
)
"""

# The same text on both servers: dates, intervals, floats, bytes.
_COPY_SETTINGS = [
    "SET LOCAL DateStyle = 'ISO, MDY'",
    "SET LOCAL IntervalStyle = 'postgres'",
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL extra_float_digits = 3",
    "SET LOCAL bytea_output = 'hex'",
    "SET LOCAL statement_timeout = 0",
    "SET LOCAL idle_in_transaction_session_timeout = 0",
]

_TABLES = text("""
SELECT c.relname, c.relkind,
       array(SELECT quote_ident(a.attname) FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0
               AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum),
       array(SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
             FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0
               AND NOT a.attisdropped ORDER BY a.attname)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname
""")
_SEQUENCES = text("""
SELECT c.relname FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :schema AND c.relkind = 'S' ORDER BY 1
""")
_TRIGGERS = text("""
SELECT c.relname, t.tgname, t.tgenabled FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :schema AND NOT t.tgisinternal AND t.tgenabled <> 'D'
ORDER BY 1, 2
""")
_SCHEMA_EXISTS = text(
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace "
    "WHERE nspname = :schema)")
_ENABLE = {"O": "ENABLE", "A": "ENABLE ALWAYS", "R": "ENABLE REPLICA"}


def moves_table(shared_schema):
    return f"{quote_schema(shared_schema)}.{quote_schema(MOVES_TABLE)}"


def _reached(point):
    """A named point of a move (see :data:`KILL_POINTS`)."""
    if os.environ.get(KILL_AT) == point:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Move:
    """A row of the moves table: a move under way, or cut short."""

    schema: str
    source: str
    target: str
    #: The source schema's name from the fence (C3) until it is dropped.
    fenced_name: str


@dataclass
class MoveReport:
    """What :func:`move_tenant` did."""

    schema: str
    source: str
    target: str
    #: The revision the tenant was copied at.
    heads: tuple = ()
    #: ``{table: rows}``, counted on both sides, equal.
    rows: dict = field(default_factory=dict)
    sequences: int = 0
    #: The target database's tenant head the copy was brought to, when
    #: a run had already migrated that database's tenants past it.
    caught_up: tuple = ()
    #: Attempts (one more each time a migration of the tenant came first).
    attempts: int = 1
    #: Seconds writes to the tenant waited (the freeze).
    frozen: float = 0.0
    seconds: float = 0.0

    def to_dict(self):
        return {"schema": self.schema, "from": self.source,
                "to": self.target, "revision": list(self.heads),
                "rows": self.rows, "sequences": self.sequences,
                "caught_up": list(self.caught_up),
                "attempts": self.attempts,
                "frozen_ms": round(self.frozen * 1000, 1),
                "seconds": round(self.seconds, 3)}

    def render_text(self):
        revision = ",".join(self.heads) or "base"
        lines = [
            f"Moved tenant {self.schema} from {self.source} to "
            f"{self.target} at revision {revision}: "
            f"{len(self.rows)} table(s), {sum(self.rows.values())} row(s), "
            f"{self.sequences} sequence(s); revision and row counts "
            "verified; placement switched; source dropped",
            f"writes to {self.schema} waited {self.frozen:.2f}s "
            f"(the move took {self.seconds:.2f}s)"]
        if self.caught_up:
            lines.append(
                f"the copy was brought to {','.join(self.caught_up)}, the "
                f"tenant head of {self.target}'s other tenants (a run "
                "had migrated them meanwhile)")
        if self.attempts > 1:
            lines.append(f"{self.attempts} attempts: a migration of the "
                         "tenant came first")
        return "\n".join(lines)


def ensure_moves_table(connection, shared_schema):
    """Create the moves table if missing (in ``connection``'s transaction;
    concurrent creators wait for each other)."""
    table = moves_table(shared_schema)
    ensure_own_table(connection, table, _DDL.format(table=table),
                     shared_schema + ".moves")


def read_moves(connection, shared_schema):
    """Every row of the moves table (none without the table), as
    :class:`Move`."""
    table = moves_table(shared_schema)
    if not connection.execute(text("SELECT to_regclass(:t) IS NOT NULL"),
                              {"t": table}).scalar():
        return []
    return [Move(*row) for row in connection.exec_driver_sql(
        f"SELECT schema_name, source, target, fenced_name FROM {table} "
        "ORDER BY schema_name")]


def live_moves(connection, shared_schema):
    """The tenants a move is working on right now (``connection`` is to
    the control database): a row of the moves table whose move lock a
    session holds. Two names may share a lock key; that only makes a run
    leave one more tenant to its last pass."""
    moves = read_moves(connection, shared_schema)
    if not moves:
        return set()
    held = {key for (key,) in connection.exec_driver_sql(
        "SELECT objid::bigint FROM pg_catalog.pg_locks "
        f"WHERE locktype = 'advisory' AND classid = {MOVE_LOCK} "
        "AND objsubid = 2 AND granted AND database = (SELECT oid FROM "
        "pg_catalog.pg_database WHERE datname = current_database())")}
    return {move.schema for move in moves if lock_key(move.schema) in held}


def move_tenant(migrator, name, to, *, wait=60.0):
    """Move the tenant ``name`` to the database ``to`` of ``migrator``'s
    fleet, as the module docstring tells; return a :class:`MoveReport`.

    ``wait``: seconds to wait for the fleet's provisioning lock (a run's
    last look at the tenants) and, under the freeze, for writes in flight
    to the tenant's tables. Bad arguments (not a fleet, an unknown tenant
    or database, the tenant's own database) are a
    :class:`~.errors.UsageError` and change nothing; a move that does not
    finish is :class:`~.errors.MoveFailed`, saying where the tenant is."""
    fleet = getattr(migrator, "fleet", None)
    if fleet is None:
        raise UsageError("move-tenant is for a fleet: "
                         "tenantmigrate.databases is not set")
    settings = fleet.settings
    if settings.app_keeps_placements:
        raise ConfigurationError(
            "tenantmigrate.placement_query or placement_source is set: "
            "placements are the "
            "app's to keep, so this package cannot switch one; copy the "
            "tenant yourself and update your placement")
    schema = validate_schema_name(name, settings.shared_schema)
    if to not in fleet.urls:
        raise UsageError(f"--to {to}: unknown database {to!r}: "
                         "tenantmigrate.databases lists "
                         + ", ".join(fleet.names))
    source = _placed_on(fleet, schema)
    if source == to:
        raise UsageError(f"--to {to}: tenant {schema} is on database "
                         f"{to} already; nothing to move")
    fleet.ensure_table()
    control = fleet.database(fleet.control)
    with control.connect(control.run_engine) as connection:
        with connection.begin():
            ensure_moves_table(connection, settings.shared_schema)
    return _Mover(fleet, schema, source, to, wait).run()


def _placed_on(fleet, schema):
    """The database holding ``schema``, or a UsageError."""
    where, unplaced = fleet.all_tenants()
    if schema in where:
        return where[schema]
    if schema in unplaced:
        raise UsageError(f"tenant {schema} cannot be moved: "
                         f"{unplaced[schema]}")
    raise UsageError(f"unknown tenant {schema!r}: the tenant source does "
                     "not list it on any database of the fleet (see "
                     "'tenant-migrate <ini> current --verbose')")


class _Mover:
    """One move (module docstring); :meth:`run` does it."""

    def __init__(self, fleet, schema, source, target, wait):
        self.fleet = fleet
        self.settings = fleet.settings
        self.schema = schema
        self.control = fleet.database(fleet.control)
        self.source = fleet.database(source)
        self.target = fleet.database(target)
        self.wait_ms = int(wait * 1000)
        self.move = Move(schema, source, target,
                         MOVED_PREFIX + secrets.token_hex(8))
        self.report = MoveReport(schema, source, target)
        #: Whether the schema on the target is this move's (not found
        #: there before it).
        self.copy_ours = False

    def run(self):
        started = time.monotonic()
        with self.control.connect(self.control.run_engine) as hold:
            self._lock(hold)
            self._check(hold)
            self._record_intent(hold)
            try:
                self._attempts()
                self._switch(hold)
            except BaseException as exc:
                self._undo(exc)
                raise
            self._finish(hold)
        self.report.seconds = time.monotonic() - started
        return self.report

    # 1. Locks, checks and the intent, on the control database.

    def _lock(self, hold):
        shared = self.settings.shared_schema
        hold.exec_driver_sql(f"SET lock_timeout = {self.wait_ms}")
        try:
            hold.exec_driver_sql(
                f"SELECT pg_advisory_lock_shared({PROVISIONING_LOCK}, "
                f"{lock_key(shared)})")
        except DBAPIError as exc:
            raise MoveFailed(
                f"moving {self.schema}: the fleet's provisioning lock was "
                f"held for {self.wait_ms / 1000:g}s (a run's last look at "
                "the tenants, or 'placements --repair'): "
                f"{describe_error(exc.orig or exc)}; nothing was changed, "
                "try again") from None
        taken = hold.exec_driver_sql(
            f"SELECT pg_try_advisory_lock({MOVE_LOCK}, "
            f"{lock_key(self.schema)})").scalar()
        hold.commit()
        if not taken:
            raise UsageError(f"tenant {self.schema} is being moved "
                             "already; nothing was changed")

    def _check(self, hold):
        """Under the locks: the tenant is still where it was, no earlier
        move of it is left, the target has no schema of its name."""
        shared = self.settings.shared_schema
        moves = {m.schema: m for m in read_moves(hold, shared)}
        placed = hold.execute(text(
            f"SELECT database FROM {placements_table(shared)} "
            "WHERE schema_name = :schema"), {"schema": self.schema}).scalar()
        hold.commit()
        earlier = moves.get(self.schema)
        if earlier is not None:
            raise UsageError(
                f"a move of {self.schema} from {earlier.source} to "
                f"{earlier.target} was cut short: run 'tenant-migrate <ini> "
                "placements --repair' first; nothing was changed")
        if placed is not None and placed != self.move.source:
            raise UsageError(
                f"tenant {self.schema} was placed on {placed} meanwhile; "
                "nothing was changed, try again")
        if _exists(self.target, self.schema):
            raise UsageError(
                f"--to {self.move.target}: that database has a schema named "
                f"{self.schema} already; nothing was changed")
        if not _exists(self.source, self.schema):
            raise MoveFailed(
                f"tenant {self.schema} is placed on {self.move.source}, "
                "which has no such schema: see 'tenant-migrate <ini> "
                "placements'; nothing was changed")

    def _record_intent(self, hold):
        """C1."""
        shared = self.settings.shared_schema
        move = self.move
        with hold.begin():
            hold.execute(text(
                f"INSERT INTO {placements_table(shared)} (schema_name, "
                "database) VALUES (:schema, :source) "
                "ON CONFLICT (schema_name) DO NOTHING"),
                {"schema": move.schema, "source": move.source})
            hold.execute(text(
                f"INSERT INTO {moves_table(shared)} (schema_name, source, "
                "target, fenced_name) VALUES (:schema, :source, :target, "
                ":fenced)"), {"schema": move.schema, "source": move.source,
                              "target": move.target,
                              "fenced": move.fenced_name})

    # 2-5. The copy and the fence.

    def _attempts(self):
        for attempt in range(1, MAX_ATTEMPTS + 1):
            self.report.attempts = attempt
            if self._attempt():
                return
            log.info("moving %s: a migration of it waited for the copy; "
                     "starting again after it", self.schema)
        raise MoveFailed(
            f"moving {self.schema}: a migration of it came first "
            f"{MAX_ATTEMPTS} times while it was copied; nothing was "
            f"changed, it is on {self.move.source}: try again after the run")

    def _attempt(self):
        """One copy and fence; false if it was given up for a migration
        of the tenant that waited for it."""
        heads = self._source_heads()
        copy = self.target.connect(self.target.run_engine)
        frozen = None
        try:
            copy.begin()
            self._build(copy, heads)
            frozen = self.source.run_connection("move")
            started = time.monotonic()
            tables = self._freeze(frozen)
            now = _versions(frozen, self.schema, self.settings)
            if now != heads:  # migrated since it was read: build again
                copy.rollback()
                copy.begin()
                self._build(copy, now)
                heads = now
            self.report.heads = heads
            self._copy(frozen, copy, tables)
            self._catch_up(copy, heads)
            grant_tenant(copy, self.settings, self.schema)
            copy.commit()  # C2
            self.copy_ours = True
            _reached("copied")
            if not self._fence(frozen, tables):
                self._drop_copy()
                return False
            self.report.frozen = time.monotonic() - started
            _reached("renamed")
            return True
        finally:
            if frozen is not None:
                frozen.close()  # an open transaction dies with it
            copy.close()

    def _source_heads(self):
        with self.source.connect(self.source.run_engine) as connection:
            return self.source.read_versions(
                connection, [self.schema], workers=1)[self.schema].heads

    def _build(self, copy, heads):
        """Step 2: the schema on the target, at ``heads``."""
        for sql in _COPY_SETTINGS:
            copy.exec_driver_sql(sql)
        try:
            create_schema(self.target, copy, self.schema)
        except DBAPIError as exc:
            raise MoveFailed(
                f"moving {self.schema}: creating it on {self.move.target} "
                f"failed: {describe_error(exc.orig or exc)}") from None
        copy.exec_driver_sql(tenant_lock_sql(self.schema))
        for head in heads:
            try:
                migrate_in_transaction(self.target, copy, self.schema,
                                       f"tenant@{head}")
            except ScriptFailed as exc:
                raise MoveFailed(
                    f"moving {self.schema}: its revisions failed on "
                    f"{self.move.target} at {exc.revision or '?'}: "
                    f"{describe_error(exc.error)} (is the shared schema of "
                    f"{self.move.target} at its head?)") from None

    def _freeze(self, frozen):
        """Step 3: the tenant's lock, then its tables, in the source's
        transaction; returns the tables as :data:`_TABLES` reads them."""
        schema = quote_schema(self.schema)
        send_script(frozen, "; ".join(
            ["BEGIN", *_COPY_SETTINGS, "SET LOCAL lock_timeout = 0",
             tenant_lock_sql(self.schema),
             f"SET LOCAL lock_timeout = {self.wait_ms}"]))
        if not frozen.execute(_SCHEMA_EXISTS,
                              {"schema": self.schema}).scalar():
            raise MoveFailed(f"tenant {self.schema} was dropped from "
                             f"{self.move.source} meanwhile")
        tables = frozen.execute(_TABLES, {"schema": self.schema}).all()
        if tables:
            names = ", ".join(f"{schema}.{quote_schema(t[0])}"
                              for t in tables)
            try:
                send_script(frozen,
                            f"LOCK TABLE {names} IN EXCLUSIVE MODE")
            except ScriptFailed as exc:
                raise MoveFailed(
                    f"moving {self.schema}: its tables could not be frozen "
                    f"within {self.wait_ms / 1000:g}s (transactions writing "
                    f"to them): {describe_error(exc.error)}; nothing was "
                    "changed") from None
        return tables

    def _copy(self, frozen, copy, tables):
        """Step 4: rows and sequences, then the checks."""
        schema = self.schema
        here = {t[0]: (t[1], t[3]) for t in tables}
        there = {t[0]: (t[1], t[3]) for t in copy.execute(
            _TABLES, {"schema": schema}).all()}
        sequences = [r[0] for r in frozen.execute(
            _SEQUENCES, {"schema": schema})]
        made = [r[0] for r in copy.execute(_SEQUENCES, {"schema": schema})]
        if here != there or sequences != made:
            raise MoveFailed(
                f"moving {schema}: its tables on {self.move.source} differ "
                f"from what its revision makes ({_difference(here, there)}"
                f"{'; sequences differ' if sequences != made else ''}): "
                f"see 'tenant-migrate <ini> doctor --database "
                f"{self.move.source}'; nothing was changed")
        version_table = self.settings.version_table
        columns = {t[0]: t[2] for t in tables if t[0] != version_table}
        kinds = {t[0]: t[1] for t in tables}
        references = frozen.execute(_REFERENCES, {"schema": schema}).all()
        try:
            order = _referenced_first(columns, references)
        except ValueError as exc:
            raise MoveFailed(f"moving {schema}: {exc}") from None
        triggers = copy.execute(_TRIGGERS, {"schema": schema}).all()
        self._triggers(copy, triggers, "DISABLE")
        if order:
            # What the revisions' data steps wrote into the new schema:
            # the source's rows replace it.
            copy.exec_driver_sql("TRUNCATE " + ", ".join(
                f"{quote_schema(schema)}.{quote_schema(table)}"
                for table in order))
        for table in order:
            self._copy_table(frozen, copy, table, columns[table],
                             kinds[table])
        self._triggers(copy, triggers, None)
        for sequence in sequences:
            name = f"{quote_schema(schema)}.{quote_schema(sequence)}"
            value, called = frozen.exec_driver_sql(
                f"SELECT last_value, is_called FROM {name}").one()
            copy.exec_driver_sql(
                f"SELECT setval({quote_literal(name)}, {int(value)}, "
                f"{'true' if called else 'false'})")
        self.report.sequences = len(sequences)
        self._verify(frozen, copy, order, kinds)

    def _copy_table(self, frozen, copy, table, columns, kind):
        if not columns:
            return
        name = f"{quote_schema(self.schema)}.{quote_schema(table)}"
        listed = ", ".join(columns)
        only = "" if kind == "p" else "ONLY "
        with tempfile.SpooledTemporaryFile(_SPOOL_BYTES) as rows:
            out = frozen.connection.driver_connection.cursor()
            into = copy.connection.driver_connection.cursor()
            try:
                out.copy_expert(
                    f"COPY (SELECT {listed} FROM {only}{name}) TO STDOUT "
                    "(ENCODING 'UTF8')",
                    rows)
                rows.seek(0)
                into.copy_expert(f"COPY {name} ({listed}) FROM STDIN "
                                 "(ENCODING 'UTF8')", rows)
            except Exception as exc:
                raise MoveFailed(
                    f"moving {self.schema}: copying table {table} to "
                    f"{self.move.target} failed: {_why(exc)} "
                    f"(the shared tables of {self.move.target} must hold "
                    "the rows the tenant's refer to); nothing was "
                    "changed") from None
            finally:
                out.close()
                into.close()

    def _triggers(self, copy, triggers, disable):
        """The target's own triggers stay off while rows come in: the
        rows are copies, not new writes."""
        for table, trigger, enabled in triggers:
            verb = disable or _ENABLE.get(enabled, "ENABLE")
            copy.exec_driver_sql(
                f"ALTER TABLE {quote_schema(self.schema)}."
                f"{quote_schema(table)} {verb} TRIGGER "
                f"{quote_schema(trigger)}")

    def _verify(self, frozen, copy, tables, kinds):
        """The version rows and every table's row count, on both sides."""
        here = _versions(frozen, self.schema, self.settings)
        there = _versions(copy, self.schema, self.settings)
        if here != there:
            raise MoveFailed(
                f"moving {self.schema}: the copy is at {','.join(there)}, "
                f"the source at {','.join(here)}; nothing was changed")
        counts = {}
        for table in tables:
            name = f"{quote_schema(self.schema)}.{quote_schema(table)}"
            only = "" if kinds[table] == "p" else "ONLY "
            sql = f"SELECT count(*) FROM {only}{name}"
            rows = frozen.exec_driver_sql(sql).scalar()
            copied = copy.exec_driver_sql(sql).scalar()
            if rows != copied:
                raise MoveFailed(
                    f"moving {self.schema}: table {table} has {rows} row(s) "
                    f"on {self.move.source} and {copied} in the copy; "
                    "nothing was changed")
            counts[table] = rows
        self.report.rows = counts

    def _catch_up(self, copy, heads):
        """A run already done with the target's tenants left them at its
        tenant head: the copy goes there too (nobody else would take it
        there in that run; the source's copy is never migrated)."""
        recorded = recorded_tenant_head(copy, self.settings.shared_schema)
        newer = older_than_recorded(tuple(heads), recorded)
        if not newer:
            return
        try:
            for head in newer:
                self.target.script.get_revision(head)
        except Exception:
            log.warning("moving %s: %s records tenant head %s, which this "
                        "code does not know; the copy stays at %s",
                        self.schema, self.move.target, ",".join(newer),
                        ",".join(heads))
            return
        for head in newer:
            try:
                migrate_in_transaction(self.target, copy, self.schema,
                                       f"tenant@{head}")
            except ScriptFailed as exc:
                raise MoveFailed(
                    f"moving {self.schema}: bringing the copy to "
                    f"{self.move.target}'s tenant head {head} failed at "
                    f"{exc.revision or '?'}: {describe_error(exc.error)}; "
                    "nothing was changed") from None
        self.report.caught_up = tuple(newer)

    def _fence(self, frozen, tables):
        """Step 5, C3: the source renamed and committed, unless a
        migration of the tenant waits for its lock (false then)."""
        now = frozen.execute(_TABLES, {"schema": self.schema}).all()
        if [t[0] for t in now] != [t[0] for t in tables]:
            raise MoveFailed(f"moving {self.schema}: a table was created in "
                             "it during the copy; nothing was changed, "
                             "try again")
        waiting = (
            "SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' "
            f"AND classid = {TENANT_LOCK} AND objid = "
            f"{lock_key(self.schema)} AND objsubid = 2 AND NOT granted AND "
            "database = (SELECT oid FROM pg_catalog.pg_database "
            "WHERE datname = current_database())")
        try:
            send_script(frozen, (
                f"DO $tm$ BEGIN IF EXISTS ({waiting}) THEN RAISE EXCEPTION "
                f"'waited for' USING ERRCODE = '{_WAITED_FOR}'; END IF; "
                "END $tm$; "
                f"ALTER SCHEMA {quote_schema(self.schema)} RENAME TO "
                f"{quote_schema(self.move.fenced_name)}; COMMIT"))
        except ScriptFailed as exc:
            if sqlstate(exc.error) != _WAITED_FOR:
                raise
            send_script(frozen, "ROLLBACK")
            return False
        return True

    def _drop_copy(self):
        with self.target.connect(self.target.run_engine) as connection:
            with connection.begin():
                connection.exec_driver_sql(
                    f"DROP SCHEMA {quote_schema(self.schema)} CASCADE")
        self.copy_ours = False

    # 6-7. The switch, and the end.

    def _switch(self, hold):
        """C4."""
        with hold.begin():
            switched = hold.execute(text(
                f"UPDATE {placements_table(self.settings.shared_schema)} "
                "SET database = :target, placed = now() "
                "WHERE schema_name = :schema AND database = :source"),
                {"schema": self.schema, "source": self.move.source,
                 "target": self.move.target}).rowcount
            if switched != 1:
                raise MoveFailed(f"moving {self.schema}: its placement "
                                 "changed during the move")
        _reached("switched")

    def _finish(self, hold):
        """C5 and C6: what is left of the source, then the intent."""
        try:
            _drop_schema(self.source, self.move.fenced_name)
        except Exception as exc:
            raise MoveFailed(
                f"tenant {self.schema} is on {self.move.target} now, but its "
                f"old copy on {self.move.source} ({self.move.fenced_name}) "
                f"could not be dropped: {_why(exc)}; 'tenant-migrate <ini> "
                "placements --repair' drops it") from None
        _forget(hold, self.settings.shared_schema, self.schema)

    def _undo(self, exc):
        """The move failed after its intent: settle it from what is
        committed (as :func:`settle` would), then say where the tenant
        is. An error of this package says so itself; others are wrapped.
        """
        try:
            where = survey(self.fleet, self.move)
            steps = remedy(self.move, where)
            if steps is None:
                raise MoveFailed("the databases do not say how it ended")
            if not self.copy_ours:  # a schema found there is not ours
                steps = [step for step in steps if step != DROP_COPY]
            apply_remedy(self.fleet, self.move, steps)
        except Exception as problem:
            raise MoveFailed(
                f"moving {self.schema} failed ({_why(exc)}), and settling "
                f"it failed too ({_why(problem)}): run 'tenant-migrate "
                "<ini> placements --repair'") from exc
        if isinstance(exc, Exception) and not isinstance(
                exc, TenantMigrateError):
            raise MoveFailed(
                f"moving {self.schema} failed: {_why(exc)}; it is on "
                f"{where.placement}") from exc


def _why(exc):
    return describe_error(getattr(exc, "orig", None)
                          or getattr(exc, "error", None) or exc)


def _exists(member, schema):
    with member.connect(member.run_engine) as connection:
        return connection.execute(_SCHEMA_EXISTS, {"schema": schema}).scalar()


def _versions(connection, schema, settings):
    from .versions import read_schema_versions
    return read_schema_versions(connection, [schema],
                                settings.version_table,
                                commit=False)[schema].heads


def _difference(here, there):
    for table in sorted(set(here) | set(there)):
        if table not in there:
            return f"table {table} is not made by the revisions"
        if table not in here:
            return f"table {table} is missing"
        if here[table] != there[table]:
            return f"table {table}'s columns differ"
    return "the same tables"


def _drop_schema(member, schema):
    with member.connect(member.run_engine) as connection:
        with connection.begin():
            connection.exec_driver_sql(
                f"DROP SCHEMA IF EXISTS {quote_schema(schema)} CASCADE")


def _forget(connection, shared_schema, schema):
    with connection.begin():
        connection.execute(text(
            f"DELETE FROM {moves_table(shared_schema)} "
            "WHERE schema_name = :schema"), {"schema": schema})


# Settling a move cut short: what placements --repair does with a row of
# the moves table, and what a failed move does with its own.

RENAME_BACK = "rename back"
DROP_COPY = "drop copy"
DROP_FENCED = "drop fenced"
FORGET = "forget"


@dataclass
class Where:
    """What the databases hold of a :class:`Move`."""

    placement: str = None
    #: The schema under its own name on the source.
    original: bool = False
    #: The source schema under its fenced name.
    fenced: bool = False
    #: The schema on the target.
    copy: bool = False


def survey(fleet, move):
    """A :class:`Where` for ``move``; raises
    :class:`~.errors.DatabaseUnavailable` when a database cannot tell."""
    control = fleet.database(fleet.control)
    with control.connect(control.run_engine) as connection:
        placement = connection.execute(text(
            f"SELECT database FROM "
            f"{placements_table(fleet.settings.shared_schema)} "
            "WHERE schema_name = :schema"), {"schema": move.schema}).scalar()
    source = fleet.database(move.source)
    target = fleet.database(move.target)
    return Where(placement, _exists(source, move.schema),
                 _exists(source, move.fenced_name),
                 _exists(target, move.schema))


def remedy(move, where):
    """The steps that finish or undo ``move`` from ``where``, in order, or
    ``None`` when the databases do not say (a person must look).

    Placed on the source: the source is the tenant (renamed back if it was
    fenced); the copy on the target is dropped. Placed on the target (the
    switch committed, so the copy was complete): what is left of the
    source is dropped. Never the only copy."""
    if where.placement == move.source:
        if where.original == where.fenced:
            return None  # both, or neither: not what a move leaves
        steps = [] if where.original else [RENAME_BACK]
        if where.copy:
            steps.append(DROP_COPY)
        return steps + [FORGET]
    if where.placement == move.target and where.copy and not where.original:
        return ([DROP_FENCED] if where.fenced else []) + [FORGET]
    return None


def describe(move, where, steps):
    """What :func:`remedy`'s steps do, for people."""
    if steps is None:
        return None
    said = {RENAME_BACK: f"rename {move.fenced_name} back to {move.schema} "
                         f"on {move.source}",
            DROP_COPY: f"drop the copy on {move.target}",
            DROP_FENCED: f"drop the old copy ({move.fenced_name}) on "
                         f"{move.source}",
            FORGET: "forget the move"}
    where_it_is = (f"it stays on {move.source}"
                   if where.placement == move.source
                   else f"it is on {move.target}")
    return where_it_is + ": " + ", ".join(said[step] for step in steps)


def settle(fleet, move):
    """Finish or undo ``move`` (cut short) as :func:`remedy` says; returns
    the steps taken, or ``None`` if it cannot be told how."""
    steps = remedy(move, survey(fleet, move))
    if steps is not None:
        apply_remedy(fleet, move, steps)
    return steps


def apply_remedy(fleet, move, steps):
    """Take :func:`remedy`'s ``steps`` for ``move``, in order."""
    source = fleet.database(move.source)
    for step in steps:
        if step == RENAME_BACK:
            with source.connect(source.run_engine) as connection:
                with connection.begin():
                    connection.exec_driver_sql(
                        f"ALTER SCHEMA {quote_schema(move.fenced_name)} "
                        f"RENAME TO {quote_schema(move.schema)}")
        elif step == DROP_COPY:
            _drop_schema(fleet.database(move.target), move.schema)
        elif step == DROP_FENCED:
            _drop_schema(source, move.fenced_name)
        elif step == FORGET:
            control = fleet.database(fleet.control)
            with control.connect(control.run_engine) as connection:
                _forget(connection, fleet.settings.shared_schema,
                        move.schema)


def interrupted_moves(fleet, connection):
    """For :func:`.placement.repair` (no move is under way then): every
    row of the moves table as ``(move, database, action, steps)``;
    ``action`` and ``steps`` are ``None`` when a person must look."""
    found = []
    for move in read_moves(connection, fleet.settings.shared_schema):
        if move.source not in fleet.urls or move.target not in fleet.urls:
            found.append((move, move.source, None, None))
            continue
        try:
            where = survey(fleet, move)
        except DatabaseUnavailable:
            found.append((move, move.target, None, None))
            continue
        steps = remedy(move, where)
        database = (move.target if where.placement == move.target
                    else move.source)
        found.append((move, database, describe(move, where, steps), steps))
    return found
