"""A fleet: tenants spread over several PostgreSQL databases.

With ``tenantmigrate.databases`` set, the migrator built from the settings
(:class:`~.migrator.TenantMigrator`, its URL the control database's) holds
a :class:`Fleet`. The fleet knows

- the databases, each reached through a :class:`DatabaseMigrator`: a
  migrator for one database whose tenants are those placed on it. It
  shares the revision map and the captured programs with the others, so a
  history is loaded once and each program is captured once per run, on the
  control database;
- where each tenant is placed: a row of the package's placements table on
  the control database (kept by provisioning, :mod:`.fleetprovisioning`),
  or the ``placement_query`` setting's rows, or ``placement_source``'s
  pairs;
- which tenants there are: the tenant source, run on the control database
  (a query or a callable), or on each database (a prefix or a pattern: a
  schema found there and placed nowhere else is that database's).

Runs over the fleet are :mod:`.fleetrun`'s.
"""
import dataclasses
import threading

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from .errors import ConfigurationError, UsageError
from .migrator import TenantMigrator
from .names import quote_schema
from .reserved import INTENTS_TABLE, PLACEMENTS_TABLE
from .tenants import discover_tenant_schemas

#: Tenant sources that read the catalog, so run on each database.
CATALOG_SOURCES = ("tenant_schema_prefix", "tenant_schema_pattern")

_DDL = """
CREATE TABLE IF NOT EXISTS {placements} (
    schema_name text PRIMARY KEY,
    database text NOT NULL,
    placed timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {intents} (
    schema_name text PRIMARY KEY,
    database text NOT NULL,
    token text,
    started timestamptz NOT NULL DEFAULT now()
)
"""


def placements_table(shared_schema):
    return f"{quote_schema(shared_schema)}.{quote_schema(PLACEMENTS_TABLE)}"


def intents_table(shared_schema):
    return f"{quote_schema(shared_schema)}.{quote_schema(INTENTS_TABLE)}"


def ensure_own_table(connection, table, ddl, key):
    """Run ``ddl`` unless ``table`` exists (in ``connection``'s
    transaction; concurrent creators wait for each other on the advisory
    lock ``key`` names)."""
    from .reserved import PROVISIONING_LOCK, lock_key
    if connection.execute(text("SELECT to_regclass(:t) IS NOT NULL"),
                          {"t": table}).scalar():
        return
    connection.exec_driver_sql(
        f"SELECT pg_advisory_xact_lock({PROVISIONING_LOCK}, "
        f"{lock_key(key)})")
    connection.exec_driver_sql(ddl)


def ensure_placements_table(connection, shared_schema):
    """Create the placement tables if missing (:func:`ensure_own_table`)."""
    table = intents_table(shared_schema)
    ensure_own_table(connection, table, _DDL.format(
        placements=placements_table(shared_schema), intents=table),
        shared_schema + ".placements")


def read_placements(connection, settings):
    """``{schema: database}`` as the control database says (the
    ``placement_query`` or ``placement_source`` setting, else the
    placements table)."""
    if settings.placement_source is not None:
        return _from_placement_source(settings.placement_source, connection)
    if settings.placement_query is not None:
        query = settings.placement_query.strip().rstrip(";")
        rows = connection.execution_options(
            no_parameters=True).exec_driver_sql(
            f"SELECT * FROM (\n{query}\n) AS tenantmigrate_placements")
        return {row[0]: row[1] for row in rows}
    table = placements_table(settings.shared_schema)
    if not connection.execute(text("SELECT to_regclass(:t) IS NOT NULL"),
                              {"t": table}).scalar():
        return {}
    return {schema: database for schema, database in
            connection.exec_driver_sql(
                f"SELECT schema_name, database FROM {table}")}


def _from_placement_source(source, connection):
    name = "tenantmigrate.placement_source"
    try:
        pairs = dict(source(connection))
    except DBAPIError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"setting {name} failed: {type(exc).__name__}: {exc}; it must "
            "return (schema, database) pairs") from None
    bad = next((k for k, v in pairs.items()
                if not isinstance(k, str) or not isinstance(v, str)), None)
    if bad is not None:
        raise ConfigurationError(
            f"setting {name} gave {bad!r} -> {pairs[bad]!r}; schema and "
            "database names are strings")
    return pairs


