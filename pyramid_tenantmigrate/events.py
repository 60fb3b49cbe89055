"""Events sent to the app's subscribers when tenants come and go.

Subscribe with ``config.add_subscriber(seed, TenantCreated)`` (or
``@subscriber(TenantCreated)``). They are sent inside the transaction that
provisioned the tenant: whatever a subscriber writes commits or rolls back
with the tenant itself.
"""


class _TenantEvent:
    """What every tenant event carries (see :class:`TenantCreated`).

    A private base, not a base of each other: a ``TenantCreated``
    subscriber must never run for a dropped tenant.
    """

    def __init__(self, schema, connection, migrator, registry=None,
                 request=None, dbsession=None, source=None):
        self.schema = schema
        self.source = source
        self.connection = connection
        self.migrator = migrator
        self.registry = registry
        self.request = request
        self.dbsession = dbsession

    @property
    def database(self):
        """In a fleet, the name of the database holding the tenant
        (``connection`` is to it); else ``None``."""
        return getattr(self.migrator, "database_name", None)


class TenantCreated(_TenantEvent):
    """A tenant schema was created and brought to the tenant head.

    - ``schema``: the new tenant's schema name;
    - ``connection``: the connection it was created on, inside the still
      open transaction. While subscribers run, tables declared without a
      schema resolve to the new tenant on it (``schema_translate_map``), so
      ``connection.execute(insert(Note.__table__) ...)`` seeds the tenant;
    - ``dbsession``: the request's session when provisioning ran in one
      (else ``None``); it shares ``connection``;
    - ``request`` (or ``None`` outside a request), ``registry``,
      ``migrator``.
    """


class TenantDropped(_TenantEvent):
    """A tenant schema was dropped (same attributes as
    :class:`TenantCreated`, the schema no longer exists)."""


class TenantRenamed(_TenantEvent):
    """A tenant schema was renamed: ``schema`` is its new name, ``source``
    the old one (update the tenants table here: the same transaction)."""


class TenantCloned(_TenantEvent):
    """A tenant schema was made as a copy of another: ``schema`` is the new
    tenant, ``source`` the one copied (at its revision, with its rows when
    asked); record the new tenant here, in the same transaction."""
