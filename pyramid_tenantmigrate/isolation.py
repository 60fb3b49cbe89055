"""Isolation the database enforces: a role per tenant, and what the web
app's role may do without the deploy role's powers.

With ``tenantmigrate.isolation = roles`` every tenant schema gets a role
of its own (``tenant_role_prefix`` + the schema name), ``NOLOGIN``, that
may use its schema's tables, sequences and routines and nothing else
(its version table excepted), and is a member of the roles in
``tenant_role_member_of`` (grant the shared objects tenants use to one of
those). The web app's role (``app_role``) is a member of each tenant role
*without inheriting its privileges* (``WITH INHERIT FALSE`` on PostgreSQL
16 and later; on 15 the app role itself must be ``NOINHERIT``): on its own
it reads no tenant's rows; a session scoped to a tenant runs ``SET LOCAL
ROLE`` to the tenant's role (:mod:`.sessions`), so a query naming another
tenant's table is refused by the server.

Creating roles takes ``CREATEROLE``, which the web app's role must not
have. So the deploy role (``tenantmigrate.url``'s, which runs
``upgrade``) installs, in the shared schema, functions that run with its
rights (``SECURITY DEFINER``) and do one narrow thing each, checking the
name they are given first; ``app_role`` may execute them, nobody else:

- ``tenantmigrate_tenant_role(tenant)`` creates the tenant's role if it
  is missing and makes the app role (and the ``member_of`` roles) fit;
- ``tenantmigrate_drop_tenant_role(tenant)`` drops it, once the schema is
  gone;
- ``tenantmigrate_claim_spare(tenant, heads)`` renames a spare schema to
  ``tenant`` (the spare is the deploy role's: the app role does not need
  its powers to claim one, isolation or not).

``tenantmigrate_grant_tenant(tenant)`` runs with the rights of its caller,
who owns the schema's objects (the deploy role in a run, the app role for a
tenant it made itself): it grants them to the tenant's role. Every tenant
transaction of a run calls it before it commits, so tables a revision
creates are granted in the same transaction; provisioning calls it for the
new tenant. To isolate tenants that exist already, run
``tenant-migrate <ini> run pyramid_tenantmigrate.isolation:isolate_tenant``.
"""
import contextlib
import hashlib

from .names import MAX_IDENTIFIER_BYTES, quote_schema
from .reserved import FUNCTIONS_LOCK, SPARE_PREFIX, SPARES_TABLE, lock_key

ROLE_FUNCTION = "tenantmigrate_tenant_role"
GRANT_FUNCTION = "tenantmigrate_grant_tenant"
DROP_FUNCTION = "tenantmigrate_drop_tenant_role"
CLAIM_FUNCTION = "tenantmigrate_claim_spare"
_HASH = 8


def tenant_role(prefix, schema):
    """The role of tenant ``schema``: ``prefix`` + ``schema``, or, when
    that is longer than PostgreSQL's 63 bytes, the schema cut short and a
    hash of it (two long names never share a role)."""
    name = prefix + schema
    if len(name.encode("utf-8")) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.md5(schema.encode("utf-8")).hexdigest()[:_HASH]
    keep = MAX_IDENTIFIER_BYTES - len(prefix) - _HASH - 1
    return f"{prefix}{schema[:keep]}_{digest}"


def _literal(value):
    return "'" + value.replace("'", "''") + "'"


def _role_expression(prefix):
    """:func:`tenant_role` in SQL, over the argument ``tenant`` (an ASCII
    name: the functions check that first)."""
    p = _literal(prefix)
    keep = MAX_IDENTIFIER_BYTES - len(prefix) - _HASH - 1
    return (f"CASE WHEN octet_length({p} || tenant) <= {MAX_IDENTIFIER_BYTES}"
            f" THEN {p} || tenant ELSE {p} || left(tenant, {keep}) || '_' || "
            f"left(md5(tenant), {_HASH}) END")


def _name_check(shared_schema):
    """PL/pgSQL refusing what no tenant may be called (as
    :func:`.names.schema_name_problem`)."""
    return (
        "IF tenant IS NULL OR tenant !~ '^[a-z_][a-z0-9_]*$' "
        f"OR octet_length(tenant) > {MAX_IDENTIFIER_BYTES} "
        "OR left(tenant, 3) = 'pg_' "
        f"OR left(tenant, {len(SPARE_PREFIX)}) = {_literal(SPARE_PREFIX)} "
        "OR tenant IN ('public', 'information_schema', "
        f"{_literal(shared_schema)}) THEN "
        "RAISE EXCEPTION 'not a tenant schema name: %', tenant "
        "USING ERRCODE = '42602'; END IF;")