class Fleet:
    """The databases of a fleet, and where its tenants are
    (see the module docstring)."""

    def __init__(self, migrator):
        #: The migrator built from the settings (the control database's).
        self.migrator = migrator
        self.settings = migrator.settings
        self.urls = dict(self.settings.databases)
        self.names = list(self.urls)
        self.control = self.settings.control_database
        self._members = {}
        self._lock = threading.Lock()

    def database(self, name):
        """The :class:`DatabaseMigrator` of ``name`` (made once)."""
        if name not in self.urls:
            raise UsageError(
                f"unknown database {name!r}: tenantmigrate.databases lists "
                + ", ".join(self.names))
        with self._lock:
            member = self._members.get(name)
            if member is None:
                member = self._members[name] = DatabaseMigrator(self, name)
            return member

    def members(self, names=None):
        return [self.database(name) for name in (names or self.names)]

    def ensure_table(self):
        """The placements table on the control database, made if missing
        (unless ``placement_query`` says where tenants are)."""
        if self.settings.app_keeps_placements:
            return
        control = self.database(self.control)
        with control.connect(control.run_engine) as connection:
            with connection.begin():
                ensure_placements_table(connection,
                                        self.settings.shared_schema)

    def placements(self):
        """``{schema: database}``: where each tenant is placed."""
        control = self.database(self.control)
        with control.connect(control.run_engine) as connection:
            return read_placements(connection, self.settings)

    @property
    def catalog_source(self):
        return self.settings.tenant_source_setting in CATALOG_SOURCES

    def listed_tenants(self):
        """What a query or callable source lists, on the control
        database."""
        control = self.database(self.control)
        with control.connect(control.run_engine) as connection:
            return discover_tenant_schemas(connection, self.settings)

    def tenants_on(self, name, connection, placements=None):
        """The tenants of database ``name`` (``connection`` is to it),
        but those a move is copying right now (:mod:`.moving`): a run's
        last pass, which no move overlaps, finds them where it left them."""
        if placements is None:
            placements = self.placements()
        moving = self.moving()
        if self.catalog_source:
            # Not yet a tenant: a sign-up's schema until it is placed.
            moving = moving | self.signing_up()
            found = discover_tenant_schemas(connection, self.settings)
            return [schema for schema in found if schema not in moving
                    and placements.get(schema, name) == name]
        return [schema for schema in self.listed_tenants()
                if placements.get(schema) == name and schema not in moving]

    def signing_up(self):
        """Schemas of sign-ups under way (or cut short): an intent, no
        placement yet (:mod:`.placement`)."""
        if self.settings.app_keeps_placements:
            return set()
        shared = self.settings.shared_schema
        control = self.database(self.control)
        with control.connect(control.run_engine) as connection:
            if not connection.execute(
                    text("SELECT to_regclass(:t) IS NOT NULL"),
                    {"t": intents_table(shared)}).scalar():
                return set()
            return set(connection.exec_driver_sql(
                f"SELECT i.schema_name FROM {intents_table(shared)} i "
                f"WHERE NOT EXISTS (SELECT FROM {placements_table(shared)} "
                "p WHERE p.schema_name = i.schema_name)").scalars())

    def moving(self):
        """The tenants under a live move (:func:`.moving.live_moves`)."""
        from .moving import live_moves
        if self.settings.app_keeps_placements:
            return set()
        control = self.database(self.control)
        with control.connect(control.run_engine) as connection:
            return live_moves(connection, self.settings.shared_schema)

    def all_tenants(self):
        """Every tenant of the fleet, with where it is:
        ``({schema: database}, unplaced)``. ``unplaced`` maps a tenant the
        source lists but no (known) database holds to the reason. A
        database that cannot be reached contributes what its placements
        say."""
        placements = self.placements()
        where, unplaced = {}, {}
        if self.catalog_source:
            return self._found_in_catalogs(placements)
        for schema in self.listed_tenants():
            database = placements.get(schema)
            if database is None:
                unplaced[schema] = (
                    "placed on no database: run 'tenant-migrate <ini> "
                    "placements --repair'")
            elif database not in self.urls:
                unplaced[schema] = (
                    f"placed on database {database!r}, which "
                    "tenantmigrate.databases does not list")
            else:
                where[schema] = database
        return where, unplaced

    def _found_in_catalogs(self, placements):
        """:meth:`all_tenants` for a catalog source: each database's
        schemas, where their placement (if any) agrees."""
        held, where, unplaced = {}, {}, {}
        skip = self.signing_up()
        for member in self.members():
            try:
                with member.connect(member.run_engine) as connection:
                    found = discover_tenant_schemas(connection,
                                                    self.settings)
            except Exception:
                found = [s for s, d in placements.items()
                         if d == member.database_name]
            for schema in found:
                if schema not in skip:
                    held.setdefault(schema, []).append(member.database_name)
        for schema, databases in held.items():
            placed = placements.get(schema)
            if placed in databases or (placed is None
                                       and len(databases) == 1):
                where[schema] = placed or databases[0]
            elif placed is None:
                unplaced[schema] = (
                    f"found on {', '.join(databases)}: run 'tenant-migrate "
                    "<ini> placements'")
            else:
                unplaced[schema] = (
                    f"placed on database {placed!r} but found on "
                    f"{', '.join(databases)}: run 'tenant-migrate <ini> "
                    "placements'")
        return where, unplaced

    def counts(self):
        """``{database: tenants placed there}`` (every listed database,
        rows being created included: they are on their way)."""
        shared = self.settings.shared_schema
        control = self.database(self.control)
        with control.connect(control.run_engine) as connection:
            # Counted by the server: one row per database, not per tenant.
            rows = connection.exec_driver_sql(
                f"SELECT database, count(*) FROM (SELECT database FROM "
                f"{placements_table(shared)} UNION ALL SELECT i.database "
                f"FROM {intents_table(shared)} i WHERE NOT EXISTS (SELECT "
                f"FROM {placements_table(shared)} p WHERE p.schema_name = "
                "i.schema_name)) AS placed GROUP BY database").all()
        counts = dict.fromkeys(self.names, 0)
        counts.update((database, count) for database, count in rows
                      if database in counts)
        return counts

    def close(self):
        for member in self._members.values():
            member.close()


