"""Creating and dropping tenant schemas, in the caller's transaction.

:func:`create_tenant` creates a schema (or renames a spare one made ahead
of time, see :mod:`.spares`), brings it to the tenant head with the same
revisions ``tenant-migrate upgrade`` runs, and sends
:class:`~pyramid_tenantmigrate.events.TenantCreated`. It runs on the
connection it is given, inside the transaction already open there, and
never commits: in a request with pyramid_tm and zope.sqlalchemy the tenant
is committed with the request, or rolled back with it if the request fails
later (PostgreSQL DDL is transactional, so the schema and its tables are
gone then). Without a connection it opens and commits its own transaction.

:func:`drop_tenant` is the explicit opposite; nothing here drops a schema
implicitly. :func:`rename_tenant` and :func:`clone_tenant` run the same
way, each with its event, in which the app updates its tenants table.
"""
import logging

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from .citus import create_schema
from .engine.schema import migrate_in_transaction
from .engine.sql import UNSAFE_NEW_ENUM, quote_literal, tenant_lock_sql
from .engine.transaction import ScriptFailed
from .errors import (
    ProvisioningFailed,
    TenantExists,
    TenantNotFound,
    UsageError,
    describe_error,
    sqlstate,
)
from .events import TenantCloned, TenantCreated, TenantDropped, TenantRenamed
from .isolation import (
    acting_as_tenant,
    drop_tenant_role,
    grant_tenant,
    rename_tenant_role,
)
from .names import quote_schema, validate_schema_name
from .plan import TENANT, branch_heads
from .reserved import PROVISIONING_LOCK, lock_key
from .sessions import tenant_execution_options
from .spares import claim_spare
from .tenanthead import older_than_recorded, recorded_tenant_head

log = logging.getLogger(__name__)

_SCHEMA_EXISTS = text(
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace "
    "WHERE nspname = :schema)")
_DUPLICATE_SCHEMA = "42P06"


def schema_exists(connection, schema):
    """Tell whether ``schema`` exists, as seen inside ``connection``'s
    transaction."""
    return connection.execute(_SCHEMA_EXISTS, {"schema": schema}).scalar()


def create_tenant(migrator, name, *, connection=None, dbsession=None,
                  transaction_manager=None, registry=None, request=None,
                  database=None, lock_provisioning=True, mark=None):
    """Create the tenant schema ``name`` and bring it to the tenant head.

    Where it runs, first match wins:

    - ``dbsession``: on the session's connection, in its transaction, and
      the session is marked changed in ``transaction_manager`` (DDL alone
      does not mark a zope.sqlalchemy session changed, and an unchanged
      session is rolled back at commit);
    - ``connection``: in the transaction the caller has begun on it;
    - neither: in a transaction of its own, committed on success.

    ``name`` must be a valid tenant schema name (else
    :class:`~pyramid_tenantmigrate.errors.InvalidSchemaName`) and must not
    exist (else :class:`~pyramid_tenantmigrate.errors.TenantExists`). A
    failing revision raises
    :class:`~pyramid_tenantmigrate.errors.ProvisioningFailed`; the caller's
    transaction must then be rolled back. With a ``registry`` (or a
    ``request``), :class:`~pyramid_tenantmigrate.events.TenantCreated` is
    sent before returning. Returns the schema name.

    In a fleet (:mod:`.fleet`), the tenant goes to ``database`` or the one
    the placement policy chooses, and the caller's transaction is the
    control database's: :mod:`.placement` tells what its commit and its
    rollback cover. ``lock_provisioning`` false and ``mark`` (a comment
    put on the schema: what a rollback may drop) are for that module.
    """
    if migrator.runs_fleet:
        from .placement import create_placed_tenant
        create_placed_tenant(
            migrator, name, connection=connection, dbsession=dbsession,
            transaction_manager=transaction_manager, registry=registry,
            request=request, database=database)
        return validate_schema_name(name, migrator.shared_schema)
    if database is not None:
        raise UsageError("database= is for a fleet: tenantmigrate.databases "
                         "is not set")

    def work(migrator, schema, connection, registry, request, dbsession):
        _create(migrator, schema, connection, registry, request, dbsession,
                lock_provisioning)
        if mark is not None:
            connection.exec_driver_sql(
                f"COMMENT ON SCHEMA {quote_schema(schema)} IS "
                f"{quote_literal(mark)}")

    return _where_it_runs(work, migrator, name, connection, dbsession,
                          transaction_manager, registry, request)


