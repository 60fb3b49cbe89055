"""Drift: tenants whose tables are not what their version table says.

A version table says which revisions ran in a schema; it does not say that
nothing else happened there since: a hotfix made by hand, a clone of a
schema that had one, a non-transactional revision cut short (an index left
INVALID by ``CREATE INDEX CONCURRENTLY``). ``doctor`` checks, for the
tenants :func:`.commands.doctor` selected and whose versions it read:

1. **references** (:func:`build_references`): one scratch schema per
   distinct revision the tenants are at, brought there by the tenant
   branch (:mod:`.scratch`), all in one transaction that is rolled back.
   A tenant is compared with the schema *its own* revision builds, not
   the head's: a tenant behind the head is not drifting, ``current`` and
   ``upgrade`` deal with that; one behind *and* changed by hand is;
2. **one statement per worker** for all the tenants
   (:func:`.catalog.read_digests`): the server reduces each tenant's
   catalog to a digest; a tenant whose digest is its reference's is as
   its revision builds it;
3. **details for the few that differ**: their rows, compared in Python
   (:func:`.catalog.compare`); when many differ, the server first tells
   which are their reference's after all and groups the others by how
   they look (:func:`.catalog.check_schemas`), and one tenant per group
   is read.

Nothing is committed, no tenant is locked, and the scratch schemas are
never seen by another session. A tenant migrated while doctor runs may
show as drifting (its version was read before its catalog): run doctor
again after a deploy, not during one.
"""
import threading

from sqlalchemy.exc import DBAPIError

from .catalog import (
    check_schemas,
    compare,
    read_digests,
    read_objects,
    read_references,
)
from .engine.sql import timeouts_sql
from .errors import CatalogUnreadable, DatabaseUnavailable, describe_error
from .plan import TENANT, branch_heads
from .report import (
    DRIFT,
    MISSING,
    OK,
    UNCHECKED,
    UNKNOWN_REVISION,
    UNREADABLE,
    DriftReport,
    TenantCheck,
)
from .reserved import DOCTOR_PREFIX
from .scratch import build_scratch, scratch_schema_name
from .workers import WorkerPool

#: Tenants per worker below which fewer connections check them: each
#: statement scans pg_class once, whatever its share.
PARALLEL_FROM = 500

#: Tenants of a worker whose digest differs from their reference's up to
#: which their objects are read and compared straight away; past it (a
#: fleet drifted alike), the server groups them first.
READ_DIRECTLY = 100

#: Reads of the catalog made before giving up (see :func:`read_only`).
_ATTEMPTS = 3

#: A difference for a tenant whose catalog did not read the same twice.
CHANGED_MEANWHILE = {
    "kind": "schema", "name": "", "problem": "changed",
    "text": "its catalog changed while doctor read it: run doctor again"}


def examine(migrator, positions, ahead=None):
    """Check the tenants of ``positions`` (a
    :class:`~.report.BranchStatus` of the tenant branch: each tenant's
    revision, as ``current`` reads it). Returns a
    :class:`~.report.DriftReport`. ``ahead``: what :func:`build_ahead`
    returned before the versions were read."""
    report = DriftReport(head=positions.head,
                         rejected=dict(positions.rejected))
    for schema, problem in positions.unreadable.items():
        report.tenants.append(TenantCheck(schema, UNREADABLE, note=problem))
    waiting = {}  # heads -> [(schema, behind)]
    for schema, heads, behind, exists in positions.schemas:
        if not exists:
            report.tenants.append(TenantCheck(
                schema, MISSING, heads, note="the schema does not exist"))
        elif behind is None:
            report.tenants.append(TenantCheck(
                schema, UNKNOWN_REVISION, heads, note=(
                    "its version table names a revision the migrations "
                    "do not have")))
        else:
            waiting.setdefault(heads, []).append((schema, behind))
    if not waiting:
        return report
    references, failures = _references(migrator, list(waiting), ahead)
    for heads, error in failures.items():
        report.tenants.extend(
            TenantCheck(schema, UNCHECKED, heads, behind, note=(
                f"the migrations could not build revision "
                f"{','.join(heads) or 'base'} in a scratch schema: {error}"))
            for schema, behind in waiting.pop(heads))
    expected = {schema: references[heads]
                for heads, tenants in waiting.items()
                for schema, _ in tenants}
    differences = check_tenants(migrator, expected)
    for heads, tenants in waiting.items():
        for schema, behind in tenants:
            if schema not in differences:
                report.tenants.append(TenantCheck(
                    schema, MISSING, heads, behind,
                    note="the schema was dropped while doctor ran"))
            else:
                found = differences[schema]
                report.tenants.append(TenantCheck(
                    schema, DRIFT if found else OK, heads, behind, found))
    return report