def _share(member, migrator, name):
    """Let ``member`` use ``migrator``'s ``name`` (a reified attribute)."""
    member.__dict__[name] = getattr(migrator, name)


class DatabaseMigrator(TenantMigrator):
    """The migrator of one database of a fleet: its tenants are those
    placed on it; the revision map, env.py's options and the captured
    programs are the fleet's (captured on the control database)."""

    def __init__(self, fleet, name):
        super().__init__(dataclasses.replace(fleet.settings,
                                             url=fleet.urls[name]))
        self.fleet = fleet
        self.database_name = name
        for shared in ("alembic_config", "script", "_env_options",
                       "programs"):
            _share(self, fleet.migrator, shared)

    def discover_tenants(self, connection):
        return self.fleet.tenants_on(self.database_name, connection)

    def moved_away(self, schemas):
        placements = self.fleet.placements()
        elsewhere = {schema: placements[schema] for schema in schemas
                     if placements.get(schema, self.database_name)
                     != self.database_name}
        if not elsewhere:
            return {}
        with self.connect(self.run_engine) as connection:
            here = set(connection.execute(text(
                "SELECT nspname FROM pg_catalog.pg_namespace "
                "WHERE nspname = ANY(:names)"),
                {"names": list(elsewhere)}).scalars())
        return {schema: database for schema, database in elsewhere.items()
                if schema not in here}

    def provisioning_lock_engines(self):
        """The control database's first, then this one's: sign-ups take
        them in that order too."""
        control = self.fleet.database(self.fleet.control)
        if control is self:
            return [self.run_engine]
        return [control.run_engine, self.run_engine]
