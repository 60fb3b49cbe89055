"""Spare tenant schemas: tenants made ahead of time, so a sign-up is a rename.

Provisioning replays the whole tenant history, which costs what the DDL
costs (tens of milliseconds for a long history, see ``bench/``). With
``tenantmigrate.spare_schemas = N``, ``tenant-migrate <ini> fill-spares``
(and every ``upgrade`` that finishes without failures) keeps N schemas
named ``tenantmigrate_spare_<hex>`` at the tenant head, each listed in the
shared schema's ``tenantmigrate_spares`` table with the revisions it was
made at.

:func:`claim_spare` (called by ``create_tenant``) takes one made at the
current tenant head with ``FOR UPDATE SKIP LOCKED`` (two sign-ups never get
the same one, and neither waits for the other) and renames it
(``ALTER SCHEMA ... RENAME TO``), through a function the deploy role
installs (:mod:`.isolation`), so the app role needs none of its powers.
The spare is at the heads it was claimed for: nothing is left to migrate.
All of it happens in the caller's transaction: a sign-up that is rolled
back puts the spare back.

A rename keeps every object and every reference between objects (column
defaults such as ``nextval('...'::regclass)``, foreign keys, views and
triggers point at objects, not at names), so the tenant is what a full
replay makes. What a rename cannot fix is SQL *text* naming the schema
(a function body with the spare's name written out); tenant revisions are
written without a schema, so they do not produce any.
"""
import uuid

from sqlalchemy import text

from .engine.schema import build_schema
from .isolation import claim_function, claim_spare_sql, install_functions
from .locking import RunLock
from .names import quote_schema
from .plan import TENANT, branch_heads
from .reserved import SPARE_PREFIX
from .reserved import SPARES_TABLE as TABLE
from .tenanthead import older_than_recorded, recorded_tenant_head