def _references(migrator, revisions, ahead):
    """:func:`build_references` for ``revisions``, those ``ahead`` built
    taken from it."""
    references, failures = ahead.result() if ahead is not None else ({}, {})
    references = {h: r for h, r in references.items() if h in revisions}
    failures = {h: e for h, e in failures.items() if h in revisions}
    rest = [h for h in revisions if h not in references and h not in failures]
    if rest:
        built, failed = build_references(migrator, rest)
        references.update(built)
        failures.update(failed)
    return references, failures


class _Ahead:
    """The tenant head's reference, built in a thread of its own."""

    def __init__(self, migrator, heads):
        self._outcome = None
        self._thread = threading.Thread(
            target=self._build, args=(migrator, heads), daemon=True,
            name="tenantmigrate-doctor-head")
        self._thread.start()

    def _build(self, migrator, heads):
        try:
            self._outcome = (build_references(migrator, [heads]), None)
        except BaseException as exc:
            self._outcome = (None, exc)

    def result(self):
        self._thread.join()
        built, error = self._outcome
        if error is not None:
            raise error
        return built


def build_ahead(migrator):
    """Start building the reference of the tenant head (most tenants are
    at it) while the caller reads the versions; :func:`examine` takes the
    result as ``ahead``. ``None`` when the branch has no revision."""
    heads = branch_heads(migrator.script, TENANT)
    return _Ahead(migrator, heads) if heads else None


def _destination(heads):
    """What :func:`.scratch.build_scratch` takes for a schema at
    ``heads``."""
    return heads[0] if len(heads) == 1 else tuple(heads)


def build_references(migrator, revisions):
    """Build a scratch schema at each of ``revisions`` (tuples of heads;
    ``()`` is base) and read it. Returns ``({heads: SchemaObjects},
    {heads: why it could not be built})``.

    Everything happens in one transaction, rolled back at the end, each
    schema in a savepoint of its own: a revision that fails in a fresh
    schema only leaves the tenants at that revision unchecked."""
    settings = migrator.settings
    scratches, failures = {}, {}
    with migrator.connect() as connection:
        transaction = connection.begin()
        try:
            # As in a tenant's transaction: a foreign key to a shared table
            # locks it; waiting long for that lock would queue the app's
            # writes behind us.
            connection.exec_driver_sql(timeouts_sql(
                settings.lock_timeout, settings.statement_timeout))
            for heads in revisions:
                scratch = scratch_schema_name(DOCTOR_PREFIX)
                savepoint = connection.begin_nested()
                try:
                    build_scratch(migrator, connection, scratch,
                                  _destination(heads))
                except Exception as exc:
                    savepoint.rollback()
                    failures[heads] = describe_error(exc)
                    continue
                savepoint.commit()
                scratches[heads] = scratch
            found = {}
            if scratches:
                found = read_references(connection, scratches.values(),
                                        settings.version_table)
        finally:
            transaction.rollback()
    return ({heads: found[scratch] for heads, scratch in scratches.items()},
            failures)