def drop_tenant(migrator, name, *, connection=None, dbsession=None,
                transaction_manager=None, registry=None, request=None):
    """Drop the tenant schema ``name`` and everything in it.

    Runs where :func:`create_tenant` would. A schema that does not exist is
    :class:`~pyramid_tenantmigrate.errors.TenantNotFound`. The tenant
    source (a row in a tenants table, say) is the app's to update.
    Sends :class:`~pyramid_tenantmigrate.events.TenantDropped`.
    """
    return _where_it_runs(_drop, migrator, name, connection, dbsession,
                          transaction_manager, registry, request)


def rename_tenant(migrator, old, new, *, connection=None, dbsession=None,
                  transaction_manager=None, registry=None, request=None):
    """Rename the tenant schema ``old`` to ``new`` (its tables, data and
    version table go with it). Runs where :func:`create_tenant` would,
    waiting for both names' tenant locks (a migration of ``old`` ends
    first). Sends :class:`~pyramid_tenantmigrate.events.TenantRenamed`.
    SQL that names the schema (a function body, a view's text that
    qualifies its tables) is the app's to update."""
    new = validate_schema_name(new, migrator.shared_schema)

    def work(migrator, schema, connection, registry, request, dbsession):
        _rename(migrator, schema, new, connection,
                _registry(registry, request), request, dbsession)

    _where_it_runs(work, migrator, old, connection, dbsession,
                   transaction_manager, registry, request)
    return new


def clone_tenant(migrator, source, target, *, data=False, connection=None,
                 dbsession=None, transaction_manager=None, registry=None,
                 request=None):
    """Make the tenant ``target`` a copy of ``source``: created and brought
    to ``source``'s revision by the migrations (what a tenant at that
    revision holds), then, with ``data``, every table's rows copied (in
    foreign-key order) and each sequence set where ``source``'s is.
    ``source``'s tenant lock is held meanwhile: no migration moves it
    during the copy. Runs where :func:`create_tenant` would; sends
    :class:`~pyramid_tenantmigrate.events.TenantCloned`."""
    target = validate_schema_name(target, migrator.shared_schema)

    def work(migrator, schema, connection, registry, request, dbsession):
        _clone(migrator, schema, target, data, connection,
               _registry(registry, request), request, dbsession)

    _where_it_runs(work, migrator, source, connection, dbsession,
                   transaction_manager, registry, request)
    return target


def _where_it_runs(work, migrator, name, connection, dbsession,
                   transaction_manager, registry, request):
    """Run ``work`` on the session's connection, the given connection, or
    in a transaction of its own; return the validated schema name."""
    schema = validate_schema_name(name, migrator.shared_schema)
    if dbsession is None and connection is None:
        with migrator.connect() as own_connection:
            with own_connection.begin():
                work(migrator, schema, own_connection, registry, request,
                     None)
        return schema
    if dbsession is not None:
        connection = dbsession.connection()
    _require_transaction(connection)
    work(migrator, schema, connection, registry, request, dbsession)
    if dbsession is not None:
        # DDL alone does not mark a zope.sqlalchemy session changed: the
        # transaction would be rolled back, not committed.
        _mark_changed(dbsession, transaction_manager)
    return schema


def _require_transaction(connection):
    if not connection.in_transaction():
        raise RuntimeError(
            "provisioning runs inside the caller's transaction: call "
            "connection.begin() first, or pass no connection")


def _mark_changed(dbsession, transaction_manager):
    from zope.sqlalchemy import mark_changed

    if transaction_manager is None:
        import transaction
        transaction_manager = transaction.manager
    mark_changed(dbsession, transaction_manager=transaction_manager)


def _registry(registry, request):
    if registry is None and request is not None:
        return request.registry
    return registry


def _notify(event):
    if event.registry is not None:
        event.registry.notify(event)


