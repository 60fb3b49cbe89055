"""The raw-SQL floor: the same DDL over plain psycopg2, nothing else.

The SQL is rendered once by the tool itself, offline, for a placeholder
tenant (``tenant-migrate app.ini upgrade START:END --sql --tenant
bench_tpl``), split into statements, and replayed per schema with the
placeholder replaced by the schema's name: one transaction per schema
holding ``SET LOCAL search_path``, the statements (one ``execute`` each, as
any migration tool must send them) and the version-table update, then a
commit. That is the least a per-tenant migration can cost on this server;
every figure of the tool is printed as a ratio to it.

The same replay, with whole scripts per ``execute`` and a commit per batch
of schemas, is how the benchmark sets tenants up quickly (not timed).
"""
import queue
import re
import subprocess
import threading
import time

import psycopg2
from sqlalchemy.engine import make_url

PLACEHOLDER = "bench_tpl"
_SKIP = re.compile(r"^(BEGIN|COMMIT|SET LOCAL search_path\b)", re.I)


def libpq_dsn(url):
    """A libpq URI for psycopg2 from a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(
        hide_password=False)


def connect(url):
    return psycopg2.connect(libpq_dsn(url))


def render(tool, ini, operation, rev_range, env=None):
    """The offline SQL of ``operation rev_range`` for the placeholder tenant,
    rendered by the tool; returns the statements (search_path and
    transaction control removed: the replay adds its own)."""
    result = subprocess.run(
        [*tool, ini, operation, rev_range, "--sql", "--tenant", PLACEHOLDER],
        capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"rendering {operation} {rev_range} failed "
            f"(exit {result.returncode}):\n{result.stderr}")
    return split_statements(result.stdout)


def split_statements(script):
    statements, current = [], []
    for line in script.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("--")):
            continue
        current.append(line)
        if stripped.endswith(";"):
            statement = "\n".join(current).strip()[:-1].strip()
            current = []
            if not _SKIP.match(statement):
                statements.append(statement)
    if current:
        raise ValueError("unterminated statement in rendered SQL: "
                         + "\n".join(current)[:200])
    return statements


def for_schema(statements, schema):
    # The placeholder only ever appears as an identifier (the version
    # table's schema); tenant names are plain identifiers too.
    return [s.replace(PLACEHOLDER, schema) for s in statements]


def search_path(schema):
    return f'SET LOCAL search_path TO "{schema}"'


def _replay_one(connection, statements, schema, create_schema=False):
    with connection.cursor() as cursor:
        if create_schema:
            cursor.execute(f'CREATE SCHEMA "{schema}"')
        cursor.execute(search_path(schema))
        for statement in for_schema(statements, schema):
            cursor.execute(statement)
    connection.commit()


def _in_threads(jobs, connections, handle):
    """Run ``handle(connection, job)`` for every job on one thread per
    connection, each taking the next job from one queue; re-raise the
    first error. The package has a runner like it; the floor stays free of
    the package on purpose."""
    work = queue.Queue()
    for job in jobs:
        work.put(job)
    errors = []

    def worker(connection):
        try:
            while True:
                try:
                    job = work.get_nowait()
                except queue.Empty:
                    return
                handle(connection, job)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(c,))
               for c in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def replay(url, statements, schemas, connections=1):
    """Timed floor: one transaction per schema, one execute per statement,
    over ``connections`` psycopg2 connections working off one queue.
    Returns the wall-clock seconds (connecting excluded)."""
    conns = [connect(url) for _ in range(connections)]
    try:
        started = time.perf_counter()
        if connections == 1:
            for schema in schemas:
                _replay_one(conns[0], statements, schema)
        else:
            _in_threads(schemas, conns, lambda connection, schema:
                        _replay_one(connection, statements, schema))
        return time.perf_counter() - started
    finally:
        for connection in conns:
            connection.close()


def provision_floor(connection, statements, schema):
    """Timed floor of provisioning one tenant: ``CREATE SCHEMA`` and the
    whole history in one transaction. Returns seconds."""
    started = time.perf_counter()
    _replay_one(connection, statements, schema, create_schema=True)
    return time.perf_counter() - started


def bulk_apply(url, statements, schemas, connections=2, per_commit=20,
               create_schema=False, progress=None):
    """Untimed setup/reset: one ``execute`` per schema (the whole script),
    a commit per ``per_commit`` schemas (few enough that the locks of one
    transaction fit in the lock table), over ``connections`` threads."""
    batches = [schemas[i:i + per_commit]
               for i in range(0, len(schemas), per_commit)]
    done = [0]
    lock = threading.Lock()

    def apply(connection, batch):
        with connection.cursor() as cursor:
            for schema in batch:
                head = [f'CREATE SCHEMA "{schema}"'] if create_schema else []
                cursor.execute(";\n".join(
                    head + [search_path(schema)]
                    + for_schema(statements, schema)))
                # SET LOCAL lasts until the commit: reset it for the next
                # schema of the batch.
                cursor.execute("RESET search_path")
        connection.commit()
        with lock:
            done[0] += len(batch)
            if progress:
                progress(done[0], len(schemas))

    conns = [connect(url) for _ in range(connections)]
    try:
        _in_threads(batches, conns, apply)
    finally:
        for connection in conns:
            connection.close()


def read_versions(url, schemas, per_statement=500):
    """``{schema: (versions...)}`` read directly, a transaction per batch
    (reading a table locks it until the transaction ends)."""
    result = {}
    connection = connect(url)
    try:
        for i in range(0, len(schemas), per_statement):
            batch = schemas[i:i + per_statement]
            sql = " UNION ALL ".join(
                f"SELECT '{s}', version_num::text FROM \"{s}\".alembic_version"
                for s in batch)
            with connection.cursor() as cursor:
                cursor.execute(sql)
                for schema, version in cursor.fetchall():
                    result.setdefault(schema, []).append(version)
            connection.commit()
    finally:
        connection.close()
    return {s: tuple(sorted(v)) for s, v in result.items()}