def check_tenants(migrator, expected):
    """``{schema: [difference, ...]}`` (empty: as expected) for the
    schemas of ``expected`` (``{schema: reference}``) that exist: every
    schema's digest compared with its reference's on the server
    (:func:`check_shares`), the few that differ read and compared; when
    many differ, the server groups them first and one schema of each
    group is read."""
    found, shapes = check_shares(migrator, expected)
    groups = {}  # (reference, shape) -> the schema read for the group
    for schema, shape in shapes.items():
        groups.setdefault((id(expected[schema]), shape), schema)
    objects = {}
    if groups:
        with migrator.connect() as connection:
            objects = read_only(connection, lambda: read_objects(
                connection, groups.values(),
                migrator.settings.version_table))
    described = {key: compare(objects[schema], expected[schema])
                 if schema in objects else []
                 for key, schema in groups.items()}
    for schema, shape in shapes.items():
        found[schema] = (described[id(expected[schema]), shape]
                         or [dict(CHANGED_MEANWHILE)])
    return found


def check_shares(migrator, expected):
    """``({schema: [difference, ...]}, {schema: shape})`` for the schemas
    of ``expected`` that exist, each in one of the two (see
    :func:`check_share`).

    The schemas are split in one share per worker (``tenantmigrate.workers``
    connections, :class:`~.workers.WorkerPool`): the server's work is
    describing each object, which backends running side by side share."""
    schemas = list(expected)
    workers = max(1, min(migrator.settings.workers,
                         len(schemas) // PARALLEL_FROM))
    size = max(1, -(-len(schemas) // workers))
    shares = [schemas[start:start + size]
              for start in range(0, len(schemas), size)]
    found, shapes = {}, {}
    guard = threading.Lock()

    def check(connection, share):
        differences, groups = read_only(connection, lambda: check_share(
            connection, {s: expected[s] for s in share},
            migrator.settings.version_table))
        with guard:
            found.update(differences)
            shapes.update(groups)

    if len(shares) > 1:
        pool = WorkerPool(lambda: migrator.connect(migrator.run_engine),
                          len(shares), name="tenantmigrate-doctor")
        pool.run(shares, lambda worker, share: check(worker.connection,
                                                     share))
        if pool.aborted:
            raise pool.connect_error or DatabaseUnavailable(pool.aborted)
    elif shares:
        with migrator.connect() as connection:
            check(connection, shares[0])
    return found, shapes


def check_share(connection, expected, version_table):
    """One worker's share of :func:`check_shares`: the digests of the
    schemas of ``expected`` (one statement), then, for those whose digest
    is not their reference's, either their objects, compared here (up to
    :data:`READ_DIRECTLY` of them), or their shapes
    (:func:`.catalog.check_schemas`, one statement: schemas that differ
    alike share a shape, one of each is read afterwards)."""
    digests = read_digests(connection, expected, version_table)
    found = {schema: [] for schema, digest in digests.items()
             if digest == expected[schema].digest}
    unsure = {schema: expected[schema] for schema in digests
              if schema not in found}
    if len(unsure) > READ_DIRECTLY:
        shapes = check_schemas(connection, unsure, version_table)
        found.update((schema, []) for schema, shape in shapes.items()
                     if shape is None)
        return found, {schema: shape for schema, shape in shapes.items()
                       if shape is not None}
    if unsure:
        objects = read_objects(connection, unsure, version_table)
        found.update((schema, compare(objects[schema], unsure[schema]))
                     for schema in objects)
    return found, {}


def read_only(connection, read):
    """``read()`` in a read-only transaction on ``connection``, rolled
    back, tried again when the catalog moved under it.

    The catalog functions read the newest catalog, not the statement's
    snapshot: a tenant dropped or changed by someone else while the
    statement runs can make one fail ("cache lookup failed for relation").
    Reading again sees the catalog as it is then."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with connection.begin() as transaction:
                connection.exec_driver_sql("SET TRANSACTION READ ONLY")
                result = read()
                transaction.rollback()
            return result
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise DatabaseUnavailable(
                    "the database went away while doctor read the "
                    f"catalog: {describe_error(exc)}") from None
            if attempt == _ATTEMPTS:
                raise CatalogUnreadable(
                    f"the catalog could not be read ({_ATTEMPTS} attempts; "
                    f"was DDL running?): {describe_error(exc)}") from None