_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    schema_name text PRIMARY KEY,
    heads text[] NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
)
"""


def spares_table(shared_schema):
    """The quoted, schema-qualified name of the spares table."""
    return f"{quote_schema(shared_schema)}.{quote_schema(TABLE)}"


def _table_exists(connection, migrator):
    return connection.execute(
        text("SELECT to_regclass(:name) IS NOT NULL"),
        {"name": spares_table(migrator.shared_schema)}).scalar()


def claim_spare(migrator, connection, schema, heads=None):
    """Rename a spare made at ``heads`` (default: the tenant head) to
    ``schema``, inside the transaction open on ``connection``; return
    whether there was one."""
    if migrator.settings.spare_schemas <= 0:
        return False
    # Through the function the deploy role installed (isolation.py): the
    # spare is the deploy role's to rename, and the app role need not
    # have its powers. Without the function, or the right to execute it,
    # provisioning replays as usual: an error here would abort the
    # caller's transaction.
    usable = connection.execute(text(
        "SELECT to_regprocedure(:function) IS NOT NULL AND "
        "pg_catalog.has_function_privilege(to_regprocedure(:function), "
        "'EXECUTE')"), {"function": claim_function(migrator.settings)}
    ).scalar()
    if not usable:
        return False
    return bool(connection.exec_driver_sql(claim_spare_sql(
        migrator.settings, schema,
        sorted(heads or branch_heads(migrator.script, TENANT)))).scalar())


def count_spares(migrator, connection):
    """``{"ready": spares at the tenant head, "stale": the others}``, or
    None when spares were never made in this database."""
    if not _table_exists(connection, migrator):
        return None
    ready, total = connection.execute(text(
        "SELECT count(*) FILTER (WHERE heads = CAST(:heads AS text[])), "
        f"count(*) FROM {spares_table(migrator.shared_schema)}"),
        {"heads": list(branch_heads(migrator.script, TENANT))}).one()
    return {"ready": ready, "stale": total - ready}


class SpareReport:
    """What :func:`fill_spares` did: ``created`` and ``dropped`` schema
    names, and ``ready``, the number of spares at the head afterwards."""

    def __init__(self, error=None):
        self.created = []
        self.dropped = []
        self.ready = 0
        self.error = error

    def to_dict(self):
        return {"created": self.created, "dropped": self.dropped,
                "ready": self.ready, "error": self.error}

    def after(self, earlier):
        """This report, with what an ``earlier`` fill of the same run did
        in front of it."""
        if earlier is not None:
            self.created = earlier.created + self.created
            self.dropped = earlier.dropped + self.dropped
            self.error = self.error or earlier.error
        return self

    def render_text(self):
        if self.error:
            return (f"spares: not filled: {self.error}; run "
                    "'tenant-migrate <ini> fill-spares'")
        return (f"spares: {self.ready} ready at the tenant head "
                f"({len(self.created)} created, {len(self.dropped)} "
                "dropped)")


def fill_spares(migrator, count=None, lock_wait=None, locked=False):
    """Make the pool hold ``count`` spares (default: the ``spare_schemas``
    setting) at the tenant head.

    Spares made at another revision (the head has moved since), spares
    beyond ``count``, and spare-named schemas the table does not list
    (left by hand) are dropped; new ones are created one transaction
    each. Takes the run lock (as ``upgrade`` does) unless ``locked`` says
    the caller holds it. Returns a :class:`SpareReport`.
    """
    if count is None:
        count = migrator.settings.spare_schemas
    if locked:
        return _fill(migrator, count)
    if lock_wait is None:
        lock_wait = migrator.settings.lock_wait
    with RunLock(migrator, "fill-spares", wait=lock_wait):
        return _fill(migrator, count)


def _fill(migrator, count):
    report = SpareReport()
    table = spares_table(migrator.shared_schema)
    heads = list(branch_heads(migrator.script, TENANT))
    with migrator.connect() as connection:
        newer = older_than_recorded(heads, recorded_tenant_head(
            connection, migrator.shared_schema))
        connection.rollback()
        if newer:
            # This code is older than the database (a deploy in progress):
            # its spares would be behind, and the new code's are not its
            # to drop.
            report.error = (
                f"the database's tenant head {','.join(newer)} is newer than "
                f"this code's ({','.join(heads)}): run fill-spares from the "
                "new code")
            return report
        with connection.begin():
            if not _table_exists(connection, migrator):
                if count <= 0:
                    return report
                connection.exec_driver_sql(_DDL.format(table=table))
        install_functions(connection, migrator.settings)
        with connection.begin():
            listed = connection.execute(text(
                f"SELECT schema_name, heads FROM {table} "
                "ORDER BY created, schema_name")).fetchall()
            present = set(connection.execute(text(
                "SELECT nspname FROM pg_catalog.pg_namespace "
                "WHERE left(nspname, length(:prefix)) = :prefix"),
                {"prefix": SPARE_PREFIX}).scalars())
        keep = [name for name, spare_heads in listed
                if sorted(spare_heads) == heads and name in present][:count]
        listed_names = {name for name, _ in listed}
        for name in sorted(listed_names | present):
            if name in keep:
                continue
            with connection.begin():
                taken = connection.execute(text(
                    f"DELETE FROM {table} WHERE schema_name = ("
                    f"  SELECT schema_name FROM {table}"
                    "   WHERE schema_name = :name FOR UPDATE SKIP LOCKED"
                    ") RETURNING 1"), {"name": name}).first()
                if name in listed_names and taken is None:
                    # A sign-up is claiming it right now (or has).
                    continue
                connection.exec_driver_sql(
                    f"DROP SCHEMA IF EXISTS {quote_schema(name)} CASCADE")
            report.dropped.append(name)
        ready = len(keep)
        while ready < count:
            name = SPARE_PREFIX + uuid.uuid4().hex[:16]
            # Made as a tenant is migrated (autocommit blocks commit for
            # real), and listed only once whole: nobody claims it before.
            build_schema(migrator, name)
            with connection.begin():
                connection.execute(text(
                    f"INSERT INTO {table} (schema_name, heads) "
                    "VALUES (:name, CAST(:heads AS text[]))"),
                    {"name": name, "heads": heads})
            report.created.append(name)
            ready += 1
        report.ready = ready
    return report
