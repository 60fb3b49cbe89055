"""SQLAlchemy sessions scoped to one tenant.

Tenant models are declared without a schema (``__tablename__ = "notes"``);
shared models name the shared schema (``__table_args__ = {"schema":
"public"}``). A session scoped to a tenant renders every table without a
schema as that tenant's, through SQLAlchemy's ``schema_translate_map``.

Why not ``SET search_path``: a session-level ``SET`` stays on the pooled
connection and leaks into the next request that gets it, and even
``SET LOCAL`` is easy to lose when a transaction is reused. The translate
map is compiled into each statement and lives on the SQLAlchemy
``Connection`` of the session's current transaction, which is thrown away
when the transaction ends; nothing is left on the database connection.
"""
from sqlalchemy import event

from .errors import ConfigurationError
from .isolation import tenant_role, uses_roles
from .names import quote_schema

#: Key in ``Session.info`` holding the tenant the session is scoped to.
TENANT_KEY = "tenantmigrate.tenant"
#: ... and the tenant's role, with ``isolation = roles``.
ROLE_KEY = "tenantmigrate.tenant_role"
_LISTENING_KEY = "tenantmigrate.tenant_listener"
#: The session's own bind, kept while a fleet's tenant binds it elsewhere.
_BIND_KEY = "tenantmigrate.own_bind"


def tenant_execution_options(schema):
    """Execution options that send tables without a schema to ``schema``."""
    return {"schema_translate_map": {None: schema}}


def _apply_tenant(session, transaction, connection):
    schema = session.info.get(TENANT_KEY)
    if schema is not None:
        # Connection.execution_options() changes this Connection in place
        # (SQLAlchemy 2); the Connection ends with the transaction.
        connection.execution_options(**tenant_execution_options(schema))
    _set_role(connection, session.info.get(ROLE_KEY))


def _set_role(connection, role):
    """``SET LOCAL ROLE``: the server checks every statement of the
    transaction against the tenant role's privileges, and the role ends
    with the transaction (nothing stays on the pooled connection)."""
    if role is not None:
        connection.exec_driver_sql(f"SET LOCAL ROLE {quote_schema(role)}")


def _migrator_for(dbsession, migrator):
    if migrator is not None:
        return migrator
    request = dbsession.info.get("request")  # the cookiecutter puts it there
    registry = getattr(request, "registry", None)
    if registry is None:
        from pyramid.threadlocal import get_current_registry
        registry = get_current_registry()
    migrator = getattr(registry, "tenant_migrator", None)
    if migrator is None:
        raise ConfigurationError(
            "set_tenant() checks the name against the tenant source: pass "
            "migrator= (registry.tenant_migrator), or call it inside a "
            "request of an app that includes pyramid_tenantmigrate")
    return migrator


def set_tenant(dbsession, schema, migrator=None):
    """Scope ``dbsession`` to the tenant ``schema`` from now on.

    ``schema`` must be a tenant the tenant source lists (checked against
    the migrator's :class:`~.directory.TenantDirectory`): the shared
    schema, a spare, any other schema and names no schema could have
    raise :class:`~.errors.UnknownTenant`. ``migrator`` defaults to the
    one of the request in ``dbsession.info["request"]`` (as the
    cookiecutter's ``get_tm_session`` makes sessions), else of the current
    Pyramid registry.

    Applies to the session's current transaction and every later one.
    Switching a session from one tenant to another flushes it, then
    detaches every object it holds: the identity map keys rows by primary
    key only, so a ``Note`` with id 1 of the old tenant would otherwise
    stand in for the new tenant's. Returns ``dbsession``.
    """
    migrator = _migrator_for(dbsession, migrator)
    migrator.tenant_directory.check(schema)
    if migrator.runs_fleet:
        _bind_to_database(dbsession, migrator, schema)
    settings = migrator.settings
    _switch(dbsession, schema, tenant_role(settings.tenant_role_prefix, schema)
            if uses_roles(settings) else None)
    if not dbsession.info.get(_LISTENING_KEY):
        event.listen(dbsession, "after_begin", _apply_tenant)
        dbsession.info[_LISTENING_KEY] = True
    return dbsession


def _bind_to_database(dbsession, migrator, schema):
    """In a fleet, a session scoped to a tenant talks to the tenant's
    database: bound to that database's engine (the app's own for the
    control database), before its transaction begins."""
    fleet = migrator.fleet
    database = migrator.tenant_directory.database_of(schema)
    original = dbsession.info.setdefault(_BIND_KEY, dbsession.bind)
    bind = (original if database in (None, fleet.control)
            else fleet.database(database).engine)
    if bind is dbsession.bind:
        return
    if dbsession.in_transaction():
        raise ConfigurationError(
            f"tenant {schema} is on database {database} of the fleet, but "
            "the session already began a transaction on another one: "
            "scope a session to the tenant before using it")
    dbsession.bind = bind


def clear_tenant(dbsession):
    """Scope ``dbsession`` to no tenant again (flushing it and detaching
    its objects, as switching tenants does). Returns ``dbsession``.

    In a fleet, a session whose transaction runs on its tenant's database
    cannot be cleared before that transaction ends: the shared tables it
    would then reach are the control database's, and the transaction
    cannot move there (:class:`~.errors.ConfigurationError`; nothing is
    changed)."""
    own = dbsession.info.get(_BIND_KEY)
    if (own is not None and dbsession.bind is not own
            and dbsession.in_transaction()):
        raise ConfigurationError(
            f"the session's transaction is on the database of tenant "
            f"{dbsession.info.get(TENANT_KEY)}: the shared tables it would "
            "reach after clear_tenant() are on the control database. Clear "
            "the tenant before the transaction begins, or read shared "
            "tables with a session of their own")
    _switch(dbsession, None)
    if own is not None:
        dbsession.bind = own
    return dbsession


def _switch(dbsession, schema, role=None):
    previous = dbsession.info.get(TENANT_KEY)
    previous_role = dbsession.info.get(ROLE_KEY)
    if previous == schema:
        return dbsession
    if previous is not None:
        dbsession.flush()
        dbsession.expunge_all()
    for key, value in ((TENANT_KEY, schema), (ROLE_KEY, role)):
        if value is None:
            dbsession.info.pop(key, None)
        else:
            dbsession.info[key] = value
    if dbsession.in_transaction():
        # The transaction may already hold its connection: scope it too.
        connection = dbsession.connection()
        connection.execution_options(
            schema_translate_map=None if schema is None
            else {None: schema})
        if role is not None:
            _set_role(connection, role)
        elif previous_role is not None:
            connection.exec_driver_sql("SET LOCAL ROLE NONE")
    return dbsession


def tenant_of(dbsession):
    """The tenant schema ``dbsession`` is scoped to, or ``None``."""
    return dbsession.info.get(TENANT_KEY)


def get_tenant_session(session_factory, schema, transaction_manager=None,
                       migrator=None):
    """A new session from ``session_factory``, scoped to ``schema`` (a
    tenant, checked as :func:`set_tenant` does).

    With a ``transaction_manager`` (``request.tm``) the session joins it
    through ``zope.sqlalchemy``, as the cookiecutter's ``get_tm_session``
    does: pyramid_tm commits or aborts it with the request.
    """
    dbsession = session_factory()
    if transaction_manager is not None:
        import zope.sqlalchemy
        zope.sqlalchemy.register(dbsession,
                                 transaction_manager=transaction_manager)
    return set_tenant(dbsession, schema, migrator)
