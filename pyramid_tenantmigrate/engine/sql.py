"""SQL text this package writes itself, in one place.

Identifiers go through :func:`~.names.quote_schema`, literals through
:func:`quote_literal`; the only other things formatted into these strings
are integers this package computes.
"""
import secrets

from ..names import quote_schema
from ..reserved import TENANT_LOCK, lock_key

#: SQLSTATE the guard raises when a schema's version is not what the
#: plan read (another run or a sign-up moved it meanwhile).
VERSION_MOVED = "TMV01"
#: SQLSTATE a checked statement raises when what it answers in a tenant is
#: not what it answered in capture: the revision then runs through Alembic.
READ_DIFFERS = "TMR01"
#: PostgreSQL's "unsafe use of new value of enum type": an enum value added
#: in a transaction (before 17), or in a subtransaction, used in it.
UNSAFE_NEW_ENUM = "55P04"
_STEP_NOTICE = "tenantmigrate step "


def quote_literal(value):
    """Quote a string as an SQL literal (standard_conforming_strings)."""
    if "\x00" in value:
        raise ValueError("a NUL byte cannot be sent to PostgreSQL")
    return "'" + value.replace("'", "''") + "'"


def _dollar_quote(body):
    """``body`` dollar-quoted with a tag that does not occur in it."""
    tag = "$tm$"
    # Not in the body, nor made by the body's end and the tag's start.
    while tag in body + tag[:-1]:
        tag = f"$tm{secrets.token_hex(4)}$"
    return f"{tag}{body}{tag}"


def search_path_sql(schema, extra_schemas=(), local=True):
    """``SET [LOCAL] search_path`` to a schema (then ``extra_schemas``),
    every name quoted."""
    path = ", ".join(quote_schema(s) for s in (schema, *extra_schemas))
    return f"SET {'LOCAL ' if local else ''}search_path TO {path}"


def timeouts_sql(lock_timeout_ms, statement_timeout_ms, local=True):
    """``SET [LOCAL]`` for the per-tenant lock and statement timeouts."""
    scope = "LOCAL " if local else ""
    return (f"SET {scope}lock_timeout = {int(lock_timeout_ms)}; "
            f"SET {scope}statement_timeout = {int(statement_timeout_ms)}")


def tenant_lock_sql(schema, session=False):
    """Wait for ``schema``'s advisory lock: for the transaction (default)
    or for the session (kept across the commits of an autocommit block)."""
    function = "pg_advisory_lock" if session else "pg_advisory_xact_lock"
    return f"SELECT {function}({TENANT_LOCK}, {lock_key(schema)})"


def tenant_unlock_sql(schema):
    return f"SELECT pg_advisory_unlock({TENANT_LOCK}, {lock_key(schema)})"


def version_table_name(schema, version_table):
    return f"{quote_schema(schema)}.{quote_schema(version_table)}"


def _heads_array(heads):
    if not heads:
        return "ARRAY[]::text[]"
    return ("ARRAY[" + ", ".join(quote_literal(h) for h in heads)
            + "]::text[]")


def guard_sql(schema, version_table, heads):
    """Fail with :data:`VERSION_MOVED` unless ``schema``'s version table
    holds exactly ``heads`` (empty: no table, or no row)."""
    table = version_table_name(schema, version_table)
    message = quote_literal(
        f"version of {schema} changed since the run was planned")
    raise_moved = (f"RAISE EXCEPTION {message} "
                   f"USING ERRCODE = '{VERSION_MOVED}';")
    if heads:
        check = (f"IF (SELECT coalesce(array_agg(version_num::text ORDER BY "
                 f"version_num::text), ARRAY[]::text[]) FROM {table}) IS "
                 f"DISTINCT FROM {_heads_array(sorted(heads))} THEN "
                 f"{raise_moved} END IF;")
    else:
        check = (f"IF to_regclass({quote_literal(table)}) IS NOT NULL THEN "
                 f"IF EXISTS (SELECT 1 FROM {table}) THEN {raise_moved} "
                 f"END IF; END IF;")
    return f"DO {_dollar_quote(f' BEGIN {check} END ')}"


def version_update_sql(schema, version_table, heads, previous=None):
    """Make ``schema``'s version table hold exactly ``heads``; with
    ``previous``, what it holds now (checked by :func:`guard_sql`): one
    head for another is one ``UPDATE``, a first head one ``INSERT``."""
    table = version_table_name(schema, version_table)
    if previous is not None and len(previous) == 1 and len(heads) == 1:
        return (f"UPDATE {table} SET version_num = "
                f"{quote_literal(heads[0])}")
    parts = [] if previous is not None and not previous else [
        f"DELETE FROM {table}"]
    if heads:
        values = ", ".join(f"({quote_literal(h)})" for h in sorted(heads))
        parts.append(f"INSERT INTO {table} (version_num) VALUES {values}")
    return ";\n".join(parts)


