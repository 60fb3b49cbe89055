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

from .engine.sql import quote_literal
from .errors import ConfigurationError
from .names import MAX_IDENTIFIER_BYTES, quote_schema
from .reserved import FUNCTIONS_LOCK, SPARE_PREFIX, SPARES_TABLE, lock_key

ROLE_FUNCTION = "tenantmigrate_tenant_role"
GRANT_FUNCTION = "tenantmigrate_grant_tenant"
DROP_FUNCTION = "tenantmigrate_drop_tenant_role"
RENAME_FUNCTION = "tenantmigrate_rename_tenant_role"
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


def _role_expression(prefix, name="tenant"):
    """:func:`tenant_role` in SQL, over the argument ``name`` (an ASCII
    name: the functions check that first)."""
    p = quote_literal(prefix)
    keep = MAX_IDENTIFIER_BYTES - len(prefix) - _HASH - 1
    return (f"CASE WHEN octet_length({p} || {name}) <= {MAX_IDENTIFIER_BYTES}"
            f" THEN {p} || {name} ELSE {p} || left({name}, {keep}) || '_' || "
            f"left(md5({name}), {_HASH}) END")


def _name_check(shared_schema, name="tenant"):
    """PL/pgSQL refusing what no tenant may be called (as
    :func:`.names.schema_name_problem`), in the argument ``name``."""
    return (
        f"IF {name} IS NULL OR {name} !~ '^[a-z_][a-z0-9_]*$' "
        f"OR octet_length({name}) > {MAX_IDENTIFIER_BYTES} "
        f"OR left({name}, 3) = 'pg_' "
        f"OR left({name}, {len(SPARE_PREFIX)}) = "
        f"{quote_literal(SPARE_PREFIX)} "
        f"OR {name} IN ('public', 'information_schema', "
        f"{quote_literal(shared_schema)}) THEN "
        f"RAISE EXCEPTION 'not a tenant schema name: %', {name} "
        "USING ERRCODE = '42602'; END IF;")


def _function(schema, name, arguments, returns, body, definer):
    security = "SECURITY DEFINER " if definer else ""
    return (f"CREATE OR REPLACE FUNCTION {quote_schema(schema)}.{name}"
            f"({arguments}) RETURNS {returns} LANGUAGE plpgsql {security}"
            f"SET search_path = pg_catalog, pg_temp AS $tenantmigrate$ "
            f"{body} $tenantmigrate$")


