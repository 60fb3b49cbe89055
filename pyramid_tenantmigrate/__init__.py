"""pyramid_tenantmigrate: Alembic migrations for schema-per-tenant PostgreSQL.

Layout, following the way a run flows:

- :mod:`.settings`  every ``tenantmigrate.*`` setting, parsed in one place
- :mod:`.tenants`   where tenants come from, and which ones a run is for
- :mod:`.names`     validation and quoting of schema names
- :mod:`.versions`  every schema's revision, read in one round trip
- :mod:`.plan`      who is behind and which revisions each schema needs
- :mod:`.execute`   running a plan, one transaction per schema
- :mod:`.environment` the bridge called from a project's ``env.py``
- :mod:`.report`    what a run did, as text and JSON
- :mod:`.migrator`  the object holding engine, scripts and settings
- :mod:`.autogenerate` comparing each branch's models with the database
- :mod:`.commands`  one function per command, as ``alembic.command``
- :mod:`.scripts.tenant_migrate` the ``tenant-migrate`` console script
- :mod:`.embedded`  the embedded development database
"""
from .errors import (  # noqa: F401
    ConfigurationError, DatabaseUnavailable, InvalidSchemaName,
    MigrationFailed, TenantMigrateError, UsageError,
)
from .migrator import TenantMigrator  # noqa: F401
