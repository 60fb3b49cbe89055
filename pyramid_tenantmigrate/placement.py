"""Placing tenants on a fleet's databases, and repairing placements.

A new tenant of a fleet (:mod:`.fleet`) lives on one database, its
placement row on the control database. They are two servers, so two
transactions; :func:`create_placed_tenant` orders them so that no crash
can leave a tenant that exists without anyone knowing:

1. in the caller's transaction on the control database, the provisioning
   lock is taken shared (held until it commits: a run's last look at the
   tenant list, and :func:`repair`, wait for it);
2. a ``creating`` row is committed on the control database: the intent;
3. the schema is created and brought to the tenant head on the chosen
   database, in a transaction of its own, committed (``TenantCreated`` is
   sent there: ``event.connection`` is that database's, ``event.database``
   its name);
4. the row becomes ``placed`` in the caller's transaction.

The caller's commit makes the tenant a tenant. If the caller rolls back,
the schema made in step 3 is dropped and the row deleted at once (a
listener on the caller's connection). If the process dies between 3 and
the commit, the ``creating`` row is left: :func:`repair` (``tenant-migrate
<ini> placements --repair``) drops the schema it names and deletes it,
once no sign-up is in flight.
"""
import logging
import secrets
import threading
from dataclasses import dataclass, field

from sqlalchemy import event, text

from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    TenantExists,
    UsageError,
)
from .fleet import intents_table, placements_table
from .names import schema_name_problem, validate_schema_name
from .reserved import PROVISIONING_LOCK, SPARE_PREFIX, lock_key
from .tenants import discover_tenant_schemas

log = logging.getLogger(__name__)


def choose_database(fleet, schema, counts=None):
    """The databases a new tenant may go to, best first, by the
    ``placement_policy`` setting."""
    kind, argument = fleet.settings.placement_policy
    if kind == "callable":
        chosen = argument(fleet, schema)
        if chosen not in fleet.urls:
            raise ConfigurationError(
                f"setting tenantmigrate.placement_policy returned "
                f"{chosen!r}, not one of tenantmigrate.databases "
                f"({', '.join(fleet.names)})")
        return [chosen]
    counts = counts if counts is not None else fleet.counts()
    order = {name: index for index, name in enumerate(fleet.names)}
    if kind == "weights":
        candidates = [name for name in fleet.names
                      if argument.get(name, 0) > 0]
        return sorted(candidates, key=lambda name: (
            counts[name] / argument[name], order[name]))
    return sorted(fleet.names, key=lambda name: (counts[name], order[name]))


def _lock_provisioning_shared(connection, shared_schema):
    connection.exec_driver_sql(
        f"SELECT pg_advisory_xact_lock_shared({PROVISIONING_LOCK}, "
        f"{lock_key(shared_schema)})")


def create_placed_tenant(migrator, name, *, connection=None, dbsession=None,
                         transaction_manager=None, registry=None,
                         request=None, database=None):
    """Create the tenant ``name`` on a database of ``migrator``'s fleet
    (``database``, else the placement policy's choice) as the module
    docstring tells. ``connection``/``dbsession`` are the caller's, on the
    control database; without them the placement commits here. Returns
    the database's name."""
    from . import provisioning

    fleet = migrator.fleet
    settings = fleet.settings
    schema = validate_schema_name(name, settings.shared_schema)
    if settings.app_keeps_placements:
        raise ConfigurationError(
            "tenantmigrate.placement_query or placement_source is set: "
            "placements are the app's "
            "to keep, so create tenants on a database of your choosing "
            "(migrator.fleet.database(NAME)) and record it")
    if database is not None:
        fleet.database(database)  # an unknown name is a UsageError
    own = connection is None and dbsession is None
    control = fleet.database(fleet.control)
    fleet.ensure_table()
    if own:
        caller = control.connect()
        caller.begin()
    else:
        caller = dbsession.connection() if dbsession is not None else (
            connection)
    try:
        _lock_provisioning_shared(caller, settings.shared_schema)
        candidates = ([database] if database is not None
                      else choose_database(fleet, schema))
        chosen, token = _create_somewhere(fleet, control, schema,
                                          candidates, registry, request)
        # From here on, the caller's rollback (or a failure before the
        # placement is written) drops what was made.
        _undo_on_rollback(caller, fleet, schema, chosen, token)
        try:
            caller.execute(text(
                f"INSERT INTO {placements_table(settings.shared_schema)} "
                "(schema_name, database) VALUES (:schema, :database)"),
                {"schema": schema, "database": chosen})
            if own:
                caller.commit()
        except BaseException:
            _drop_later(fleet, schema, chosen, token)
            raise
        # The app may scope a session to it at once (a fleet's sessions
        # are bound to the tenant's database: sessions.py).
        migrator.tenant_directory.created(schema, database=chosen)
        if own:
            _forget_intent(control, schema)
        elif dbsession is not None:
            provisioning._mark_changed(dbsession, transaction_manager)
    finally:
        if own:
            caller.close()
    return chosen


