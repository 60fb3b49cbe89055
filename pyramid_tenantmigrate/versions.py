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
from .workers import WorkerPool

#: Version tables read per statement (and per transaction; see above).
BATCH_SIZE = 250

#: A version table can vanish between the catalog check and the read (a
#: tenant dropped meanwhile): the batch is checked again and re-read.
_RETRIES = 3

_UNDEFINED_TABLE = "42P01"
_INSUFFICIENT_PRIVILEGE = "42501"

# The privileges come with the catalog answer, so that a schema this role
# cannot read is reported by name instead of failing its whole batch. A
# superuser, or the owner of an object whose privileges were never
# changed (a NULL ACL), may: the privilege functions are asked only
# otherwise (each looks its object up again; for 10,000 tenants owned by
# the role they were half of this statement's time).
_CATALOG = text("""
SELECT s.name, n.oid IS NOT NULL, c.oid IS NOT NULL,
       n.oid IS NULL OR me.rolsuper
           OR (n.nspowner = me.oid AND n.nspacl IS NULL)
           OR pg_catalog.has_schema_privilege(n.oid, 'USAGE'),
       c.oid IS NULL OR me.rolsuper
           OR (c.relowner = me.oid AND c.relacl IS NULL)
           OR pg_catalog.has_table_privilege(c.oid, 'SELECT'),
       pg_catalog.pg_get_userbyid(n.nspowner), current_user
FROM (SELECT oid, rolsuper FROM pg_catalog.pg_roles
      WHERE rolname = current_user) me
CROSS JOIN unnest(CAST(:schemas AS text[])) AS s(name)
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
    missing. ``problem`` says why the version could not be read (the role
    may not read the schema), with the fix; ``heads`` is then empty.
    """

    schema: str
    exists: bool
    heads: tuple
    has_version_table: bool
    problem: str = None


def unreadable_problem(schema, owner, role, what, grant=None):
    """Why ``role`` cannot read ``schema``, and the GRANT that fixes it
    (``grant``: the privilege, when ``role`` owns the schema and revoked
    it from itself)."""
    if owner == role and grant is not None:
        return (f"permission denied: the role {role} may not read {what}, "
                f"though it owns it (its own privilege was revoked): "
                f"GRANT {grant} TO {quote_schema(role)}")
    return (f"permission denied: the role {role} may not read {what} "
            f"(owned by {owner}); to migrate a schema a role must own its "
            f"tables or be a member of their owner: GRANT {owner} TO {role}")


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
    problems = {name: entry[2] for name, entry in catalog.items()
                if entry[2] is not None}
    with_table = [name for name in schemas
                  if catalog[name][1] and name not in problems]
    batches = [with_table[start:start + batch_size]
               for start in range(0, len(with_table), batch_size)]
    heads = {}
    if commit and connect is not None and workers > 1 and len(batches) > 1:
        _read_in_parallel(connect, batches, version_table,
                          min(workers, len(batches)), heads, problems)
    else:
        for batch in batches:
            heads.update(_read_batch(connection, batch, version_table,
                                     commit, problems))
    versions = {}
    for name in schemas:
        exists, has_table, _ = catalog[name]
        problem = problems.get(name)
        # A table that vanished after the catalog check reads as base.
        has_table = has_table and name in heads and problem is None
        versions[name] = SchemaVersion(
            schema=name,
            exists=exists,
            heads=tuple(sorted(heads.get(name, ()))),
            has_version_table=has_table,
            problem=problem,
        )
    return versions


def _read_catalog(connection, schemas, version_table):
    """``{schema: (schema exists, has the version table, problem)}``."""
    rows = connection.execute(_CATALOG, {"schemas": schemas,
                                         "version_table": version_table})
    catalog = {}
    for name, exists, has_table, usage, select, owner, role in rows:
        problem = None
        if not usage:
            problem = unreadable_problem(
                name, owner, role, f"schema {name}",
                f"USAGE ON SCHEMA {quote_schema(name)}")
        elif not select:
            problem = unreadable_problem(
                name, owner, role, f"the version table {name}."
                f"{version_table}", f"SELECT ON {quote_schema(name)}."
                f"{quote_schema(version_table)}")
        catalog[name] = (bool(exists), bool(has_table), problem)
    return catalog


#: Prefix of a batch read in a transaction of our own (see above). Row
#: security off: a version table whose policies hide its rows from this
#: role (``FORCE ROW LEVEL SECURITY``) is refused, and reported, instead
#: of read as a schema at base.
_BATCH_SETTINGS = ("SET LOCAL effective_io_concurrency = 0; "
                  "SET LOCAL row_security = off; ")


def _union_sql(batch, version_table):
    table = quote_schema(version_table)
    return " UNION ALL ".join(
        f"SELECT {index}, version_num::text "
        f"FROM {quote_schema(schema)}.{table}"
        for index, schema in enumerate(batch))


def _read_batch(connection, batch, version_table, commit, problems=None):
    """``{schema: [revision, ...]}`` for the schemas of ``batch`` whose
    version table is there when read; schemas that turn out unreadable
    go to ``problems``."""
    problems = {} if problems is None else problems
    for attempt in range(_RETRIES + 1):
        heads = {schema: [] for schema in batch}
        if not batch:
            # Every table of the batch vanished: nothing left to read.
            return heads
        try:
            # Not in a caller's transaction: SET LOCAL would outlive us.
            prefix = _BATCH_SETTINGS if commit else ""
            rows = connection.exec_driver_sql(
                prefix + _union_sql(batch, version_table)).fetchall()
        except DBAPIError as exc:
            code = getattr(exc.orig, "pgcode", None)
            if (code not in (_UNDEFINED_TABLE, _INSUFFICIENT_PRIVILEGE)
                    or not commit or attempt == _RETRIES):
                raise
            connection.rollback()
            catalog = _read_catalog(connection, batch, version_table)
            connection.commit()
            for name in batch:
                if catalog[name][2] is not None:
                    problems[name] = catalog[name][2]
            if code == _INSUFFICIENT_PRIVILEGE and not any(
                    catalog[name][2] for name in batch):
                # Privileges the catalog does not show (row security, a
                # revoked grant in flight): read one by one to tell.
                return _read_one_by_one(connection, batch, version_table,
                                        problems, exc)
            batch = [name for name in batch
                     if catalog[name][1] and name not in problems]
            continue
        if commit:
            connection.commit()
        for index, revision in rows:
            heads[batch[index]].append(revision)
        return heads


def _read_one_by_one(connection, batch, version_table, problems, error):
    """Read the schemas of ``batch`` one at a time, after ``error``; a
    schema whose own read fails has that failure as its problem."""
    if len(batch) == 1:
        problems[batch[0]] = _error_text(error)
        return {}
    heads = {}
    for name in batch:
        try:
            heads.update(_read_batch(connection, [name], version_table,
                                     True, problems))
        except DBAPIError as exc:
            connection.rollback()
            problems[name] = _error_text(exc)
    return heads


def _error_text(exc):
    return " ".join(str(exc.orig or exc).split())


def _read_in_parallel(connect, batches, version_table, workers, heads,
                      problems):
    """Read ``batches`` over ``workers`` connections of the one job
    runner, each taking the next batch when it is done with one."""
    guard = threading.Lock()

    def work(worker, batch):
        found = _read_batch(worker.connection, batch, version_table, True,
                            problems)
        with guard:
            heads.update(found)

    pool = WorkerPool(connect, workers, name="tenantmigrate-read")
    pool.run(batches, work)
    if pool.aborted:
        raise pool.connect_error or RuntimeError(pool.aborted)