def _create(migrator, schema, connection, registry, request, dbsession,
            lock_provisioning=True):
    if lock_provisioning:
        _lock_provisioning(migrator, connection)
    if schema_exists(connection, schema):
        raise TenantExists(schema)
    own_heads = branch_heads(migrator.script, TENANT)
    newer = older_than_recorded(
        own_heads, recorded_tenant_head(connection, migrator.shared_schema))
    try:
        claimed = claim_spare(migrator, connection, schema,
                              heads=newer or own_heads)
        if not claimed:
            create_schema(migrator, connection, schema)
    except DBAPIError as exc:
        # Another transaction created it since the check above.
        if getattr(exc.orig, "pgcode", None) == _DUPLICATE_SCHEMA:
            raise TenantExists(schema) from None
        raise
    connection.exec_driver_sql(tenant_lock_sql(schema))
    saved_options = connection.get_execution_options()
    try:
        # The migration relies on search_path, as in tenant-migrate runs;
        # a translate map left by a tenant-scoped session would send its
        # tables elsewhere.
        connection.execution_options(schema_translate_map=None)
        if newer and claimed:
            log.info("tenant %s made from a spare at the database's tenant "
                     "head %s (this app's code is at %s)", schema,
                     ",".join(newer), ",".join(own_heads))
        elif not claimed:  # a claimed spare is at the heads asked for
            _migrate(migrator, schema, connection)
            # (A claimed spare's objects were granted by the claim, as
            # their owner: isolation.py.)
            grant_tenant(connection, migrator.settings, schema)
            if newer:
                log.warning(
                    "tenant %s was created at %s, behind the database's "
                    "tenant head %s: this app's code is older than the "
                    "database (a deploy in progress?) and no spare schema "
                    "was ready. The upgrade still running migrates it; "
                    "otherwise run 'tenant-migrate <ini> upgrade'",
                    schema, ",".join(own_heads), ",".join(newer))
        connection.execution_options(**tenant_execution_options(schema))
        migrator.tenant_directory.created(schema)  # for subscribers too
        # With isolation, subscribers write as the new tenant's role.
        with acting_as_tenant(connection, migrator.settings, schema):
            _notify(TenantCreated(schema, connection, migrator,
                                  _registry(registry, request), request,
                                  dbsession))
            if dbsession is not None:
                # Whatever subscribers added to the session belongs to the
                # new tenant: write it while the map still says so.
                dbsession.flush()
    finally:
        connection.execution_options(
            schema_translate_map=saved_options.get("schema_translate_map"))


def _migrate(migrator, schema, connection):
    try:
        migrate_in_transaction(migrator, connection, schema, "tenant@head")
    except ScriptFailed as exc:
        message = describe_error(exc.error)
        if sqlstate(exc.error) == UNSAFE_NEW_ENUM:
            message += (
                "; an earlier revision adds that enum value in an "
                "autocommit block, and before PostgreSQL 17 a value cannot "
                "be used in the transaction that added it: a tenant is "
                "created in one transaction (its request's). Keep spare "
                "schemas ready (tenantmigrate.spare_schemas: they are made "
                "outside requests), or create the schema with "
                "'tenant-migrate <ini> upgrade --create-missing'")
        raise ProvisioningFailed(schema, exc.revision, message) from exc


def _drop(migrator, schema, connection, registry, request, dbsession):
    if not schema_exists(connection, schema):
        raise TenantNotFound(schema)
    connection.exec_driver_sql(f"DROP SCHEMA {quote_schema(schema)} CASCADE")
    drop_tenant_role(connection, migrator.settings, schema)
    migrator.tenant_directory.dropped(schema)
    _notify(TenantDropped(schema, connection, migrator,
                          _registry(registry, request), request, dbsession))


def _lock_provisioning(migrator, connection):
    # Held until the caller commits: a run's last look at the tenant list
    # waits for this tenant to be there (see run.py).
    connection.exec_driver_sql(
        f"SELECT pg_advisory_xact_lock_shared({PROVISIONING_LOCK}, "
        f"{lock_key(migrator.shared_schema)})")


def _rename(migrator, old, new, connection, registry, request, dbsession):
    _lock_provisioning(migrator, connection)
    for schema in sorted({old, new}):  # in one order: no deadlock
        connection.exec_driver_sql(tenant_lock_sql(schema))
    if not schema_exists(connection, old):
        raise TenantNotFound(old)
    if schema_exists(connection, new):
        raise TenantExists(new)
    connection.exec_driver_sql(
        f"ALTER SCHEMA {quote_schema(old)} RENAME TO {quote_schema(new)}")
    rename_tenant_role(connection, migrator.settings, old, new)
    grant_tenant(connection, migrator.settings, new)
    migrator.tenant_directory.dropped(old)
    migrator.tenant_directory.created(new)
    _notify(TenantRenamed(new, connection, migrator, registry, request,
                          dbsession, source=old))