def _sign_up_mark(token):
    """The comment a sign-up puts on the schema it makes: only a schema
    carrying its intent's mark is ever dropped for it."""
    return f"tenantmigrate sign-up {token}"


def _create_somewhere(fleet, control, schema, candidates, registry,
                      request):
    """Steps 2 and 3 on the first candidate that can be reached:
    ``(database, token)``."""
    from . import provisioning

    problems = []
    for database in candidates:
        member = fleet.database(database)
        token = _record_intent(control, schema, database)
        try:
            provisioning.create_tenant(
                member, schema, registry=registry, request=request,
                lock_provisioning=member is not control,
                mark=_sign_up_mark(token))
            return database, token
        except DatabaseUnavailable as exc:
            _forget_intent(control, schema)
            problems.append(f"{database}: {exc}")
        except BaseException:
            _forget_intent(control, schema)
            raise
    raise DatabaseUnavailable(
        f"no database of the fleet could take tenant {schema}: "
        + "; ".join(problems))


def _record_intent(control, schema, database):
    """Commit the intent row; return its token."""
    shared = control.shared_schema
    placements, intents = placements_table(shared), intents_table(shared)
    token = secrets.token_hex(8)
    with control.connect(control.run_engine) as connection:
        with connection.begin():
            # Intents of sign-ups that committed are done with.
            connection.exec_driver_sql(
                f"DELETE FROM {intents} i USING {placements} p "
                "WHERE i.schema_name = p.schema_name")
            placed = connection.execute(text(
                f"SELECT 1 FROM {placements} WHERE schema_name = :schema"),
                {"schema": schema}).scalar()
            inserted = not placed and connection.execute(text(
                f"INSERT INTO {intents} (schema_name, database, token) "
                "VALUES (:schema, :database, :token) "
                "ON CONFLICT (schema_name) DO NOTHING RETURNING 1"),
                {"schema": schema, "database": database,
                 "token": token}).scalar()
    if not inserted:
        raise TenantExists(schema)
    return token


def _forget_intent(control, schema):
    try:
        with control.connect(control.run_engine) as connection:
            with connection.begin():
                connection.execute(text(
                    f"DELETE FROM {intents_table(control.shared_schema)} "
                    "WHERE schema_name = :schema"), {"schema": schema})
    except Exception:  # repair() deletes it later
        log.warning("could not delete the placement intent of %s; "
                    "'tenant-migrate <ini> placements --repair' will",
                    schema, exc_info=True)


def _undo_on_rollback(connection, fleet, schema, database, token):
    """When the caller's transaction rolls back, the tenant made on
    ``database`` is dropped and its intent deleted."""
    # Listeners live as long as the connection (one checkout). Each
    # rollback looks again: _drop_created does nothing once the placement
    # committed.
    def rolled_back(conn, *args):
        _drop_later(fleet, schema, database, token)

    for name in ("rollback", "rollback_twophase"):
        event.listen(connection, name, rolled_back)


def _drop_later(fleet, schema, database, token):
    """:func:`_drop_created` in a thread of its own: the listener runs
    just before the caller's rollback, whose transaction may still hold
    locks on the new tenant's tables (a session scoped to it): dropping
    it here and now would wait for the caller, which waits for us."""
    def drop():
        try:
            _drop_created(fleet, schema, database, token)
        except Exception:
            log.warning("tenant %s was rolled back but its schema on %s "
                        "could not be dropped; 'tenant-migrate <ini> "
                        "placements --repair' will", schema, database,
                        exc_info=True)

    threading.Thread(target=drop, name=f"tenantmigrate undo {schema}",
                     daemon=True).start()


def _drop_created(fleet, schema, database, token):
    """Drop the schema of a sign-up that did not commit, and its intent,
    unless its placement committed after all. Only a schema carrying the
    sign-up's mark is dropped (never a tenant that was there before)."""
    from . import provisioning

    control = fleet.database(fleet.control)
    with control.connect(control.run_engine) as connection:
        placed = connection.execute(text(
            f"SELECT 1 FROM {placements_table(control.shared_schema)} "
            "WHERE schema_name = :schema"), {"schema": schema}).scalar()
    if placed:
        return
    member = fleet.database(database)
    with member.connect(member.run_engine) as connection:
        mark = connection.execute(text(
            "SELECT obj_description(oid, 'pg_namespace') FROM "
            "pg_catalog.pg_namespace WHERE nspname = :schema"),
            {"schema": schema}).scalar()
    if token is not None and mark == _sign_up_mark(token):
        try:
            provisioning.drop_tenant(member, schema)
        except UsageError:
            pass  # not there
    _forget_intent(control, schema)


