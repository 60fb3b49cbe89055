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

from .errors import ConfigurationError, UsageError
from .names import SPARE_PREFIX, schema_name_problem
from .settings import PREFIX

# Catalog sources never list PostgreSQL's own schemas, nor spares.
_CATALOG_QUERY = """
SELECT nspname FROM pg_catalog.pg_namespace
WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
  AND left(nspname, length(:spare_prefix)) <> :spare_prefix
  AND nspname <> :shared_schema AND {condition}
ORDER BY nspname
"""


def _catalog_names(connection, settings, condition, **params):
    rows = connection.execute(
        text(_CATALOG_QUERY.format(condition=condition)),
        dict(params, shared_schema=settings.shared_schema,
             spare_prefix=SPARE_PREFIX))
    return [row[0] for row in rows]


def discover_tenant_schemas(connection, settings):
    """Return the tenant schema names the configured source lists.

    Names are returned as the source gave them, duplicates removed, in a
    stable order; validation is :func:`select_tenants`' job so that a bad
    name can be reported rather than silently dropped.
    """
    which = settings.tenant_source_setting
    if which is None:
        raise ConfigurationError(
            "no tenant source: set one of "
            f"{PREFIX}tenant_schemas_query, {PREFIX}tenant_schema_prefix, "
            f"{PREFIX}tenant_schema_pattern or {PREFIX}tenant_source"
        )
    if which == "tenant_schemas_query":
        rows = connection.execute(text(settings.tenant_schemas_query))
        names = [row[0] for row in rows]
    elif which == "tenant_schema_prefix":
        names = _catalog_names(
            connection, settings, "left(nspname, length(:prefix)) = :prefix",
            prefix=settings.tenant_schema_prefix)
    elif which == "tenant_schema_pattern":
        names = _catalog_names(connection, settings, "nspname ~ :pattern",
                               pattern=settings.tenant_schema_pattern)
    else:
        names = list(settings.tenant_source(connection))
    return list(dict.fromkeys(names))


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