def _clone(migrator, source, target, data, connection, registry, request,
           dbsession):
    from .versions import read_schema_versions

    _lock_provisioning(migrator, connection)
    connection.exec_driver_sql(tenant_lock_sql(source))
    if not schema_exists(connection, source):
        raise TenantNotFound(source)
    if schema_exists(connection, target):
        raise TenantExists(target)
    heads = read_schema_versions(connection, [source],
                                 migrator.settings.version_table,
                                 commit=False)[source].heads
    create_schema(migrator, connection, target)
    connection.exec_driver_sql(tenant_lock_sql(target))
    for head in heads:
        try:
            migrate_in_transaction(migrator, connection, target,
                                   f"tenant@{head}")
        except ScriptFailed as exc:
            raise ProvisioningFailed(target, exc.revision,
                                     describe_error(exc.error)) from exc
    if data:
        try:
            _copy_rows(connection, source, target,
                       migrator.settings.version_table)
        except (ValueError, DBAPIError) as exc:
            raise ProvisioningFailed(target, None, (
                f"copying the rows of {source} failed: "
                f"{describe_error(getattr(exc, 'orig', None) or exc)} "
                f"(does {source} hold what its revision makes?)")) from exc
    grant_tenant(connection, migrator.settings, target)
    migrator.tenant_directory.created(target)
    _notify(TenantCloned(target, connection, migrator, registry, request,
                         dbsession, source=source))


_TABLES = text("""
SELECT c.relname,
       array(SELECT quote_ident(a.attname) FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0
               AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname
""")
_REFERENCES = text("""
SELECT c.relname, r.relname
FROM pg_catalog.pg_constraint k
JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
JOIN pg_catalog.pg_class r ON r.oid = k.confrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE k.contype = 'f' AND n.nspname = :schema
  AND r.relnamespace = c.relnamespace AND r.oid <> c.oid
""")
_SEQUENCES = text("""
SELECT c.relname FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :schema AND c.relkind = 'S' ORDER BY 1
""")


def _copy_rows(connection, source, target, version_table):
    """Every table's rows from ``source`` into ``target`` (the same tables:
    both at one revision), referenced tables first; then each sequence of
    ``target`` set where ``source``'s stands."""
    columns = dict(connection.execute(_TABLES, {"schema": source}).all())
    columns.pop(version_table, None)
    references = connection.execute(_REFERENCES, {"schema": source}).all()
    src, dst = quote_schema(source), quote_schema(target)
    if columns:
        # Rows the target's data revisions made (seeds) are the source's
        # to give: the copy replaces them, it does not add to them.
        connection.exec_driver_sql("TRUNCATE " + ", ".join(
            f"{dst}.{quote_schema(table)}" for table in columns))
    for table in _referenced_first(columns, references):
        names = ", ".join(columns[table])
        if not names:
            continue
        qualified = quote_schema(table)
        connection.exec_driver_sql(
            f"INSERT INTO {dst}.{qualified} ({names}) OVERRIDING SYSTEM "
            f"VALUE SELECT {names} FROM {src}.{qualified}")
    for (sequence,) in connection.execute(_SEQUENCES, {"schema": target}):
        name = quote_schema(sequence)
        connection.exec_driver_sql(
            f"SELECT setval({quote_literal(f'{dst}.{name}')}, s.last_value, "
            f"s.is_called) FROM {src}.{name} s")


def _referenced_first(tables, references):
    """``tables`` ordered so that each comes after those it references;
    a cycle of foreign keys is refused (it cannot be filled that way)."""
    needs = {table: set() for table in tables}
    for table, referenced in references:
        if table in needs and referenced in needs:
            needs[table].add(referenced)
    ordered = []
    while needs:
        ready = sorted(t for t, deps in needs.items() if not deps)
        if not ready:
            raise ValueError(
                "the tables' foreign keys form a cycle ("
                + ", ".join(sorted(needs)) + "): their rows cannot be "
                "copied one table after another")
        for table in ready:
            ordered.append(table)
            del needs[table]
        for deps in needs.values():
            deps.difference_update(ready)
    return ordered