def _grants_to_app(app_role):
    grantee = _literal(app_role)
    return (
        f"EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', tenant, {grantee});"
        " EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, "
        "REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA %I TO %I', tenant, "
        f"{grantee}); "
        "EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN "
        f"SCHEMA %I TO %I', tenant, {grantee}); ")


def _function(schema, name, arguments, returns, body, definer):
    security = "SECURITY DEFINER " if definer else ""
    return (f"CREATE OR REPLACE FUNCTION {quote_schema(schema)}.{name}"
            f"({arguments}) RETURNS {returns} LANGUAGE plpgsql {security}"
            f"SET search_path = pg_catalog, pg_temp AS $tenantmigrate$ "
            f"{body} $tenantmigrate$")


def functions_sql(settings, server_version):
    """The statements (re)installing the functions in the shared schema,
    executable by ``app_role`` only (see the module docstring)."""
    shared = settings.shared_schema
    qshared = quote_schema(shared)
    check = _name_check(shared)
    # PostgreSQL 16 says per grant whether the member inherits; before
    # it, the member role's own INHERIT attribute decides.
    membership = (" WITH INHERIT FALSE, SET TRUE"
                  if server_version >= 160000 else "")
    member_of = ", ".join(_literal(r) for r in settings.tenant_role_member_of)
    app = _literal(settings.app_role) if settings.app_role else "NULL"
    role = _role_expression(settings.tenant_role_prefix)
    role_body = (
        f"DECLARE role text := {role};"
        " member text; BEGIN "
        f"{check} "
        "IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role) THEN "
        "EXECUTE format('CREATE ROLE %I NOLOGIN', role); END IF; "
        f"IF {app} IS NOT NULL THEN EXECUTE format('GRANT %I TO %I"
        f"{membership}', role, {app}); END IF; "
        f"FOREACH member IN ARRAY ARRAY[{member_of}]::text[] LOOP "
        "EXECUTE format('GRANT %I TO %I', member, role); END LOOP; "
        "RETURN role; END")
    version_table = _literal(settings.version_table)
    grant_body = (
        f"DECLARE role text := {qshared}.{ROLE_FUNCTION}(tenant); BEGIN "
        "EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', tenant, role); "
        "EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, "
        "REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA %I TO %I', tenant, "
        "role); "
        "EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN "
        "SCHEMA %I TO %I', tenant, role); "
        "EXECUTE format('GRANT EXECUTE ON ALL ROUTINES IN SCHEMA %I TO %I', "
        "tenant, role); "
        # The version is the migrations' to write, not the tenant's.
        f"IF to_regclass(format('%I.%I', tenant, {version_table})) IS NOT "
        "NULL THEN EXECUTE format('REVOKE ALL ON TABLE %I.%I FROM %I', "
        f"tenant, {version_table}, role); END IF; "
        "RETURN role; END")
    drop_body = (
        f"DECLARE role text := {role};"
        f" BEGIN {check} "
        "IF EXISTS (SELECT FROM pg_namespace WHERE nspname = tenant) THEN "
        "RAISE EXCEPTION 'the schema % still exists', tenant "
        "USING ERRCODE = '2BP01'; END IF; "
        "EXECUTE format('DROP ROLE IF EXISTS %I', role); END")
    spares = f"{qshared}.{quote_schema(SPARES_TABLE)}"
    claim_body = (
        f"DECLARE spare text; BEGIN {check} "
        "IF EXISTS (SELECT FROM pg_namespace WHERE nspname = tenant) THEN "
        "RETURN false; END IF; "
        f"DELETE FROM {spares} WHERE schema_name = ("
        f"SELECT s.schema_name FROM {spares} s "
        "JOIN pg_namespace n ON n.nspname = s.schema_name "
        "WHERE s.heads = wanted "
        f"AND left(s.schema_name, {len(SPARE_PREFIX)}) = "
        f"{_literal(SPARE_PREFIX)} "
        "ORDER BY s.created, s.schema_name LIMIT 1 FOR UPDATE OF s SKIP "
        "LOCKED) RETURNING schema_name INTO spare; "
        "IF spare IS NULL THEN RETURN false; END IF; "
        "EXECUTE format('ALTER SCHEMA %I RENAME TO %I', spare, tenant); "
        # The spare's objects are the deploy role's: it grants them, to
        # the tenant's role, or else to the app role.
        + (f"PERFORM {qshared}.{GRANT_FUNCTION}(tenant); "
           if uses_roles(settings) else
           _grants_to_app(settings.app_role) if settings.app_role else "")
        + "RETURN true; END")
    functions = [
        (ROLE_FUNCTION, "tenant text", "text", role_body, True),
        (GRANT_FUNCTION, "tenant text", "text", grant_body, False),
        (DROP_FUNCTION, "tenant text", "void", drop_body, True),
        (CLAIM_FUNCTION, "tenant text, wanted text[]", "boolean", claim_body,
         True),
    ]
    statements = []
    for name, arguments, returns, body, definer in functions:
        statements.append(_function(shared, name, arguments, returns, body,
                                    definer))
        signature = f"{qshared}.{name}({arguments})"
        statements.append(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        if settings.app_role:
            statements.append(f"GRANT EXECUTE ON FUNCTION {signature} TO "
                              f"{quote_schema(settings.app_role)}")
    return statements


def install_functions(connection, settings):
    """(Re)install the functions, in a transaction of their own on
    ``connection`` (the deploy role's: they run with its rights), when
    isolation or spares use them."""
    if not (uses_roles(settings) or settings.spare_schemas > 0):
        return
    with connection.begin():
        connection.exec_driver_sql(
            f"SELECT pg_advisory_xact_lock({FUNCTIONS_LOCK}, "
            f"{lock_key(settings.shared_schema)})")
        version = connection.exec_driver_sql(
            "SELECT current_setting('server_version_num')::int").scalar()
        for statement in functions_sql(settings, version):
            # No parameters, but the driver formats with % all the same.
            connection.exec_driver_sql(statement.replace("%", "%%"))


def uses_roles(settings):
    return settings.isolation == "roles"


def _call(settings, function, *arguments):
    """``SELECT function(...)`` of arguments given as SQL."""
    listed = ", ".join(arguments)
    return (f"SELECT {quote_schema(settings.shared_schema)}.{function}"
            f"({listed})")


def grant_tenant_sql(settings, schema):
    """The statement granting ``schema``'s objects to its role (made if
    missing), run as their owner."""
    return _call(settings, GRANT_FUNCTION, _literal(schema))


def grant_tenant(connection, settings, schema):
    if uses_roles(settings):
        connection.exec_driver_sql(grant_tenant_sql(settings, schema))


def drop_tenant_role(connection, settings, schema):
    """Drop the role of ``schema``, dropped in this transaction."""
    if uses_roles(settings):
        connection.exec_driver_sql(
            _call(settings, DROP_FUNCTION, _literal(schema)))


def claim_function(settings):
    """The claim function's signature, for ``to_regprocedure``."""
    return (f"{quote_schema(settings.shared_schema)}.{CLAIM_FUNCTION}"
            "(text, text[])")


def claim_spare_sql(settings, schema, heads):
    array = "ARRAY[" + ", ".join(_literal(h) for h in heads) + "]::text[]"
    return _call(settings, CLAIM_FUNCTION, _literal(schema), array)


@contextlib.contextmanager
def acting_as_tenant(connection, settings, schema):
    """Within: the transaction on ``connection`` runs as ``schema``'s role
    (with isolation; otherwise nothing changes); then as before."""
    if not uses_roles(settings):
        yield
        return
    before, session_user = connection.exec_driver_sql(
        "SELECT current_user, session_user").one()
    role = tenant_role(settings.tenant_role_prefix, schema)
    connection.exec_driver_sql(f"SET LOCAL ROLE {quote_schema(role)}")
    yield
    connection.exec_driver_sql(
        "SET LOCAL ROLE NONE" if before == session_user
        else f"SET LOCAL ROLE {quote_schema(before)}")


def isolate_tenant(task):
    """A task for ``tenant-migrate <ini> run``: grant an existing tenant's
    objects to its role (made if missing)."""
    settings = task.migrator.settings
    if not uses_roles(settings):
        raise RuntimeError("tenantmigrate.isolation is not 'roles'")
    grant_tenant(task.connection, settings, task.schema)
