"""Isolation the database enforces (``tenantmigrate.isolation = roles``),
tried as an attacker would: SQL sent in tenant A's session, connected as
the web app's role, reaching for tenant B, the shared tables and the
bookkeeping; the functions the app may call, given hostile names."""
import itertools
import os

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from pyramid_tenantmigrate import (
    ConfigurationError,
    TenantMigrator,
    commands,
    create_tenant,
    drop_tenant,
    set_tenant,
)
from pyramid_tenantmigrate.isolation import tenant_role

from .conftest import create_schemas

_numbers = itertools.count()
DENIED = {"42501", "42P01", "3F000"}  # no privilege; unseen relation/schema


@pytest.fixture
def fleet(project, roles, db, server_engine):
    """tenant_a and tenant_b migrated by the deploy role with isolation
    on, each holding a note; the app role NOINHERIT (needed before
    PostgreSQL 16), the deploy role allowed to create roles."""
    prefix = f"tm{os.getpid() % 1000}x{next(_numbers)}_"
    group = prefix + "common"
    with server_engine.connect() as connection:
        connection.exec_driver_sql(f'ALTER ROLE "{roles.deploy}" CREATEROLE')
        connection.exec_driver_sql(f'ALTER ROLE "{roles.app}" NOINHERIT')
        connection.exec_driver_sql(f'CREATE ROLE "{group}" NOLOGIN')
        connection.exec_driver_sql(
            f'GRANT "{group}" TO "{roles.deploy}" WITH ADMIN OPTION')
        # The deploy role migrates the schemas the app makes (provisioning
        # docs): a member of the app role.
        connection.exec_driver_sql(f'GRANT "{roles.app}" TO "{roles.deploy}"')
    project.settings.update({
        "sqlalchemy.url": roles.url(roles.deploy),
        "tenantmigrate.isolation": "roles",
        "tenantmigrate.app_role": roles.app,
        "tenantmigrate.tenant_role_prefix": prefix,
        "tenantmigrate.tenant_role_member_of": group,
    })
    project.write_ini()
    project.write_standard_revisions()
    deploy = sa.create_engine(roles.url(roles.deploy))
    create_schemas(deploy, "tenant_a", "tenant_b")
    project.cli("upgrade", check=0)
    with deploy.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO public.accounts (id, email) VALUES (1, 'a@x')")
        connection.exec_driver_sql(f'GRANT SELECT ON public.accounts TO '
                                   f'"{group}"')
        # A tenant the app makes itself refers to accounts.
        connection.exec_driver_sql(
            f'GRANT REFERENCES ON public.accounts TO "{roles.app}"')
        for schema in ("tenant_a", "tenant_b"):
            connection.exec_driver_sql(
                f"INSERT INTO {schema}.notes (account_id, title) "
                f"VALUES (1, 'secret of {schema}')")
    deploy.dispose()
    app = TenantMigrator.from_settings(dict(
        project.settings, **{"sqlalchemy.url": roles.url(roles.app)}))
    yield app, prefix
    app.close()
    with db.connect() as connection:
        names = connection.exec_driver_sql(
            "SELECT rolname FROM pg_roles WHERE left(rolname, "
            f"{len(prefix)}) = '{prefix}'").scalars().all()
        connection.commit()
        for name in names:
            connection.exec_driver_sql(f'DROP OWNED BY "{name}"')
            connection.exec_driver_sql(f'DROP ROLE "{name}"')
            connection.commit()


def _session(app, tenant):
    session = Session(app.engine)
    return set_tenant(session, tenant, migrator=app)


def _sqlstate(exc_info):
    return getattr(exc_info.value.orig, "pgcode", None)


def _attempt(session, sql):
    """Run ``sql`` in the session's transaction; the SQLSTATE it was
    refused with, or ``None`` when it went through (rolled back either
    way)."""
    try:
        session.execute(sa.text(sql)).fetchall() if sql.lstrip().upper(
        ).startswith(("SELECT", "WITH")) else session.execute(sa.text(sql))
        return None
    except sa.exc.DBAPIError as exc:
        return getattr(exc.orig, "pgcode", None)
    finally:
        session.rollback()


