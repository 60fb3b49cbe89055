"""The current tenant of a request, and the request's session scoped to it.

With ``tenantmigrate.tenant_from`` set (or ``config.set_tenant_resolver``),
each request names its tenant the way the app chose: the subdomain of
``tenantmigrate.tenant_domain``, a header, a route's matchdict value, or
a callable. After routing (Pyramid's ``BeforeTraversal``: the matchdict is
known, no view has run), :func:`scope_request` reads ``request.tenant``:

- ``None`` when the request names no tenant (the bare domain's sign-up
  page, a route without the key): nothing is scoped;
- the schema name when the tenant source lists it (through the cached
  :class:`~.directory.TenantDirectory`);
- anything else (an unknown name, the shared schema, a spare, a name no
  schema could have) is answered ``404 Not Found`` before any view runs.

Then the request's session (``request.dbsession``, the
``tenantmigrate.request_session`` setting) is scoped to the tenant with
:func:`.set_tenant`: views use ``request.dbsession`` as they would in a
single-tenant app.
"""
from pyramid.httpexceptions import HTTPNotFound

from .directives import get_migrator
from .errors import UnknownTenant
from .sessions import clear_tenant, set_tenant, tenant_of


def _from_subdomain(domain):
    suffix = "." + domain

    def resolve(request):
        host = (request.host or "").rsplit(":", 1)[0].lower().rstrip(".")
        if host.endswith(suffix):
            return host[:-len(suffix)]  # a.b.example.com: 'a.b', refused
        return None

    return resolve


def _from_header(name):
    return lambda request: request.headers.get(name) or None


def _from_matchdict(key):
    return lambda request: (request.matchdict or {}).get(key)


def resolver_for(settings):
    """The callable reading a request's tenant name, from the parsed
    ``tenant_from`` setting; ``None`` when it is not set."""
    if settings.tenant_from is None:
        return None
    kind, argument = settings.tenant_from
    if kind == "subdomain":
        return _from_subdomain(settings.tenant_domain)
    if kind == "header":
        return _from_header(argument)
    if kind == "matchdict":
        return _from_matchdict(argument)
    return argument  # a callable


def request_tenant(request):
    """``request.tenant`` (reified): the request's tenant schema, ``None``
    when it names none; :class:`~pyramid.httpexceptions.HTTPNotFound` when
    it names something that is not a tenant. After routing,
    :func:`scope_request` sets it anew (read before routing, the matchdict
    was not known yet)."""
    resolve = request.registry.tenant_resolver
    name = resolve(request) if resolve is not None else None
    if name is None:
        return None
    try:
        return get_migrator(request.registry).tenant_directory.check(name)
    except UnknownTenant:
        raise HTTPNotFound("no such tenant") from None


def scope_request(event):
    """``BeforeTraversal`` subscriber: resolve ``request.tenant`` (a 404
    for a name that is no tenant) and scope the request's session to it."""
    request = event.request
    if request.registry.tenant_resolver is None:
        return
    set_request_tenant(request, request_tenant(request))


class TenantPredicate:
    """The view predicate ``tenant``: ``tenant=True`` matches requests
    naming a tenant only (a tenant's pages: on the bare domain they are a
    404, not a query of a tenant table in no tenant), ``tenant=False``
    requests naming none (the landing and sign-up pages)."""

    def __init__(self, value, config):
        self.value = bool(value)

    def text(self):
        return f"tenant = {self.value}"

    phash = text

    def __call__(self, context, request):
        return (request.tenant is not None) is self.value


def set_request_tenant(request, tenant, migrator=None):
    """Make ``tenant`` (a schema already checked against the tenant source,
    or ``None``) the request's tenant: ``request.tenant``, and the request's
    session (``tenantmigrate.request_session``) scoped to it.

    What :func:`scope_request` does after routing, and ``tenant-migrate
    <ini> shell`` to the shell's request. ``migrator`` defaults to the
    request's app's.
    """
    request.tenant = tenant
    migrator = migrator or get_migrator(request.registry)
    attribute = migrator.settings.request_session
    if attribute is None:
        return
    dbsession = getattr(request, attribute, None)
    if dbsession is None:
        return
    if tenant is not None:
        set_tenant(dbsession, tenant, migrator)
    elif tenant_of(dbsession) is not None:
        # A session shared between requests (a test's): not the last
        # request's tenant.
        clear_tenant(dbsession)
