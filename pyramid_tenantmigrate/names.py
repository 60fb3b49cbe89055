"""Validation and quoting of schema names.

Tenant schema names come from settings, the catalog, a user's callable or
the command line, so they are treated as hostile: a name is accepted only in
the plain form PostgreSQL would fold to itself (lower-case ASCII letters,
digits and underscores, at most 63 bytes), and it is still always quoted
when it reaches SQL. Names are never formatted into SQL by hand elsewhere:
use :func:`quote_schema`.
"""
import re

from .errors import InvalidSchemaName
from .reserved import SPARE_PREFIX

#: PostgreSQL's NAMEDATALEN - 1: longer names are silently truncated by the
#: server, which would make two tenants share a schema.
MAX_IDENTIFIER_BYTES = 63

_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*\Z")

_RESERVED_SCHEMAS = frozenset({"information_schema", "public"})


def schema_name_problem(name, shared_schema="public"):
    """Return why ``name`` cannot be a tenant schema, or ``None`` if it can."""
    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    if not name:
        return "the name is empty"
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        return (
            f"longer than {MAX_IDENTIFIER_BYTES} bytes, PostgreSQL would "
            "truncate it"
        )
    if not _PLAIN_IDENTIFIER.match(name):
        return (
            "use lower-case ASCII letters, digits and underscores only, "
            "starting with a letter or underscore"
        )
    if name.startswith("pg_"):
        return "names starting with 'pg_' are reserved for PostgreSQL"
    if name.startswith(SPARE_PREFIX):
        return (f"names starting with {SPARE_PREFIX!r} are reserved for "
                "spare schemas")
    if name in _RESERVED_SCHEMAS or name == shared_schema:
        return "that schema is not a tenant schema"
    return None


def validate_schema_name(name, shared_schema="public"):
    """Return ``name`` if it is a valid tenant schema name.

    Raise :class:`~pyramid_tenantmigrate.errors.InvalidSchemaName` saying
    why otherwise.
    """
    problem = schema_name_problem(name, shared_schema)
    if problem is not None:
        raise InvalidSchemaName(name, problem)
    return name


def quote_schema(name):
    """Quote ``name`` as a PostgreSQL identifier, always.

    Quoting a validated plain name changes nothing about which schema it
    means; it makes sure a name that slipped past validation can never end
    the identifier.
    """
    if "\x00" in name:
        raise InvalidSchemaName(name, "contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'