def test_a_tenants_session_reads_its_own_rows_and_nothing_of_another(fleet):
    app, prefix = fleet
    session = _session(app, "tenant_a")
    with session.begin():
        assert session.execute(sa.text(
            "SELECT current_user")).scalar() == tenant_role(prefix,
                                                            "tenant_a")
        assert session.execute(sa.text(
            "SELECT title FROM tenant_a.notes")).scalars().all() == [
            "secret of tenant_a"]
        # Shared objects granted to a member_of role are readable.
        assert session.execute(sa.text(
            "SELECT email FROM public.accounts")).scalars().all() == ["a@x"]
    attacks = [
        "SELECT title FROM tenant_b.notes",
        'SELECT title FROM "tenant_b"."notes"',
        "SELECT count(*) FROM tenant_b.alembic_version",
        "WITH x AS (SELECT * FROM tenant_b.notes) SELECT * FROM x",
        "UPDATE tenant_b.notes SET title = 'pwned'",
        "DELETE FROM tenant_b.notes",
        "CREATE TABLE tenant_b.evil (id int)",
        "DROP TABLE tenant_b.notes",
        "DROP SCHEMA tenant_b CASCADE",
        # Its own schema's version is the migrations' to write.
        "UPDATE tenant_a.alembic_version SET version_num = 'x'",
        "DROP TABLE tenant_a.notes",
        # The shared schema and the bookkeeping.
        "DELETE FROM public.accounts",
        "DROP TABLE public.accounts",
        "CREATE TABLE public.evil (id int)",
        "DELETE FROM public.tenantmigrate_runs",
        # The functions that create and drop roles are the app role's.
        "SELECT public.tenantmigrate_tenant_role('tenant_c')",
    ]
    for attack in attacks:
        assert _attempt(session, attack) in DENIED, attack
    # search_path does not open another schema: it is skipped unseen.
    session.execute(sa.text("SET LOCAL search_path TO tenant_b"))
    assert _attempt(session, "SELECT title FROM notes") in DENIED
    session.close()
    # Giving the tenant role up (RESET ROLE) leaves the app role, which
    # holds no tenant's privileges itself.
    bare = Session(app.engine)
    bare.execute(sa.text("RESET ROLE"))
    assert bare.execute(sa.text("SELECT current_user")).scalar() == (
        app.engine.url.username)
    for tenant in ("tenant_a", "tenant_b"):
        assert _attempt(bare, f"SELECT title FROM {tenant}.notes") in DENIED
    bare.close()

    # The ORM sees its tenant's rows through the same role.
    session = _session(app, "tenant_b")
    with session.begin():
        assert session.execute(sa.text(
            "SELECT title FROM tenant_b.notes")).scalars().all() == [
            "secret of tenant_b"]
        # Switching tenants inside a transaction switches roles.
        set_tenant(session, "tenant_a", migrator=app)
        assert session.execute(sa.text(
            "SELECT current_user")).scalar() == tenant_role(prefix,
                                                            "tenant_a")
        assert _attempt(session, "SELECT * FROM tenant_b.notes") in DENIED
    session.close()


def test_the_functions_refuse_hostile_names(fleet):
    app, _ = fleet
    with app.engine.connect() as connection:
        for name in ("public", "pg_catalog", "information_schema",
                     "tenantmigrate_spare_0001", "Tenant", "a b",
                     "x'; DROP ROLE postgres; --", "x" * 64, ""):
            for call in ("tenantmigrate_tenant_role(:n)",
                         "tenantmigrate_drop_tenant_role(:n)",
                         "tenantmigrate_claim_spare(:n, ARRAY['t2'])"):
                with pytest.raises(sa.exc.DBAPIError) as refused:
                    connection.execute(sa.text(f"SELECT public.{call}"),
                                       {"n": name})
                assert _sqlstate(refused) == "42602", (call, name)
                connection.rollback()
        # A tenant's role is dropped only once its schema is gone.
        with pytest.raises(sa.exc.DBAPIError) as refused:
            connection.execute(sa.text(
                "SELECT public.tenantmigrate_drop_tenant_role('tenant_b')"))
        assert _sqlstate(refused) == "2BP01"
        connection.rollback()
        # Nobody but the app role may call them (PUBLIC may not).
        assert connection.execute(sa.text(
            "SELECT count(*) FROM pg_proc p, aclexplode(p.proacl) a "
            "WHERE p.proname LIKE 'tenantmigrate_%' AND a.grantee = 0"
        )).scalar() == 0


