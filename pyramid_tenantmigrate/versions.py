"""Reading the revision of many schemas in few round trips.

Asking Alembic for each tenant's version costs a table lookup and a query
per tenant. :func:`read_schema_versions` asks the server once per batch of
schemas: for each it reports whether the schema exists, whether it has a
version table, and the revisions in it.

The work is done by a PL/pgSQL function created in ``pg_temp`` (private to
the session, gone with it), whose per-schema query is built on the server
with ``format('%I')``, so names are quoted by PostgreSQL itself. (The
one-statement alternative, ``query_to_xml``, needs a server built with
libxml, which the embedded wheel is not.)

Batches exist because reading a table takes a lock until the transaction
ends: reading 10,000 version tables in one transaction exhausts the lock
table (``max_locks_per_transaction``, 64 per connection by default). Each
batch is its own short transaction.
"""
from dataclasses import dataclass

from sqlalchemy import text

#: Schemas read per statement (and per transaction; see above).
BATCH_SIZE = 1000

_CREATE_FUNCTION = text("""
CREATE OR REPLACE FUNCTION pg_temp.tenantmigrate_versions(
    schemas text[], version_table text)
RETURNS TABLE(schema_name text, schema_exists boolean, heads text[])
LANGUAGE plpgsql AS $body$
DECLARE
    namespace oid;
BEGIN
    FOREACH schema_name IN ARRAY schemas LOOP
        SELECT n.oid INTO namespace FROM pg_catalog.pg_namespace n
         WHERE n.nspname = schema_name;
        schema_exists := namespace IS NOT NULL;
        heads := NULL;
        IF schema_exists AND EXISTS (
            SELECT 1 FROM pg_catalog.pg_class c
             WHERE c.relnamespace = namespace AND c.relname = version_table
               AND c.relkind IN ('r', 'p'))
        THEN
            EXECUTE format(
                'SELECT coalesce(array_agg(version_num::text), '
                '''{}''::text[]) FROM %I.%I', schema_name, version_table)
               INTO heads;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$body$
""")

_READ_VERSIONS = text(
    "SELECT schema_name, schema_exists, heads "
    "FROM pg_temp.tenantmigrate_versions(CAST(:schemas AS text[]), "
    ":version_table)"
)


@dataclass(frozen=True)
class SchemaVersion:
    """What one schema's version table says.

    ``heads`` is a sorted tuple of revision ids, empty at base (no version
    table, or an empty one). ``exists`` is False when the schema itself is
    missing.
    """

    schema: str
    exists: bool
    heads: tuple
    has_version_table: bool


def read_schema_versions(connection, schemas, version_table,
                         batch_size=BATCH_SIZE, commit=True):
    """Return ``{schema: SchemaVersion}`` for ``schemas``.

    Commits ``connection`` after each batch (to release the table locks
    reading takes), unless ``commit`` is false: then call it for a few
    schemas only, inside the caller's transaction.
    """
    schemas = list(schemas)
    if not schemas:
        return {}
    versions = {}
    connection.execute(_CREATE_FUNCTION)
    for start in range(0, len(schemas), batch_size):
        rows = connection.execute(_READ_VERSIONS, {
            "schemas": schemas[start:start + batch_size],
            "version_table": version_table,
        }).fetchall()
        if commit:
            connection.commit()
        for name, exists, heads in rows:
            versions[name] = SchemaVersion(
                schema=name,
                exists=bool(exists),
                heads=tuple(sorted(heads or ())),
                has_version_table=heads is not None,
            )
    return versions
