"""Where tenants come from, and which of them a run is for.

A tenant is a schema. The list comes from exactly one source, chosen in the
settings: an SQL query, a name prefix or a regular expression matched
against the catalog, or a Python callable. :func:`select_tenants` then
narrows it to what the command asked for (``--tenant``,
``--exclude-tenant``) and sets aside names that are not safe to run SQL for.
"""
import zlib
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from .errors import (
    ConfigurationError,
    TenantSourceUnavailable,
    UsageError,
    sqlstate,
)
from .names import schema_name_problem
from .reserved import MOVED_PREFIX, SPARE_PREFIX
from .settings import PREFIX

#: SQLSTATEs of a source that queries what does not exist yet (a tenants
#: table the shared branch has not created): not the setting's fault.
_NOT_THERE_YET = frozenset({"42P01", "3F000", "42703"})

# Catalog sources never list PostgreSQL's own schemas, nor spares, nor
# what a move leaves behind (moving.py).
_CATALOG_QUERY = """
SELECT nspname FROM pg_catalog.pg_namespace
WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
  AND left(nspname, length(:spare_prefix)) <> :spare_prefix
  AND left(nspname, length(:moved_prefix)) <> :moved_prefix
  AND nspname <> :shared_schema AND {condition}
ORDER BY nspname
"""


def _catalog_names(connection, settings, condition, **params):
    rows = connection.execute(
        text(_CATALOG_QUERY.format(condition=condition)),
        dict(params, shared_schema=settings.shared_schema,
             spare_prefix=SPARE_PREFIX, moved_prefix=MOVED_PREFIX))
    return [row[0] for row in rows]


def discover_tenant_schemas(connection, settings):
    """Return the tenant schema names the configured source lists.

    Names are returned as the source gave them, duplicates removed, in a
    stable order; validation is :func:`select_tenants`' job so that a bad
    name can be reported rather than silently dropped. A source that
    cannot work is a :class:`~.errors.ConfigurationError` naming its
    setting; one that queries a table not created yet is
    :class:`~.errors.TenantSourceUnavailable`.
    """
    which = settings.tenant_source_setting
    if which is None:
        raise ConfigurationError(
            "no tenant source: set one of "
            f"{PREFIX}tenant_schemas_query, {PREFIX}tenant_schema_prefix, "
            f"{PREFIX}tenant_schema_pattern or {PREFIX}tenant_source"
        )
    try:
        if which == "tenant_schemas_query":
            # A subquery: one SELECT, never a second statement or DML.
            query = settings.tenant_schemas_query.strip().rstrip(";")
            # no_parameters: a '%' in the query is not a placeholder.
            rows = connection.execution_options(
                no_parameters=True).exec_driver_sql(
                f"SELECT * FROM (\n{query}\n) AS tenantmigrate_tenants")
            names = [row[0] for row in rows]
        elif which == "tenant_schema_prefix":
            names = _catalog_names(
                connection, settings,
                "left(nspname, length(:prefix)) = :prefix",
                prefix=settings.tenant_schema_prefix)
        elif which == "tenant_schema_pattern":
            names = _catalog_names(connection, settings, "nspname ~ :pattern",
                                   pattern=settings.tenant_schema_pattern)
        else:
            names = _from_callable(settings.tenant_source, connection)
    except DBAPIError as exc:
        _rollback(connection)
        message = " ".join(str(exc.orig or exc).split())
        if sqlstate(exc) in _NOT_THERE_YET:
            raise TenantSourceUnavailable(
                f"the tenant source ({PREFIX}{which}) failed: {message}; if "
                "it reads a table of the shared branch, run 'tenant-migrate "
                "<ini> upgrade shared' first") from None
        raise ConfigurationError(
            f"setting {PREFIX}{which} does not work: {message}") from None
    if not all(isinstance(name, str) for name in names):
        bad = next(name for name in names if not isinstance(name, str))
        raise ConfigurationError(
            f"setting {PREFIX}{which} gave {bad!r} ({type(bad).__name__}); "
            "tenant schema names are strings")
    return list(dict.fromkeys(names))


def _from_callable(source, connection):
    """What a tenant source callable returns, checked: an iterable of
    strings (not a string itself, whose letters would be taken for
    schemas)."""
    name = f"{PREFIX}tenant_source"
    try:
        result = source(connection)
        if isinstance(result, (str, bytes)) or result is None or not hasattr(
                result, "__iter__"):
            raise ConfigurationError(
                f"setting {name} returned {type(result).__name__} "
                f"{result!r:.60}; it must return a list of schema names")
        return list(result)
    except (ConfigurationError, DBAPIError):
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"setting {name} raised {type(exc).__name__}: {exc}; nothing "
            "was run") from None


def _rollback(connection):
    try:
        if connection.in_transaction():
            connection.rollback()
    except Exception:
        pass


@dataclass
class TenantSelection:
    """The outcome of choosing tenants for a run.

    ``schemas`` are valid names to run for, in order; ``rejected`` maps each
    name that was set aside to the reason.
    """

    schemas: list
    rejected: dict = field(default_factory=dict)


def parse_shard(text):
    """``"2/4"`` -> ``(2, 4)``; raise UsageError for anything else."""
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        index = count = 0
    if not 1 <= index <= count:
        raise UsageError(f"invalid shard {text!r}: write I/N with "
                         "1 <= I <= N, e.g. --shard 2/4")
    return index, count


def in_shard(schema, shard):
    """Tell whether ``schema`` belongs to ``shard`` (``(index, count)``).

    The split depends on the name only, not on the tenant list, so every
    machine of a deploy agrees on it without talking to the others.
    """
    index, count = shard
    return zlib.crc32(schema.encode("utf-8")) % count == index - 1


def select_tenants(discovered, shared_schema, only=(), exclude=(),
                   shard=None):
    """Narrow ``discovered`` to the tenants a command asked for.

    ``only`` (``--tenant``) must name tenants the source lists: asking for
    one it does not know is a usage error, raised before anything runs.
    ``exclude`` (``--exclude-tenant``) drops names; ``shard`` keeps only
    one shard's share (:func:`in_shard`). Invalid names from the
    source are returned in ``rejected``; invalid names on the command line
    are a usage error.
    """
    for name in list(only) + list(exclude):
        problem = schema_name_problem(name, shared_schema)
        if problem is not None:
            raise UsageError(f"invalid tenant name {name!r}: {problem}")
    known = set(discovered)
    unknown = [name for name in only if name not in known]
    if unknown:
        raise UsageError(
            "unknown tenant(s): " + ", ".join(unknown)
            + "; the tenant source does not list them (see "
            "'tenant-migrate <ini> current --verbose' for the known tenants)"
        )
    wanted = list(dict.fromkeys(only)) if only else discovered
    excluded = set(exclude)
    selection = TenantSelection(schemas=[])
    for name in wanted:
        if name in excluded or (shard and not in_shard(name, shard)):
            continue
        problem = schema_name_problem(name, shared_schema)
        if problem is not None:
            selection.rejected[name] = problem
        else:
            selection.schemas.append(name)
    return selection
