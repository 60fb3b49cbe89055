"""The demo's models and sessions, wired as the Pyramid cookiecutter does
(``get_tm_session``), with the engine taken from the tenant migrator.

Shared models name the shared schema; tenant models have no schema and land
in whichever tenant the session is scoped to (:func:`set_tenant`).
"""
import sqlalchemy as sa
import zope.sqlalchemy
from sqlalchemy.orm import declarative_base, sessionmaker

Base = declarative_base()


class Tenant(Base):
    """A row of the shared ``public.tenants`` table."""

    __tablename__ = "tenants"
    __table_args__ = {"schema": "public"}

    id = sa.Column(sa.Integer, primary_key=True)
    name = sa.Column(sa.Text, nullable=False, unique=True)
    schema_name = sa.Column(sa.String(63), nullable=False, unique=True)
    created_at = sa.Column(sa.DateTime(timezone=True),
                           server_default=sa.func.now(), nullable=False)


class Note(Base):
    """A note in one tenant's ``notes`` table (no schema: per tenant)."""

    __tablename__ = "notes"

    id = sa.Column(sa.Integer, primary_key=True)
    author_tenant_id = sa.Column(sa.Integer,
                                 sa.ForeignKey("public.tenants.id"))
    title = sa.Column(sa.Text, nullable=False)
    body = sa.Column(sa.Text, nullable=False, server_default="")
    pinned = sa.Column(sa.Boolean, nullable=False, server_default=sa.false())
    created_at = sa.Column(sa.DateTime(timezone=True),
                           server_default=sa.func.now(), nullable=False)


def get_session_factory(engine):
    return sessionmaker(bind=engine)


def get_tm_session(session_factory, transaction_manager, request=None):
    """A session joined to ``transaction_manager`` (the cookiecutter's)."""
    dbsession = session_factory(info={"request": request})
    zope.sqlalchemy.register(dbsession,
                             transaction_manager=transaction_manager)
    return dbsession


def includeme(config):
    """``request.dbsession``, committed or aborted by pyramid_tm."""
    settings = config.get_settings()
    settings["tm.manager_hook"] = "pyramid_tm.explicit_manager"
    config.include("pyramid_tm")
    # One engine for the app and its migrations (this resolves embedded://).
    engine = config.registry.tenant_migrator.engine
    session_factory = get_session_factory(engine)
    config.registry["dbsession_factory"] = session_factory

    def dbsession(request):
        return get_tm_session(session_factory, request.tm, request=request)

    config.add_request_method(dbsession, "dbsession", reify=True)
