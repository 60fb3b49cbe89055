"""Reading the revision of many schemas in few round trips.

Asking Alembic for each tenant's version costs a table lookup and a query
per tenant. :func:`read_schema_versions` asks the catalog once which of the
schemas exist and have a version table, then reads those tables with one
``UNION ALL`` statement per batch of schemas, the batches spread over a
few connections.

Why it is shaped like this (measured at 10,000 tenants, see ``bench/``):

- Most of the cost is on the server, the first time a backend opens each
  version table (relation cache, file open, lock); a backend opening
  10,000 tables is slower per table than one opening 2,500, so a few
  connections sharing the batches read in well under half the time of one.
- One statement per batch is planned and run once, instead of one dynamic
  query per schema; identifiers are quoted by :func:`~.names.quote_schema`
  and the only other things in the statement are integers we generate.
- Reading a table takes a lock until the transaction ends, and 10,000
  locks in one transaction exhaust the lock table
  (``max_locks_per_transaction``, 64 per connection by default): each batch
  is its own short transaction.
- Each version table is one page. A sequential scan asks for it through
  the read-ahead machinery, which on PostgreSQL 18 (``io_method=worker``)
  hands every read to an I/O worker process and waits for it: 40-70 us a
  table when the page is not in shared buffers, and 10,000 version pages
  plus their indexes' pages do not fit the default 128 MB. With
  ``effective_io_concurrency = 0`` for the batch's transaction the backend
  reads the page itself (5-15 us). Elsewhere the setting only turns off
  prefetch advice, which a one-page scan has no use for. (A tablespace's
  own ``effective_io_concurrency`` option takes precedence over it.)
"""
import threading
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from .names import quote_schema

#: Version tables read per statement (and per transaction; see above).
BATCH_SIZE = 250

#: A version table can vanish between the catalog check and the read (a
#: tenant dropped meanwhile): the batch is checked again and re-read.
_RETRIES = 3

_UNDEFINED_TABLE = "42P01"

_CATALOG = text("""
SELECT s.name, n.oid IS NOT NULL, c.oid IS NOT NULL
FROM unnest(CAST(:schemas AS text[])) AS s(name)
LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = s.name
LEFT JOIN pg_catalog.pg_class c
       ON c.relnamespace = n.oid AND c.relname = :version_table
      AND c.relkind IN ('r', 'p')
""")


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
                         batch_size=BATCH_SIZE, commit=True, connect=None,
                         workers=1):
    """Return ``{schema: SchemaVersion}`` for ``schemas``.

    Commits ``connection`` after each batch (to release the table locks
    reading takes), unless ``commit`` is false: then call it for a few
    schemas only, inside the caller's transaction. With ``connect`` (a
    callable opening a connection) and ``workers`` > 1, the batches are
    read over up to ``workers`` connections of their own.
    """
    schemas = list(dict.fromkeys(schemas))
    if not schemas:
        return {}
    catalog = _read_catalog(connection, schemas, version_table)
    if commit:
        connection.commit()
    with_table = [name for name in schemas if catalog[name][1]]
    batches = [with_table[start:start + batch_size]
               for start in range(0, len(with_table), batch_size)]
    heads = {}
    if commit and connect is not None and workers > 1 and len(batches) > 1:
        _read_in_parallel(connect, batches, version_table,
                          min(workers, len(batches)), heads)
    else:
        for batch in batches:
            heads.update(_read_batch(connection, batch, version_table,
                                     commit))
    versions = {}
    for name in schemas:
        exists, has_table = catalog[name]
        # A table that vanished after the catalog check reads as base.
        has_table = has_table and name in heads
        versions[name] = SchemaVersion(
            schema=name,
            exists=exists,
            heads=tuple(sorted(heads.get(name, ()))),
            has_version_table=has_table,
        )
    return versions


def _read_catalog(connection, schemas, version_table):
    """``{schema: (schema exists, has the version table)}``."""
    rows = connection.execute(_CATALOG, {"schemas": schemas,
                                         "version_table": version_table})
    return {name: (bool(exists), bool(has_table))
            for name, exists, has_table in rows}


#: Prefix of a batch read in a transaction of our own (see above).
_NO_READ_AHEAD = "SET LOCAL effective_io_concurrency = 0; "


def _union_sql(batch, version_table):
    table = quote_schema(version_table)
    return " UNION ALL ".join(
        f"SELECT {index}, version_num::text "
        f"FROM {quote_schema(schema)}.{table}"
        for index, schema in enumerate(batch))


def _read_batch(connection, batch, version_table, commit):
    """``{schema: [revision, ...]}`` for the schemas of ``batch`` whose
    version table is there when read."""
    for attempt in range(_RETRIES + 1):
        heads = {schema: [] for schema in batch}
        if not batch:
            # Every table of the batch vanished: nothing left to read.
            return heads
        try:
            # Not in a caller's transaction: SET LOCAL would outlive us.
            prefix = _NO_READ_AHEAD if commit else ""
            rows = connection.exec_driver_sql(
                prefix + _union_sql(batch, version_table)).fetchall()
        except DBAPIError as exc:
            if (getattr(exc.orig, "pgcode", None) != _UNDEFINED_TABLE
                    or not commit or attempt == _RETRIES):
                raise
            connection.rollback()
            catalog = _read_catalog(connection, batch, version_table)
            connection.commit()
            batch = [name for name in batch if catalog[name][1]]
            continue
        if commit:
            connection.commit()
        for index, revision in rows:
            heads[batch[index]].append(revision)
        return heads


def _read_in_parallel(connect, batches, version_table, workers, heads):
    """Read ``batches`` over ``workers`` connections, each taking the next
    batch when it is done with one (no static split: no stragglers)."""
    pending = list(reversed(batches))
    guard = threading.Lock()
    errors = []

    def work():
        try:
            with connect() as connection:
                while not errors:
                    with guard:
                        if not pending:
                            return
                        batch = pending.pop()
                    found = _read_batch(connection, batch, version_table,
                                        commit=True)
                    with guard:
                        heads.update(found)
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    threads = [threading.Thread(target=work, name=f"tenantmigrate-read-{i}",
                                daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
