"""Creating and dropping tenants: on their own, in a zope transaction, and
from the console script."""
import pytest
import sqlalchemy as sa
import transaction
import zope.sqlalchemy
from pyramid.config import Configurator
from sqlalchemy.orm import sessionmaker

from pyramid_tenantmigrate import (
    InvalidSchemaName,
    ProvisioningFailed,
    TenantCreated,
    TenantDropped,
    TenantExists,
    TenantNotFound,
    commands,
    create_tenant,
    drop_tenant,
)

from .conftest import create_schemas, schema_exists, tables_of, version_of


@pytest.fixture
def migrator(project):
    project.write_standard_revisions()
    migrator = project.migrator()
    commands.upgrade(migrator, "shared")
    yield migrator
    migrator.close()


def test_create_tenant_brings_the_schema_to_the_tenant_head(migrator, db):
    seen = []
    notes = sa.Table("notes", sa.MetaData(), sa.Column("id", sa.Integer))
    config = Configurator()
    # During the event, tables without a schema are the new tenant's.
    config.add_subscriber(lambda event: seen.append(
        (event.schema, event.connection.execute(
            sa.select(sa.func.count()).select_from(notes)).scalar())),
        TenantCreated)
    config.commit()

    assert create_tenant(migrator, "tenant_new",
                         registry=config.registry) == "tenant_new"

    assert version_of(db, "tenant_new") == ["t2"]
    assert tables_of(db, "tenant_new") == ["alembic_version", "notes"]
    # Subscribers ran on the new tenant, with its tables in place.
    assert seen == [("tenant_new", 0)]


def test_existing_and_invalid_names_are_errors(migrator, db):
    create_schemas(db, "tenant_old")
    with pytest.raises(TenantExists, match="'tenant_old' already exists"):
        create_tenant(migrator, "tenant_old")
    assert tables_of(db, "tenant_old") == []  # left alone
    for bad in ("public", "pg_x", 'x"; drop schema public; --', "Tenant"):
        with pytest.raises(InvalidSchemaName):
            create_tenant(migrator, bad)
    with pytest.raises(TenantNotFound):
        drop_tenant(migrator, "tenant_nowhere")


def test_drop_tenant_removes_schema_and_data(migrator, db):
    create_tenant(migrator, "tenant_gone")
    dropped = []
    config = Configurator()
    config.add_subscriber(lambda event: dropped.append(event.schema),
                          TenantDropped)
    config.commit()
    drop_tenant(migrator, "tenant_gone", registry=config.registry)
    assert not schema_exists(db, "tenant_gone")
    assert dropped == ["tenant_gone"]


def _tm_session(migrator):
    manager = transaction.TransactionManager(explicit=True)
    dbsession = sessionmaker(bind=migrator.engine)()
    zope.sqlalchemy.register(dbsession, transaction_manager=manager)
    return manager, dbsession


def test_in_a_zope_transaction_ddl_alone_is_committed(migrator, db):
    manager, dbsession = _tm_session(migrator)
    with manager:
        # Only DDL: without mark_changed zope.sqlalchemy would roll back.
        create_tenant(migrator, "tenant_tm", dbsession=dbsession,
                      transaction_manager=manager)
    assert version_of(db, "tenant_tm") == ["t2"]


def test_in_a_zope_transaction_a_later_failure_removes_everything(
        migrator, db):
    manager, dbsession = _tm_session(migrator)
    with pytest.raises(sa.exc.IntegrityError):
        with manager:
            create_tenant(migrator, "tenant_tm", dbsession=dbsession,
                          transaction_manager=manager)
            dbsession.execute(sa.text(
                "INSERT INTO public.accounts (email) VALUES ('a'), ('a')"))
    assert not schema_exists(db, "tenant_tm")


def test_a_failing_revision_names_itself_and_leaves_nothing(project, db):
    project.write_standard_revisions()
    project.write_revision("tenant", "t3", "t2",
                           "op.execute('SELECT * FROM no_such_table')")
    migrator = project.migrator()
    commands.upgrade(migrator, "shared")
    with pytest.raises(ProvisioningFailed) as info:
        create_tenant(migrator, "tenant_bad")
    migrator.close()
    assert info.value.revision == "t3"
    assert "no_such_table" in str(info.value)
    assert not schema_exists(db, "tenant_bad")