@dataclass
class PlacementFinding:
    """Something :func:`repair` found: ``kind``, the schema, the database
    it concerns, what was (or would be) done, or why nothing can be."""

    kind: str
    schema: str
    database: str = None
    action: str = None
    done: bool = False
    #: An interrupted sign-up's token (its schema's mark).
    token: str = field(default=None, repr=False)
    #: An interrupted move's row and steps (:mod:`.moving`).
    move: tuple = field(default=None, repr=False)

    def to_dict(self):
        return {"kind": self.kind, "schema": self.schema,
                "database": self.database, "action": self.action,
                "done": self.done}


@dataclass
class PlacementReport:
    counts: dict = field(default_factory=dict)
    findings: list = field(default_factory=list)
    unreachable: dict = field(default_factory=dict)
    repaired: bool = False

    @property
    def ok(self):
        return not self.unreachable and all(
            f.done for f in self.findings)

    def to_dict(self):
        return {"ok": self.ok, "counts": self.counts,
                "unreachable": self.unreachable, "repaired": self.repaired,
                "findings": [f.to_dict() for f in self.findings]}

    def render_text(self):
        lines = [f"database {name}: {count} tenant(s)"
                 for name, count in self.counts.items()]
        lines.extend(f"database {name}: UNREACHABLE, {problem}"
                     for name, problem in self.unreachable.items())
        for finding in self.findings:
            verb = "done" if finding.done else (
                "to do" if self.repaired is False and finding.action
                else "needs you")
            lines.append(f"{finding.kind}: {finding.schema}"
                         + (f" on {finding.database}" if finding.database
                            else "")
                         + f" -> {finding.action or 'nothing automatic'} "
                           f"({verb})")
        if not self.findings and not self.unreachable:
            lines.append("every tenant is placed on a database that holds "
                         "it")
        elif not self.repaired and any(f.action for f in self.findings):
            lines.append("run again with --repair to do what is marked "
                         "'to do'")
        return "\n".join(lines)


def repair(migrator, fix=False, lock_wait=60):
    """Compare the placements with what each database holds, and find
    moves cut short (:func:`.moving.remedy`); with ``fix``, mend what can
    be mended (see the module docstring and docs/fleet.rst). Runs while no
    tenant is being created or moved."""
    fleet = migrator.fleet
    settings = fleet.settings
    if settings.app_keeps_placements:
        raise UsageError(
            "placements compares the package's placements table with the "
            "databases; tenantmigrate.placement_query or placement_source "
            "says the app keeps them instead")
    control = fleet.database(fleet.control)
    report = PlacementReport(repaired=fix)
    fleet.ensure_table()
    with control.connect(control.run_engine) as lock_connection:
        lock_connection = lock_connection.execution_options(
            isolation_level="AUTOCOMMIT")
        lock_connection.exec_driver_sql(
            f"SET lock_timeout = {int(lock_wait * 1000)}")
        lock_connection.exec_driver_sql(
            f"SELECT pg_advisory_lock({PROVISIONING_LOCK}, "
            f"{lock_key(settings.shared_schema)})")
        found = _schemas_by_database(fleet, report)
        shared = settings.shared_schema
        with control.connect(control.run_engine) as connection:
            placed = dict(connection.exec_driver_sql(
                f"SELECT schema_name, database FROM "
                f"{placements_table(shared)}").all())
            rows = connection.exec_driver_sql(
                f"SELECT schema_name, database, token FROM "
                f"{intents_table(shared)}").all()
            intents = {schema: database for schema, database, _ in rows}
            tokens = {schema: token for schema, _, token in rows}
            listed = (None if fleet.catalog_source
                      else set(discover_tenant_schemas(connection,
                                                       settings)))
            moving = _move_findings(fleet, connection, report)
        _examine(fleet, report,
                 {s: d for s, d in placed.items() if s not in moving},
                 intents, {d: n - moving for d, n in found.items()},
                 None if listed is None else listed - moving)
        for finding in report.findings:
            finding.token = finding.token or tokens.get(finding.schema)
        if fix:
            for finding in report.findings:
                if finding.action is not None:
                    _apply(fleet, control, finding)
    counts = dict.fromkeys(fleet.names, 0)
    for database in placed.values():
        if database in counts:
            counts[database] += 1
    report.counts = counts
    return report