def test_sign_ups_get_roles_with_spares_and_without(fleet, project, roles,
                                                    db):
    app, prefix = fleet
    project.settings["tenantmigrate.spare_schemas"] = "1"
    project.write_ini()
    project.cli("fill-spares", check=0)
    app = TenantMigrator.from_settings(dict(
        project.settings, **{"sqlalchemy.url": roles.url(roles.app)}))
    # A spare is the deploy role's: the app claims it through the
    # function, without the deploy role's powers.
    create_tenant(app, "tenant_c")
    # No spare left: the app makes the schema itself.
    create_tenant(app, "tenant_d")
    with db.connect() as connection:
        owners = dict(connection.exec_driver_sql(
            "SELECT nspname, nspowner::regrole::text FROM pg_namespace "
            "WHERE nspname IN ('tenant_c', 'tenant_d')").fetchall())
    assert owners == {"tenant_c": roles.deploy, "tenant_d": roles.app}
    for tenant, other in (("tenant_c", "tenant_d"), ("tenant_d", "tenant_c")):
        session = _session(app, tenant)
        with session.begin():
            session.execute(sa.text(
                f"INSERT INTO {tenant}.notes (account_id, title) "
                f"VALUES (1, 'of {tenant}')"))
        assert _attempt(session, f"SELECT * FROM {other}.notes") in DENIED
        assert _attempt(session, "SELECT * FROM tenant_a.notes") in DENIED
        session.close()
    # The app role cannot drop the schema it claimed (the deploy's).
    with app.engine.connect() as connection:
        with pytest.raises(sa.exc.DBAPIError) as refused:
            connection.exec_driver_sql("DROP SCHEMA tenant_c CASCADE")
        assert _sqlstate(refused) == "42501"
    app.close()

    # A revision's new table is the tenant role's as the run commits.
    project.write_revision("tenant", "t3", "t2", """
        op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True))
        """, 'op.drop_table("tags")')
    project.cli("upgrade", check=0)
    session = _session(fleet[0], "tenant_c")
    with session.begin():
        assert session.execute(sa.text(
            "SELECT count(*) FROM tenant_c.tags")).scalar() == 0
    session.close()

    # Dropping a tenant drops its role.
    deploy = TenantMigrator.from_settings(project.settings)
    drop_tenant(deploy, "tenant_c")
    deploy.close()
    with db.connect() as connection:
        left = connection.exec_driver_sql(
            "SELECT rolname FROM pg_roles WHERE left(rolname, "
            f"{len(prefix)}) = '{prefix}' ORDER BY 1").scalars().all()
    assert left == sorted([prefix + "common", tenant_role(prefix, "tenant_a"),
                           tenant_role(prefix, "tenant_b"),
                           tenant_role(prefix, "tenant_d")])


def test_roles_of_long_names_are_cut_with_a_hash():
    long_a, long_b = "t" * 62 + "a", "t" * 62 + "b"
    role_a, role_b = (tenant_role("tm_", n) for n in (long_a, long_b))
    assert role_a != role_b
    assert max(len(role_a), len(role_b)) <= 63
    assert tenant_role("tm_", "acme") == "tm_acme"


def test_isolation_needs_the_app_role(project):
    project.write_ini(**{"tenantmigrate.isolation": "roles"})
    result = project.cli("current", check=2)
    assert "tenantmigrate.app_role" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(ConfigurationError, match="tenantmigrate.app_role"):
        project.migrator(**{"tenantmigrate.isolation": "roles"})
    with pytest.raises(ConfigurationError, match="tenantmigrate.isolation"):
        project.migrator(**{"tenantmigrate.isolation": "yes"})
    with pytest.raises(ConfigurationError, match="tenantmigrate.app_role"):
        project.migrator(**{"tenantmigrate.isolation": "roles",
                            "tenantmigrate.app_role": 'x"; drop'})


