"""Tenant-scoped sessions: schema_translate_map, nothing left on the pool."""
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, declarative_base, sessionmaker

from pyramid_tenantmigrate import (
    ConfigurationError,
    UnknownTenant,
    clear_tenant,
    commands,
    get_tenant_session,
    set_tenant,
    tenant_of,
)

from .conftest import create_schemas

Base = declarative_base()


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = {"schema": "public"}
    id = sa.Column(sa.Integer, primary_key=True)
    email = sa.Column(sa.Text, nullable=False)


class Note(Base):
    __tablename__ = "notes"
    id = sa.Column(sa.Integer, primary_key=True)
    account_id = sa.Column(sa.Integer, sa.ForeignKey("public.accounts.id"))
    title = sa.Column(sa.Text, nullable=False)
    pinned = sa.Column(sa.Boolean, nullable=False, default=False)


@pytest.fixture
def migrator(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b")
    migrator = project.migrator()
    commands.upgrade(migrator)
    yield migrator
    migrator.close()


@pytest.fixture
def engine(project, migrator):
    # One small pool: both tenants go through the same connection.
    engine = sa.create_engine(project.database_url, pool_size=1,
                              max_overflow=0)
    yield engine
    engine.dispose()


def titles(engine, schema):
    with engine.connect() as connection:
        return [r[0] for r in connection.exec_driver_sql(
            f'SELECT title FROM "{schema}".notes ORDER BY id')]


def test_two_tenant_sessions_see_only_their_own_rows(engine, migrator):
    factory = sessionmaker(bind=engine)
    with get_tenant_session(factory, "tenant_a", migrator=migrator) as a, \
            a.begin():
        account = Account(email="a@example.com")
        a.add(account)
        a.flush()
        a.add(Note(title="for a", account_id=account.id))
    with get_tenant_session(factory, "tenant_b", migrator=migrator) as b, \
            b.begin():
        b.add(Note(title="for b"))
        assert b.scalars(sa.select(Note.title)).all() == ["for b"]
        # Shared models stay shared.
        assert b.scalars(sa.select(Account.email)).all() == [
            "a@example.com"]
    with get_tenant_session(factory, "tenant_a", migrator=migrator) as a:
        assert a.scalars(sa.select(Note.title)).all() == ["for a"]
        assert tenant_of(a) == "tenant_a"
    assert titles(engine, "tenant_a") == ["for a"]
    assert titles(engine, "tenant_b") == ["for b"]
    # The one pooled connection kept no tenant.
    with engine.connect() as connection:
        assert connection.exec_driver_sql(
            "SHOW search_path").scalar() == '"$user", public'
        assert "schema_translate_map" not in (
            connection.get_execution_options())


def test_set_tenant_mid_transaction_and_switching(engine, migrator):
    with Session(engine) as dbsession, dbsession.begin():
        dbsession.execute(sa.select(Account))  # transaction already open
        set_tenant(dbsession, "tenant_a", migrator)
        dbsession.add(Note(id=1, title="a1"))
        note = dbsession.get(Note, 1)
        # Flushes a1 into tenant_a:
        set_tenant(dbsession, "tenant_b", migrator)
        assert note not in dbsession
        assert dbsession.get(Note, 1) is None
        dbsession.add(Note(id=1, title="b1"))
    assert titles(engine, "tenant_a") == ["a1"]
    assert titles(engine, "tenant_b") == ["b1"]


def test_only_tenants_of_the_source_are_accepted(engine, migrator, db):
    """Not the shared schema, not another schema, not a spare, not a
    name no schema could have: only what the tenant source lists."""
    with db.begin() as connection:
        connection.exec_driver_sql(
            "CREATE SCHEMA extensions; "
            "CREATE SCHEMA tenantmigrate_spare_1; CREATE SCHEMA other_a")
    with Session(engine) as dbsession:
        for bad in ("public", "extensions", "tenantmigrate_spare_1",
                    "other_a", "tenant_nope", 'a"; drop', "Tenant",
                    "pg_catalog", None, 7):
            with pytest.raises(UnknownTenant):
                set_tenant(dbsession, bad, migrator)
            assert tenant_of(dbsession) is None
        # Outside a request, with no migrator: said, not guessed.
        with pytest.raises(ConfigurationError, match="migrator="):
            set_tenant(dbsession, "tenant_a")
        set_tenant(dbsession, "tenant_a", migrator)
        assert dbsession.scalars(sa.select(Note.title)).all() == []
        clear_tenant(dbsession)
        assert tenant_of(dbsession) is None
