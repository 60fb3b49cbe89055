"""Exceptions raised by pyramid_tenantmigrate.

The console script maps them to exit codes: :class:`ConfigurationError` and
:class:`UsageError` exit 2 (nothing ran), the others exit 1 (the work
failed, or could not be done).
"""


class TenantMigrateError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class ConfigurationError(TenantMigrateError):
    """A ``tenantmigrate.*`` setting is missing, malformed or contradictory.

    The message names the setting and what to write instead.
    """

    exit_code = 2


class UsageError(TenantMigrateError):
    """A command was called with arguments that cannot work.

    Unknown revision, unknown tenant, a branch that does not exist: nothing
    has been changed when this is raised.
    """

    exit_code = 2


class InvalidSchemaName(UsageError):
    """A tenant schema name is not one this package will run SQL for."""

    def __init__(self, name, reason):
        self.name = name
        self.reason = reason
        super().__init__(f"invalid tenant schema name {name!r}: {reason}")


class DatabaseUnavailable(TenantMigrateError):
    """The database could not be reached, or went away during a run."""


class TenantSourceUnavailable(TenantMigrateError):
    """The tenant source reads something the database does not have yet
    (a tenants table the shared branch creates)."""


class NotUpToDate(TenantMigrateError):
    """Autogenerate needs a schema at its branch's head, and it is not.

    The message says where the schema is and what to run first.
    """


class CatalogUnreadable(TenantMigrateError):
    """``doctor`` could not read the tenants' catalog: it kept changing
    while it was read (tenants dropped or altered meanwhile)."""


class TenantExists(UsageError):
    """``create_tenant`` was asked for a schema that already exists.

    Provisioning never adopts an existing schema: it may hold another
    tenant's data.
    """

    def __init__(self, schema):
        self.schema = schema
        super().__init__(
            f"schema {schema!r} already exists; nothing was created. Choose "
            "another name, or drop the old schema first (tenant-migrate <ini> "
            f"drop-tenant {schema})")


class TenantNotFound(UsageError):
    """``drop_tenant`` was asked for a schema that does not exist."""

    def __init__(self, schema):
        self.schema = schema
        super().__init__(f"schema {schema!r} does not exist; nothing was "
                         "dropped")


class UnknownTenant(UsageError):
    """A name given as a tenant (``set_tenant``, a request's tenant) is not
    one the tenant source lists: the shared schema, a spare, another
    schema, or nothing at all."""

    def __init__(self, schema):
        self.schema = schema
        super().__init__(f"{schema!r} is not a tenant: the tenant source "
                         "does not list it")


class ProvisioningFailed(TenantMigrateError):
    """Bringing a new tenant schema to the tenant head failed.

    ``schema``, ``revision`` (the revision that failed, when known) and the
    original exception as ``__cause__``. The transaction it ran in must be
    rolled back; nothing of the tenant remains then.
    """

    def __init__(self, schema, revision, error):
        self.schema = schema
        self.revision = revision
        where = f" at revision {revision}" if revision else ""
        super().__init__(
            f"creating tenant {schema!r} failed{where}: {error}; nothing of "
            "it was committed. Fix the revision, then create the tenant again")


class MoveFailed(TenantMigrateError):
    """Moving a tenant to another database of its fleet did not finish.

    The message says where the tenant is now, and what is left to do
    (``tenant-migrate <ini> placements --repair`` when anything is).
    """


class LintRefused(TenantMigrateError):
    """``upgrade`` with ``tenantmigrate.lint_before_upgrade``: lint found
    an error-level finding in what it would run, so nothing was run
    (``force=True``, ``--force``, runs it all the same). ``report`` is
    the :class:`~pyramid_tenantmigrate.lint.LintReport`."""

    def __init__(self, report):
        self.report = report
        first = report.errors[0]
        super().__init__(
            f"refusing to upgrade: revision {first.revision} has "
            f"{len(report.errors)} lint error(s) ({first.rule}; "
            "tenantmigrate.lint_before_upgrade is on); nothing was run, "
            "pass --force (force=True from Python) to upgrade anyway")


class StartupRefused(TenantMigrateError):
    """The app refused to start: ``tenantmigrate.startup`` found the
    database behind its migrations, or could not bring it to the heads."""


def sqlstate(exc):
    """The SQLSTATE of a database error (psycopg2, psycopg 3, or either
    wrapped by SQLAlchemy), or ``None``."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = (getattr(exc, "pgcode", None)
                or getattr(exc, "sqlstate", None))
        if code:
            return code
        exc = getattr(exc, "orig", None)
    return None


def describe_error(exc):
    """``Type: message`` on one line, the driver's own message for
    database errors."""
    orig = getattr(exc, "orig", None)
    if orig is not None:
        exc = orig
    message = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {message}" if message else name
