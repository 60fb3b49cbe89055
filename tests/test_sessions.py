"""Tenant-scoped sessions: schema_translate_map, nothing left on the pool."""
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, declarative_base, sessionmaker

from pyramid_tenantmigrate import (
    InvalidSchemaName,
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
def engine(project, db):
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b")
    migrator = project.migrator()
    commands.upgrade(migrator)
    # One small pool: both tenants go through the same connection.
    engine = sa.create_engine(project.database_url, pool_size=1,
                              max_overflow=0)
    yield engine
    engine.dispose()
    migrator.close()


def titles(engine, schema):
    with engine.connect() as connection:
        return [r[0] for r in connection.exec_driver_sql(
            f'SELECT title FROM "{schema}".notes ORDER BY id')]


def test_two_tenant_sessions_see_only_their_own_rows(engine):
    factory = sessionmaker(bind=engine)
    with get_tenant_session(factory, "tenant_a") as a, a.begin():
        account = Account(email="a@example.com")
        a.add(account)
        a.flush()
        a.add(Note(title="for a", account_id=account.id))
    with get_tenant_session(factory, "tenant_b") as b, b.begin():
        b.add(Note(title="for b"))
        assert b.scalars(sa.select(Note.title)).all() == ["for b"]
        # Shared models stay shared.
        assert b.scalars(sa.select(Account.email)).all() == [
            "a@example.com"]
    with get_tenant_session(factory, "tenant_a") as a:
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


def test_set_tenant_mid_transaction_and_switching(engine):
    with Session(engine) as dbsession, dbsession.begin():
        dbsession.execute(sa.select(Account))  # transaction already open
        set_tenant(dbsession, "tenant_a")
        dbsession.add(Note(id=1, title="a1"))
        note = dbsession.get(Note, 1)
        set_tenant(dbsession, "tenant_b")  # flushes a1 into tenant_a
        assert note not in dbsession
        assert dbsession.get(Note, 1) is None
        dbsession.add(Note(id=1, title="b1"))
    assert titles(engine, "tenant_a") == ["a1"]
    assert titles(engine, "tenant_b") == ["b1"]


def test_tenant_names_are_validated(engine):
    with Session(engine) as dbsession:
        for bad in ("public", 'a"; drop', "Tenant", "pg_catalog"):
            with pytest.raises(InvalidSchemaName):
                set_tenant(dbsession, bad)
