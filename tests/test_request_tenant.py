"""The request's tenant: from the subdomain, a header, the matchdict or a
callable; checked against the tenant source; the request's session
scoped to it without code in the views."""
import pytest
import sqlalchemy as sa
import transaction
import webtest
import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationExecutionError
from sqlalchemy.orm import declarative_base, sessionmaker

from pyramid_tenantmigrate import (
    ConfigurationError,
    commands,
    create_tenant,
    drop_tenant,
    set_tenant,
)
from pyramid_tenantmigrate.directory import TenantDirectory

from .conftest import create_schemas

Base = declarative_base()


class Note(Base):
    __tablename__ = "notes"  # no schema: the request's tenant's
    id = sa.Column(sa.Integer, primary_key=True)
    title = sa.Column(sa.Text, nullable=False)


def notes_view(request):
    titles = request.dbsession.scalars(
        sa.select(Note.title).order_by(Note.id)).all()
    return {"tenant": request.tenant, "titles": titles}


def signup_view(request):
    schema = request.params["schema"]
    request.create_tenant(schema)
    # The new tenant, in the request that made it:
    set_tenant(request.dbsession, schema)
    request.dbsession.add(Note(title=f"welcome to {schema}"))
    return {"tenant": schema}


def make_app(migrator_settings, resolver=None, shared_session=None):
    """The cookiecutter's shape: pyramid_tm, request.dbsession from
    get_tm_session with the request in the session's info."""
    with Configurator(settings=migrator_settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_tenantmigrate")
        if resolver is not None:
            config.set_tenant_resolver(resolver)
        factory = sessionmaker(bind=config.registry.tenant_migrator.engine)

        def dbsession(request):
            if shared_session is not None:
                return shared_session
            session = factory(info={"request": request})
            zope.sqlalchemy.register(session, transaction_manager=request.tm)
            return session

        config.add_request_method(dbsession, reify=True)
        config.add_route("home", "/")
        config.add_route("notes", "/notes")
        config.add_route("tenant_notes", "/t/{tenant}/notes")
        config.add_route("signup", "/signup")
        config.add_view(lambda request: {"tenant": request.tenant},
                        route_name="home", renderer="json")
        config.add_view(notes_view, route_name="notes", renderer="json")
        config.add_view(notes_view, route_name="tenant_notes",
                        renderer="json")
        config.add_view(signup_view, route_name="signup", renderer="json",
                        request_method="POST")
        # A tenant's page and the landing page on one URL; a page for
        # tenants only.
        config.add_route("page", "/page")
        config.add_view(lambda request: {"page": "landing"},
                        route_name="page", renderer="json", tenant=False)
        config.add_view(notes_view, route_name="page", renderer="json",
                        tenant=True)
        config.add_route("tenant_page", "/tenant-page")
        config.add_view(notes_view, route_name="tenant_page",
                        renderer="json", tenant=True)
    return config.make_wsgi_app()


@pytest.fixture
def tenants(project, db):
    """tenant_a and tenant_b, each with a note of its own; a schema that
    is no tenant, with a note too; a spare."""
    project.write_revision("tenant", "t1", None, """
        op.create_table("notes",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("title", sa.Text, nullable=False))
        """)
    create_schemas(db, "tenant_a", "tenant_b")
    migrator = project.migrator()
    commands.upgrade(migrator)
    migrator.close()
    with db.begin() as connection:
        for schema in ("tenant_a", "tenant_b"):
            connection.exec_driver_sql(
                f"INSERT INTO {schema}.notes (title) VALUES ('{schema} note')")
        connection.exec_driver_sql(
            "CREATE SCHEMA other; CREATE TABLE other.notes "
            "(id serial PRIMARY KEY, title text NOT NULL); "
            "INSERT INTO other.notes (title) VALUES ('other note'); "
            "CREATE TABLE public.notes (LIKE other.notes INCLUDING ALL); "
            "INSERT INTO public.notes (title) VALUES ('public note'); "
            "CREATE SCHEMA tenantmigrate_spare_0; "
            "CREATE TABLE tenantmigrate_spare_0.notes (LIKE other.notes)")
    return project


def settings(project, **extra):
    return dict(project.settings, **{f"tenantmigrate.{k}": v
                                     for k, v in extra.items()})


def test_tenant_from_the_subdomain(tenants):
    app = webtest.TestApp(make_app(settings(
        tenants, tenant_from="subdomain", tenant_domain="example.com")))

    def get(host, path="/notes", status=200):
        return app.get(path, headers={"Host": host}, status=status)

    assert get("tenant_a.example.com").json == {
        "tenant": "tenant_a", "titles": ["tenant_a note"]}
    assert get("TENANT_B.example.com:8080").json == {
        "tenant": "tenant_b", "titles": ["tenant_b note"]}
    # The bare domain names no tenant.
    assert get("example.com", "/").json == {"tenant": None}
    # tenant=True / tenant=False views: a tenant's page, the landing page;
    # a tenant's page on the bare domain is a 404, not a read of
    # public.notes.
    assert get("example.com", "/page").json == {"page": "landing"}
    assert get("tenant_a.example.com", "/page").json == {
        "tenant": "tenant_a", "titles": ["tenant_a note"]}
    assert get("tenant_b.example.com", "/tenant-page").json[
        "titles"] == ["tenant_b note"]
    get("example.com", "/tenant-page", status=404)
    # Anything else that is not a tenant: 404 before the view runs.
    for host in ("public.example.com", "other.example.com",
                 "tenantmigrate_spare_0.example.com",
                 "tenant_nope.example.com", "x.tenant_a.example.com",
                 "pg_catalog.example.com"):
        get(host, status=404)


@pytest.mark.parametrize("how", ["header", "matchdict", "callable"])
def test_tenant_from_a_header_the_matchdict_or_a_callable(tenants, how):
    if how == "header":
        app = make_app(settings(tenants, tenant_from="header X-Tenant"))

        def url(tenant):
            return "/notes", {"X-Tenant": tenant}
    elif how == "matchdict":
        app = make_app(settings(tenants, tenant_from="matchdict tenant"))

        def url(tenant):
            return f"/t/{tenant}/notes", {}
    else:
        app = make_app(tenants.settings,
                       resolver=lambda r: r.params.get("tenant"))

        def url(tenant):
            return f"/notes?tenant={tenant}", {}
    app = webtest.TestApp(app)
    for tenant in ("tenant_a", "tenant_b"):
        path, headers = url(tenant)
        assert app.get(path, headers=headers).json["titles"] == [
            f"{tenant} note"]
    for hostile in ("public", "other", 'tenant_a"; DROP SCHEMA x; --',
                    "tenant_a.notes", "Tenant_A", "tenantmigrate_spare_0"):
        path, headers = url(hostile.replace(" ", "%20").replace(";", "%3B"))
        if how == "header":
            headers = {"X-Tenant": hostile}
        app.get(path, headers=headers, status=404)


def test_new_tenants_are_seen_and_dropped_ones_are_not(tenants, db):
    """A sign-up in this process is a tenant at once (same request,
    next request); a tenant another process created is found on the
    first miss a second after the last read; one dropped here is gone."""
    now = [0.0]
    wsgi_app = make_app(settings(tenants, tenant_from="header X-Tenant"))
    migrator = wsgi_app.registry.tenant_migrator
    migrator.tenant_directory = TenantDirectory(migrator,
                                                clock=lambda: now[0])
    app = webtest.TestApp(wsgi_app)

    def titles(tenant, status=200):
        response = app.get("/notes", headers={"X-Tenant": tenant},
                           status=status)
        return response.json["titles"] if status == 200 else None

    assert titles("tenant_a") == ["tenant_a note"]
    app.post("/signup", {"schema": "tenant_new"})
    assert titles("tenant_new") == ["welcome to tenant_new"]

    # Made by another process: unknown until a second has passed.
    other = tenants.migrator()
    create_tenant(other, "tenant_elsewhere")
    other.close()
    titles("tenant_elsewhere", status=404)
    now[0] = 1.0
    assert titles("tenant_elsewhere") == []

    with migrator.engine.begin() as connection:
        drop_tenant(migrator, "tenant_b", connection=connection,
                    registry=wsgi_app.registry)
    titles("tenant_b", status=404)


def test_a_session_shared_between_requests_follows_each(tenants, db):
    """The cookiecutter's tests share one session between requests: each
    request scopes it to its own tenant, or to none."""
    engine = sa.create_engine(tenants.database_url)
    manager = transaction.TransactionManager(explicit=True)
    manager.begin()
    shared = sessionmaker(bind=engine)()
    zope.sqlalchemy.register(shared, transaction_manager=manager)
    app = webtest.TestApp(
        make_app(settings(tenants, tenant_from="header X-Tenant"),
                 shared_session=shared),
        extra_environ={"tm.active": True, "tm.manager": manager})
    for tenant in ("tenant_a", "tenant_b", "tenant_a"):
        assert app.get("/notes", headers={"X-Tenant": tenant}).json[
            "titles"] == [f"{tenant} note"]
    # No tenant named: the session is no tenant's (public.notes here).
    assert app.get("/notes").json["titles"] == ["public note"]
    manager.abort()
    engine.dispose()


@pytest.mark.parametrize("extra, named", [
    ({"tenant_from": "subdomain"}, "tenantmigrate.tenant_domain"),
    ({"tenant_from": "header"}, "tenantmigrate.tenant_from"),
    ({"tenant_from": "matchdict"}, "tenantmigrate.tenant_from"),
    ({"tenant_from": "subdomains"}, "tenantmigrate.tenant_from"),
    ({"tenant_from": "subdomain x"}, "tenantmigrate.tenant_from"),
    ({"tenant_from": "tests.nowhere:resolve"}, "tenantmigrate.tenant_from"),
    ({"tenant_cache": "-1"}, "tenantmigrate.tenant_cache"),
])
def test_bad_resolution_settings_are_named(project, extra, named):
    with pytest.raises(ConfigurationError, match=named.replace(".", r"\.")):
        make_app(settings(project, **extra))


def test_setting_and_directive_together_are_refused(project):
    with pytest.raises(ConfigurationExecutionError,
                       match="tenant_from both say"):
        make_app(settings(project, tenant_from="header X-Tenant"),
                 resolver=lambda request: None)


def test_a_tenant_read_before_routing_is_read_again(tenants):
    """Something reading request.tenant before routing (a NewRequest
    subscriber) saw no matchdict yet: after routing the request's tenant
    is resolved again, checked and scoped all the same."""
    from pyramid.events import NewRequest

    seen = []
    app = make_app(settings(tenants, tenant_from="matchdict tenant"))
    app.registry.registerHandler(
        lambda event: seen.append(event.request.tenant), (NewRequest,))
    app = webtest.TestApp(app)
    assert app.get("/t/tenant_b/notes").json == {
        "tenant": "tenant_b", "titles": ["tenant_b note"]}
    app.get("/t/other/notes", status=404)
    assert seen == [None, None]
