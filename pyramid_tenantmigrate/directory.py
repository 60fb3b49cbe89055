"""Which schemas are tenants, for the app: the tenant source's list, cached.

A request naming a tenant (:mod:`.resolution`) and :func:`.set_tenant`
ask :meth:`TenantDirectory.check` whether a name is a tenant. Asking the
tenant source each time would cost a query per request; the list is
kept for ``tenantmigrate.tenant_cache`` seconds instead. A name missing
from it is looked up again at once (a tenant another process just
created), at most once a second, so that a stream of unknown names
cannot turn into a stream of queries. Tenants this process creates,
clones, renames or drops count at once: provisioning tells the
migrator's directory before it sends its event (whose subscribers may
scope a session to the new tenant).
"""
import threading
import time

from .errors import TenantSourceUnavailable, UnknownTenant
from .names import schema_name_problem
from .reserved import SPARE_PREFIX
from .tenants import discover_tenant_schemas

#: Seconds between two reads of the source caused by unknown names.
MISS_INTERVAL = 1.0


class TenantDirectory:
    """The tenant source's names, as the app sees them."""

    def __init__(self, migrator, max_age=None, clock=time.monotonic):
        self.migrator = migrator
        self.max_age = (migrator.settings.tenant_cache if max_age is None
                        else max_age)
        self._clock = clock
        self._lock = threading.Lock()
        self._names = frozenset()
        self._loaded = None  # when the names were read; None: never
        # Made here, maybe not committed (nor listed) yet: a request that
        # creates a tenant may scope its session to it at once.
        self._created = {}
        # In a fleet: {schema: database} as last read, and of those made
        # here.
        self._where = {}
        self._created_where = {}

    def check(self, name):
        """Return ``name`` if it is a tenant; raise
        :class:`~.errors.UnknownTenant` otherwise (the shared schema,
        a spare, any other schema, a name no schema could have)."""
        settings = self.migrator.settings
        if (not isinstance(name, str)
                or schema_name_problem(name, settings.shared_schema)
                or name.startswith(SPARE_PREFIX)):
            raise UnknownTenant(name)
        if not self._knows(name):
            raise UnknownTenant(name)
        return name

    def _knows(self, name):
        with self._lock:
            now = self._clock()
            age = None if self._loaded is None else now - self._loaded
            if age is None or age >= self.max_age or (
                    name not in self._names and name not in self._created
                    and age >= MISS_INTERVAL):
                self._names = frozenset(self._read())
                self._loaded = now
                # Made here and listed now, or never committed: forgotten.
                self._created = {
                    created: when for created, when in self._created.items()
                    if created not in self._names
                    and now - when < self.max_age}
            return name in self._names or name in self._created

    def database_of(self, name):
        """In a fleet, the database holding the tenant ``name`` (checked
        with :meth:`check` first), else ``None``."""
        with self._lock:
            return self._where.get(name) or self._created_where.get(name)

    def _read(self):
        migrator = self.migrator
        if migrator.runs_fleet:
            try:
                self._where = migrator.fleet.all_tenants()[0]
            except TenantSourceUnavailable:
                self._where = {}
            return list(self._where)
        with migrator.engine.connect() as connection:
            try:
                return discover_tenant_schemas(connection, migrator.settings)
            except TenantSourceUnavailable:
                return ()  # the shared branch has not made the table yet

    def created(self, name, database=None):
        """A tenant was created here (in a fleet: on ``database``): one
        from now on (for ``tenant_cache`` seconds until the source lists
        it)."""
        with self._lock:
            self._created[name] = self._clock()
            if database is not None:
                self._created_where[name] = database

    def dropped(self, name):
        """A tenant was dropped here: no longer one, from now on."""
        with self._lock:
            self._names = self._names - {name}
            self._created.pop(name, None)