def step_notice_sql(revision):
    """A notice naming the revision whose statements follow, so that a
    failure in a replayed script can be put on its revision."""
    text = quote_literal(_STEP_NOTICE + revision)
    return f"DO {_dollar_quote(f' BEGIN RAISE NOTICE {text}; END ')}"


def last_step(notices):
    """The revision named by the last step notice, or ``None``."""
    for notice in reversed(notices):
        if _STEP_NOTICE in notice:
            return notice.split(_STEP_NOTICE, 1)[1].strip()
    return None


#: Indexes left INVALID in a schema (a failed CREATE INDEX CONCURRENTLY).
INVALID_INDEXES = (
    "SELECT c.relname FROM pg_catalog.pg_index i "
    "JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %(schema)s AND NOT i.indisvalid")


_READ_NOTICE = "tenantmigrate read "


def _fingerprint_block(statement, then, ignored=(), unordered=False):
    """A DO block running ``statement`` and hashing the rows it returns,
    one at a time as they come (a read of millions of rows takes no more
    memory than one), then running ``then`` with ``answer``: the hash and
    the number of rows.

    Columns named in ``ignored`` (of type ``oid``: the same table has
    another OID in each schema) are left out of each row. ``unordered``
    hashes the rows as a multiset (two sums of each row's md5), for reads
    of the system catalogs, whose rows lie in another order in each
    schema; otherwise the hash is chained, row after row, and a read
    answering the same rows in another order answers differently (a
    revision may use the first row of a read without ``ORDER BY``)."""
    row = "r::text"
    if ignored:
        # Only the OIDs of objects made in the database (16384 and up):
        # a system OID (a built-in type's, say) means the same everywhere.
        names = ", ".join(quote_literal(name) for name in ignored)
        row = (f"(SELECT jsonb_object_agg(e.key, CASE WHEN e.key = ANY("
               f"ARRAY[{names}]::text[]) AND (e.value #>> '{{}}')::bigint "
               f">= 16384 THEN 'null'::jsonb ELSE e.value END) FROM "
               f"jsonb_each(to_jsonb(r)) AS e)::text")
    if unordered:
        # A catalog row naming the schema the read runs in (an inspector's
        # foreign key to a table of the same schema) names the scratch
        # schema in capture and the tenant in the tenant: the name, as a
        # whole word, is hashed as the empty string.
        row = (f"regexp_replace({row}, '\\m' || regexp_replace("
               f"current_schema(), '([^a-z0-9_])', '\\\\\\1', 'g') || "
               f"'\\M', '', 'g')")
        declare = "d text; a numeric := 0; b numeric := 0;"
        add = (f"d := md5({row}); "
               f"a := a + ('x' || substr(d, 1, 16))::bit(64)::bigint; "
               f"b := b + ('x' || substr(d, 17, 16))::bit(64)::bigint;")
        hashed = "a || ':' || b"
    else:
        declare, add, hashed = "h text := '';", f"h := md5(h || {row});", "h"
    body = (f" DECLARE r record; {declare} n bigint := 0; answer text; "
            f"BEGIN FOR r IN EXECUTE {_dollar_quote(statement)} LOOP "
            f"{add} n := n + 1; END LOOP; "
            f"answer := {hashed} || ':' || n; {then} END ")
    return f"DO {_dollar_quote(body)}"


def fingerprint_sql(statement, ignored=(), unordered=False):
    """Fingerprint what ``statement`` reads (see
    :func:`_fingerprint_block`): the answer comes as a notice (see
    :func:`read_fingerprint`)."""
    notice = quote_literal(_READ_NOTICE + "%")
    return _fingerprint_block(statement, f"RAISE NOTICE {notice}, answer;",
                              ignored, unordered)


def read_fingerprint(notices):
    """The fingerprint :func:`fingerprint_sql` sent, or ``None``."""
    for notice in reversed(notices):
        if _READ_NOTICE in notice:
            return notice.split(_READ_NOTICE, 1)[1].strip()
    return None


def checked_sql(statement, check):
    """``statement`` as replayed: as it is, or checking in the tenant that
    it answers what it answered in capture (``check``, see
    :class:`.capture.Statement`)."""
    if check is None:
        return statement
    kind, expected, *options = check
    raise_differs = (
        "RAISE EXCEPTION 'a read of this revision answers differently in "
        f"this schema' USING ERRCODE = '{READ_DIFFERS}';")
    if kind == "rows":
        return _fingerprint_block(
            statement, f"IF answer IS DISTINCT FROM {quote_literal(expected)}"
                       f" THEN {raise_differs} END IF;", *options)
    body = (f" DECLARE answer bigint; BEGIN EXECUTE "
            f"{_dollar_quote(statement)}; GET DIAGNOSTICS answer = "
            f"ROW_COUNT; IF answer IS DISTINCT FROM {int(expected)} THEN "
            f"{raise_differs} END IF; END ")
    return f"DO {_dollar_quote(body)}"