def test_console_create_and_drop_tenant(project, db):
    project.app_factory = "call:tests.apps:main"
    project.write_standard_revisions()
    project.write_ini()
    project.run("upgrade", "shared", check=0)

    result = project.run("create-tenant", "tenant_cli", check=0)
    assert "Created tenant schema tenant_cli" in result.stdout
    assert version_of(db, "tenant_cli") == ["t2"]

    result = project.run("create-tenant", "tenant_cli", check=2)
    assert "'tenant_cli' already exists" in result.stderr
    result = project.run("create-tenant", "Bad-Name", check=2)
    assert "invalid tenant schema name" in result.stderr

    # drop-tenant asks; a wrong answer (or none) drops nothing.
    result = project.run("drop-tenant", "tenant_cli", input="", check=2)
    assert "not confirmed" in result.stderr
    assert schema_exists(db, "tenant_cli")
    project.run("drop-tenant", "tenant_cli", input="tenant_cli\n", check=0)
    assert not schema_exists(db, "tenant_cli")
    result = project.run("drop-tenant", "--yes", "tenant_cli", check=2)
    assert "does not exist" in result.stderr


def test_console_uses_the_tenant_source_set_in_code(project, db):
    project.app_factory = "call:tests.apps:main_with_source"
    project.write_standard_revisions()
    project.write_ini(**{"tenantmigrate.tenant_schema_prefix": None})
    project.run("upgrade", "shared", check=0)
    result = project.run("create-tenant", "tenant_other", check=0)
    # The app's source (tests.apps.tenant_list) does not list it.
    assert "does not list tenant_other" in result.stderr
    result = project.run("create-tenant", "tenant_code", check=0)
    assert "does not list" not in result.stderr


def test_console_failing_revision_exits_1(project, db):
    project.app_factory = "call:tests.apps:main"
    project.write_standard_revisions()
    project.write_revision("tenant", "t3", "t2",
                           "op.execute('SELECT * FROM no_such_table')")
    project.write_ini()
    project.run("upgrade", "shared", check=0)
    result = project.run("create-tenant", "tenant_bad", check=1)
    assert "creating tenant 'tenant_bad' failed at revision t3" in (
        result.stderr)
    assert not schema_exists(db, "tenant_bad")


def test_console_misconfigured_app_exits_2(project, db):
    # The ini sets a tenant source and the app sets another in code.
    project.app_factory = "call:tests.apps:main_with_source"
    project.write_standard_revisions()
    project.write_ini()
    result = project.run("create-tenant", "tenant_x", check=2)
    assert "tenantmigrate.tenant_schema_prefix" in result.stderr
    assert "Traceback" not in result.stderr
    assert not schema_exists(db, "tenant_x")


def test_in_an_app_session_on_another_driver(migrator, db, database_url):
    # An app's own engine may use psycopg 3 (SQLAlchemy 2.1's default for
    # postgresql://); provisioning joins its transaction all the same.
    engine = sa.create_engine(database_url.replace(
        "postgresql+psycopg2://", "postgresql+psycopg://", 1))
    manager = transaction.TransactionManager(explicit=True)
    dbsession = sessionmaker(bind=engine)()
    zope.sqlalchemy.register(dbsession, transaction_manager=manager)
    try:
        with manager:
            create_tenant(migrator, "tenant_v3", dbsession=dbsession,
                          transaction_manager=manager)
        assert version_of(db, "tenant_v3") == ["t2"]
        assert tables_of(db, "tenant_v3") == ["alembic_version", "notes"]
        with pytest.raises(sa.exc.IntegrityError):
            with manager:
                create_tenant(migrator, "tenant_v3b", dbsession=dbsession,
                              transaction_manager=manager)
                dbsession.execute(sa.text(
                    "INSERT INTO public.accounts (email) "
                    "VALUES ('a'), ('a')"))
        assert not schema_exists(db, "tenant_v3b")
    finally:
        dbsession.close()
        engine.dispose()