def _tag(expression):
    """What a tenant role's comment says (roles are the server's, shared
    by its databases: the tag names this database)."""
    return (f"'pyramid_tenantmigrate tenant role of ' || current_database()"
            f" || '.' || {expression}")


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
    member_of = ", ".join(map(quote_literal, settings.tenant_role_member_of))
    app = quote_literal(settings.app_role) if settings.app_role else "NULL"
    role = _role_expression(settings.tenant_role_prefix)
    # A role of that name made by anyone else (another database on the
    # server, a person) is not taken over: the app could switch to it.
    not_ours = (
        "SELECT r.rolsuper OR r.rolcreaterole OR r.rolcreatedb "
        "OR r.rolcanlogin OR r.rolreplication OR r.rolbypassrls "
        f"OR shobj_description(r.oid, 'pg_authid') IS DISTINCT FROM {{tag}} "
        "OR EXISTS (SELECT FROM pg_auth_members m JOIN pg_roles g "
        "ON g.oid = m.roleid WHERE m.member = r.oid "
        f"AND g.rolname <> ALL (ARRAY[{member_of}]::text[])) "
        "FROM pg_roles r WHERE r.rolname = {role}")
    refuse = (
        "RAISE EXCEPTION 'the role % exists and is not the tenant role of "
        "%.% (give each database a tenantmigrate.tenant_role_prefix of its "
        "own)', {role}, current_database(), {tenant} USING ERRCODE = '42710';")
    role_body = (
        f"DECLARE role text := {role}; tag text := {_tag('tenant')}; "
        "alien boolean; member text; BEGIN "
        f"{check} "
        "IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = tenant) THEN "
        "RAISE EXCEPTION 'no schema %', tenant USING ERRCODE = '3F000'; "
        "END IF; "
        f"{not_ours.format(tag='tag', role='role')} INTO alien; "
        "IF alien IS NULL THEN "
        "EXECUTE format('CREATE ROLE %I NOLOGIN', role); "
        "EXECUTE format('COMMENT ON ROLE %I IS %L', role, tag); "
        f"ELSIF alien THEN {refuse.format(role='role', tenant='tenant')} "
        "END IF; "
        # The deploy role (this function's owner) acts as it too:
        # TenantCreated subscribers of create-tenant, a shell.
        "EXECUTE format('GRANT %I TO %I"
        f"{membership}', role, current_user); "
        f"IF {app} IS NOT NULL THEN EXECUTE format('GRANT %I TO %I"
        f"{membership}', role, {app}); END IF; "
        f"FOREACH member IN ARRAY ARRAY[{member_of}]::text[] LOOP "
        "EXECUTE format('GRANT %I TO %I', member, role); END LOOP; "
        "RETURN role; END")
    version_table = quote_literal(settings.version_table)
    grantee = (f"{qshared}.{ROLE_FUNCTION}(tenant)" if uses_roles(settings)
               else app)
    grant_body = (
        f"DECLARE grantee text := {grantee}; BEGIN "
        "IF grantee IS NULL THEN RETURN NULL; END IF; "
        "EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', tenant, grantee); "
        "EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, "
        "REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA %I TO %I', tenant, "
        "grantee); "
        "EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN "
        "SCHEMA %I TO %I', tenant, grantee); "
        "EXECUTE format('GRANT EXECUTE ON ALL ROUTINES IN SCHEMA %I TO %I', "
        "tenant, grantee); "
        # The version is the migrations' to write, not the app's.
        f"IF to_regclass(format('%I.%I', tenant, {version_table})) IS NOT "
        "NULL THEN EXECUTE format('REVOKE ALL ON TABLE %I.%I FROM %I', "
        f"tenant, {version_table}, grantee); END IF; "
        "RETURN grantee; END")
    drop_body = (
        f"DECLARE role text := {role}; alien boolean; BEGIN {check} "
        "IF EXISTS (SELECT FROM pg_namespace WHERE nspname = tenant) THEN "
        "RAISE EXCEPTION 'the schema % still exists', tenant "
        "USING ERRCODE = '2BP01'; END IF; "
        f"{not_ours.format(tag=_tag('tenant'), role='role')} INTO alien; "
        f"IF alien THEN {refuse.format(role='role', tenant='tenant')} "
        "END IF; "
        "IF alien IS NOT NULL THEN "
        "EXECUTE format('DROP ROLE %I', role); END IF; END")
    prefix = settings.tenant_role_prefix
    rename_body = (
        f"DECLARE role text := {_role_expression(prefix, 'old_name')}; "
        f"renamed text := {_role_expression(prefix, 'new_name')}; "
        f"alien boolean; BEGIN {_name_check(shared, 'old_name')} "
        f"{_name_check(shared, 'new_name')} "
        "IF EXISTS (SELECT FROM pg_namespace WHERE nspname = old_name) THEN "
        "RAISE EXCEPTION 'the schema % still exists', old_name "
        "USING ERRCODE = '2BP01'; END IF; "
        f"{not_ours.format(tag=_tag('old_name'), role='role')} INTO alien; "
        f"IF alien THEN {refuse.format(role='role', tenant='old_name')} "
        "END IF; "
        # Renamed, the role keeps the privileges on the renamed tables.
        "IF alien IS NOT NULL AND renamed <> role THEN "
        "EXECUTE format('ALTER ROLE %I RENAME TO %I', role, renamed); "
        "EXECUTE format('COMMENT ON ROLE %I IS %L', renamed, "
        f"{_tag('new_name')}); END IF; "
        f"RETURN {qshared}.{ROLE_FUNCTION}(new_name); END")
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
        f"{quote_literal(SPARE_PREFIX)} "
        "ORDER BY s.created, s.schema_name LIMIT 1 FOR UPDATE OF s SKIP "
        "LOCKED) RETURNING schema_name INTO spare; "
        "IF spare IS NULL THEN RETURN false; END IF; "
        "EXECUTE format('ALTER SCHEMA %I RENAME TO %I', spare, tenant); "
        # The spare's objects are the deploy role's: it grants them, to
        # the tenant's role, or else to the app role.
        f"PERFORM {qshared}.{GRANT_FUNCTION}(tenant); "
        "RETURN true; END")
    functions = [
        (ROLE_FUNCTION, "tenant text", "text", role_body, True),
        (GRANT_FUNCTION, "tenant text", "text", grant_body, False),
        (DROP_FUNCTION, "tenant text", "void", drop_body, True),
        (RENAME_FUNCTION, "old_name text, new_name text", "text",
         rename_body, True),
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


def grants_to_app(settings):
    """Whether tenant objects are granted to someone: the tenant roles,
    or else the app role."""
    return uses_roles(settings) or settings.app_role is not None


def install_functions(connection, settings):
    """(Re)install the functions, in a transaction of their own on
    ``connection`` (the deploy role's: they run with its rights), when
    isolation, spares or an app role use them."""
    if not (grants_to_app(settings) or settings.spare_schemas > 0):
        return
    with connection.begin():
        connection.exec_driver_sql(
            f"SELECT pg_advisory_xact_lock({FUNCTIONS_LOCK}, "
            f"{lock_key(settings.shared_schema)})")
        version = connection.exec_driver_sql(
            "SELECT current_setting('server_version_num')::int").scalar()
        if uses_roles(settings) and version < 160000 and (
                connection.exec_driver_sql(
                    "SELECT rolinherit FROM pg_roles WHERE rolname = "
                    + quote_literal(settings.app_role)).scalar()):
            # Before 16 the member's own attribute decides: an INHERIT
            # app role would hold every tenant's privileges at once.
            raise ConfigurationError(
                f"tenantmigrate.isolation = roles: the app role "
                f"{settings.app_role} inherits (PostgreSQL before 16 "
                f"decides by the member's attribute): ALTER ROLE "
                f"{quote_schema(settings.app_role)} NOINHERIT")
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
    missing) or else to the app role, run as their owner."""
    return _call(settings, GRANT_FUNCTION, quote_literal(schema))


def grant_tenant(connection, settings, schema):
    if grants_to_app(settings):
        connection.exec_driver_sql(grant_tenant_sql(settings, schema))


def rename_tenant_role(connection, settings, old, new):
    """Rename ``old``'s role (the schema renamed in this transaction) to
    ``new``'s: it keeps its privileges on the renamed tables."""
    if uses_roles(settings):
        connection.exec_driver_sql(_call(
            settings, RENAME_FUNCTION, quote_literal(old), quote_literal(new)))


def drop_tenant_role(connection, settings, schema):
    """Drop the role of ``schema``, dropped in this transaction."""
    if uses_roles(settings):
        connection.exec_driver_sql(
            _call(settings, DROP_FUNCTION, quote_literal(schema)))


def claim_function(settings):
    """The claim function's signature, for ``to_regprocedure``."""
    return (f"{quote_schema(settings.shared_schema)}.{CLAIM_FUNCTION}"
            "(text, text[])")


def claim_spare_sql(settings, schema, heads):
    array = "ARRAY[" + ", ".join(quote_literal(h) for h in heads) + "]::text[]"
    return _call(settings, CLAIM_FUNCTION, quote_literal(schema), array)


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
