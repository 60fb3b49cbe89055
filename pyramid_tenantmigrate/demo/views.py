"""The demo's views: sign-up provisions a tenant inside the request;
notes are read and written through ``request.dbsession``, which
``tenantmigrate.tenant_from = matchdict tenant`` scopes to the tenant of
the URL."""
import sqlalchemy as sa
from pyramid.events import subscriber
from pyramid.view import exception_view_config, view_config
from sqlalchemy.exc import IntegrityError

from .. import commands
from ..errors import InvalidSchemaName, TenantExists
from ..events import TenantCreated
from .models import Note, Tenant


@view_config(route_name="home", renderer="json")
def home_view(request):
    """The tenants, from the shared table."""
    tenants = request.dbsession.execute(
        sa.select(Tenant).order_by(Tenant.schema_name)).scalars()
    return {"tenants": [{"name": t.name, "schema": t.schema_name}
                        for t in tenants]}


@view_config(route_name="status", renderer="string")
def status_view(request):
    """Where every schema stands, as ``tenant-migrate current``."""
    return commands.current(request.tenant_migrator).render_text(
        verbose=True)


@view_config(route_name="signup", request_method="POST", renderer="json")
def signup_view(request):
    """Create the tenant schema, then record the tenant, in one
    transaction: if recording fails, the schema is rolled back too."""
    name = request.POST.get("name", "").strip()
    schema = request.POST.get("schema", "").strip()
    request.create_tenant(schema)
    request.dbsession.add(Tenant(name=name, schema_name=schema))
    request.dbsession.flush()  # the unique name is checked here
    request.response.status = 201
    return {"name": name, "schema": schema,
            "notes": request.route_url("notes", tenant=schema)}


@subscriber(TenantCreated)
def seed_welcome_note(event):
    """Every new tenant starts with a note (runs in the same transaction;
    the connection is scoped to the new tenant)."""
    event.connection.execute(sa.insert(Note.__table__).values(
        title="Welcome", body=f"This is {event.schema}'s first note."))


def _tenant(request):
    # request.tenant is the route's {tenant}, checked against the tenant
    # source (404 otherwise), and request.dbsession is scoped to it.
    return request.dbsession.execute(
        sa.select(Tenant).where(Tenant.schema_name == request.tenant)
    ).scalar_one()


@view_config(route_name="notes", request_method="GET", renderer="json")
def notes_view(request):
    """This tenant's notes, and nobody else's."""
    tenant = _tenant(request)
    notes = request.dbsession.execute(
        sa.select(Note).order_by(Note.id)).scalars()
    return {"tenant": tenant.schema_name,
            "notes": [{"id": n.id, "title": n.title, "body": n.body}
                      for n in notes]}


@view_config(route_name="notes", request_method="POST", renderer="json")
def add_note_view(request):
    """Add a note to this tenant."""
    tenant = _tenant(request)
    note = Note(title=request.POST.get("title", ""),
                body=request.POST.get("body", ""),
                author_tenant_id=tenant.id)
    request.dbsession.add(note)
    request.dbsession.flush()
    request.response.status = 201
    return {"id": note.id}


@exception_view_config(InvalidSchemaName, renderer="json")
def invalid_name_view(exc, request):
    request.response.status = 400
    return {"error": str(exc)}


@exception_view_config(TenantExists, renderer="json")
@exception_view_config(IntegrityError, renderer="json")
def conflict_view(exc, request):
    # pyramid_tm aborts the transaction of a request that raised, even
    # when this view answers it: the new schema is rolled back.
    request.response.status = 409
    error = getattr(exc, "orig", None) or exc
    return {"error": " ".join(str(error).split())}