def _move_findings(fleet, connection, report):
    """Moves cut short (:mod:`.moving`): one finding each; the other
    checks leave their tenants alone. Returns their schemas."""
    from .moving import interrupted_moves
    moved = set()
    for move, database, action, steps in interrupted_moves(fleet,
                                                           connection):
        moved.add(move.schema)
        report.findings.append(PlacementFinding(
            "interrupted move", move.schema, database, action,
            move=(move, steps)))
    return moved


def _schemas_by_database(fleet, report):
    """``{database: set of tenant-like schemas there}`` (the tenant
    source's names for a catalog source, else every schema holding the
    version table)."""
    found = {}
    for member in fleet.members():
        try:
            with member.connect(member.run_engine) as connection:
                if fleet.catalog_source:
                    names = discover_tenant_schemas(connection,
                                                    fleet.settings)
                else:
                    names = [row[0] for row in connection.execute(text(
                        "SELECT n.nspname FROM pg_catalog.pg_class c "
                        "JOIN pg_catalog.pg_namespace n "
                        "ON n.oid = c.relnamespace WHERE c.relname = :t "
                        "AND c.relkind IN ('r', 'p') AND n.nspname <> :s"),
                        {"t": fleet.settings.version_table,
                         "s": fleet.settings.shared_schema})]
        except DatabaseUnavailable as exc:
            report.unreachable[member.database_name] = str(exc)
            continue
        found[member.database_name] = {
            name for name in names if not name.startswith(SPARE_PREFIX)
            and schema_name_problem(name, fleet.settings.shared_schema)
            is None}
    return found


def _examine(fleet, report, placed, intents, found, listed):
    holders = {}
    for database, names in found.items():
        for name in names:
            holders.setdefault(name, []).append(database)
    _intent_findings(report, placed, intents, holders)
    _placement_findings(fleet, report, placed, found, holders)
    _holder_findings(report, placed, intents, holders, listed)


def _intent_findings(report, placed, intents, holders):
    for schema, database in intents.items():
        if schema in placed:
            continue  # a sign-up that committed: nothing to mend
        report.findings.append(PlacementFinding(
            "interrupted sign-up", schema, database,
            f"drop the schema on {database} if it is the one the sign-up "
            "made (never committed as a tenant), and forget it"
            if database in holders.get(schema, ())
            else "forget it"))


def _placement_findings(fleet, report, placed, found, holders):
    for schema, database in placed.items():
        there = holders.get(schema, [])
        if database not in fleet.urls:
            report.findings.append(PlacementFinding(
                "placed on an unknown database", schema, database))
        elif database not in found:
            continue  # unreachable: cannot tell
        elif database not in there:
            others = [d for d in there if d != database]
            report.findings.append(PlacementFinding(
                "placement points at a database without the schema",
                schema, database,
                f"place it on {others[0]}" if len(others) == 1 else None))


def _holder_findings(report, placed, intents, holders, listed):
    for schema, databases in holders.items():
        if schema in placed or schema in intents:
            continue
        if listed is not None and schema not in listed:
            continue  # not a tenant of the source: not ours to touch
        if listed is None and len(databases) == 1:
            continue  # a catalog source: where it is found is its place
        report.findings.append(PlacementFinding(
            "tenant without a placement", schema,
            databases[0] if len(databases) == 1 else ", ".join(databases),
            f"place it on {databases[0]}" if len(databases) == 1 else None))
    if listed is not None:
        for schema in sorted(listed - set(holders) - set(placed)):
            report.findings.append(PlacementFinding(
                "listed tenant found on no database", schema))


def _apply(fleet, control, finding):
    if finding.move is not None:
        from .moving import apply_remedy
        apply_remedy(fleet, *finding.move)
        finding.done = True
        return
    if finding.kind == "interrupted sign-up":
        _drop_created(fleet, finding.schema, finding.database,
                      finding.token)
        finding.done = True
        return
    target = finding.action.rpartition(" ")[2]
    with control.connect(control.run_engine) as connection:
        with connection.begin():
            connection.execute(text(
                f"INSERT INTO {placements_table(control.shared_schema)} "
                "(schema_name, database) VALUES (:schema, :database) "
                "ON CONFLICT (schema_name) DO UPDATE SET database = "
                "excluded.database, placed = now()"),
                {"schema": finding.schema, "database": target})
    finding.done = True