def test_commands_unchanged_without_isolation(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a")
    assert commands.upgrade(project.migrator()).ok


def test_tenants_made_before_isolation_get_their_roles_from_one_run(
        fleet, project, db):
    app, prefix = fleet
    deploy = sa.create_engine(project.settings["sqlalchemy.url"])
    create_schemas(deploy, "tenant_old")
    deploy.dispose()
    project.cli("upgrade", "--tenant", "tenant_old", check=0)
    # As if made before isolation: no role, nothing granted.
    with db.connect() as connection:
        connection.exec_driver_sql(
            f'DROP OWNED BY "{tenant_role(prefix, "tenant_old")}"')
        connection.exec_driver_sql(
            f'DROP ROLE "{tenant_role(prefix, "tenant_old")}"')
        connection.commit()
    app.tenant_directory.created("tenant_old")
    session = _session(app, "tenant_old")
    with pytest.raises(sa.exc.DBAPIError):  # no role yet
        session.execute(sa.text("SELECT 1"))
    session.close()

    result = project.cli(
        "run", "pyramid_tenantmigrate.isolation:isolate_tenant", check=0)
    assert "3 done" in result.stdout, result.stdout

    session = _session(app, "tenant_old")
    with session.begin():
        assert session.execute(sa.text(
            "SELECT count(*) FROM tenant_old.notes")).scalar() == 0
        assert _attempt(session, "SELECT * FROM tenant_a.notes") in DENIED
    session.close()


def test_a_role_that_is_not_a_tenant_role_is_never_taken_over(
        fleet, db, roles):
    app, prefix = fleet
    with db.connect() as connection:
        # Someone's role that happens to be named like a tenant role of
        # the schema "ops", and powerful.
        connection.exec_driver_sql("CREATE SCHEMA ops")
        connection.exec_driver_sql(f'CREATE ROLE "{prefix}ops" NOLOGIN')
        connection.exec_driver_sql(f'GRANT pg_read_all_data TO "{prefix}ops"')
        # A tenant role of this name in another database of the server.
        connection.exec_driver_sql("CREATE SCHEMA elsewhere")
        connection.exec_driver_sql(f'CREATE ROLE "{prefix}elsewhere" NOLOGIN')
        connection.exec_driver_sql(
            f"COMMENT ON ROLE \"{prefix}elsewhere\" IS 'pyramid_tenantmigrate "
            f"tenant role of another_db.elsewhere'")
        connection.commit()
    with app.engine.connect() as connection:
        for schema in ("ops", "elsewhere"):
            for call in (f"tenantmigrate_tenant_role('{schema}')",
                         f"tenantmigrate_grant_tenant('{schema}')"):
                with pytest.raises(sa.exc.DBAPIError) as refused:
                    connection.execute(sa.text(f"SELECT public.{call}"))
                assert _sqlstate(refused) == "42710", call
                connection.rollback()
        # The app role was given neither.
        assert connection.execute(sa.text(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON "
            "r.oid = m.roleid WHERE m.member = (SELECT oid FROM pg_roles "
            f"WHERE rolname = '{roles.app}') AND r.rolname IN "
            f"('{prefix}ops', '{prefix}elsewhere')")).scalar() == 0
    with db.connect() as connection:
        connection.exec_driver_sql("DROP SCHEMA ops; DROP SCHEMA elsewhere")
        connection.commit()
    with app.engine.connect() as connection:
        # Nor dropped, once their schema is gone.
        with pytest.raises(sa.exc.DBAPIError) as refused:
            connection.execute(sa.text(
                "SELECT public.tenantmigrate_drop_tenant_role('ops')"))
        assert _sqlstate(refused) == "42710"


def test_rename_and_create_tenant_from_the_deploy_role(fleet, project, db):
    app, prefix = fleet
    project.cli("rename-tenant", "tenant_b", "tenant_e", check=0)
    with db.connect() as connection:
        names = connection.exec_driver_sql(
            "SELECT rolname FROM pg_roles WHERE rolname IN "
            f"('{tenant_role(prefix, 'tenant_b')}', "
            f"'{tenant_role(prefix, 'tenant_e')}')").scalars().all()
    assert names == [tenant_role(prefix, "tenant_e")]
    app.tenant_directory.dropped("tenant_b")
    app.tenant_directory.created("tenant_e")
    session = _session(app, "tenant_e")
    with session.begin():
        assert session.execute(sa.text(
            "SELECT title FROM tenant_e.notes")).scalars().all() == [
            "secret of tenant_b"]
        assert _attempt(session, "SELECT * FROM tenant_a.notes") in DENIED
    session.close()
    # The deploy role's create-tenant runs TenantCreated subscribers as
    # the new tenant's role, which it may switch to.
    project.app_factory = "call:tests.apps:main_greeting_new_tenants"
    project.write_ini()
    project.cli("create-tenant", "tenant_f", check=0)
    app.tenant_directory.created("tenant_f")
    session = _session(app, "tenant_f")
    with session.begin():
        assert session.execute(sa.text(
            "SELECT title FROM tenant_f.notes")).scalars().all() == [
            "welcome"]
    session.close()


def test_pg_prefixes_are_refused(project):
    with pytest.raises(ConfigurationError, match="tenant_role_prefix"):
        project.migrator(**{"tenantmigrate.tenant_role_prefix": "pg_x"})


def test_an_inheriting_app_role_is_refused_before_16(
        fleet, project, server_engine, server_version, roles):
    if int(server_version) >= 160000:
        pytest.skip("PostgreSQL 16 says per grant: the app role's own "
                    "attribute does not matter")
    with server_engine.connect() as connection:
        connection.exec_driver_sql(f'ALTER ROLE "{roles.app}" INHERIT')
    result = project.cli("upgrade", check=2)
    assert "NOINHERIT" in result.stderr
    assert "Traceback" not in result.stderr
