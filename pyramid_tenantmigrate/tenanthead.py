"""The tenant head the database was last migrated to, kept for older app code.

During a deploy, app processes still running the old code create tenants
(sign-ups) while ``tenant-migrate upgrade`` brings every tenant to the new
head. Old code knows only the old revisions, so a tenant it migrates
itself ends up behind. To let it know, every full ``upgrade`` and
``downgrade`` records the tenant head it migrates to (and the revisions
leading there) in the shared schema's ``tenantmigrate_state`` table. App
code reads it when it creates a tenant (:mod:`.provisioning`):

- its own head is the recorded one: nothing special;
- its own head is *older* (one of the recorded head's ancestors): it takes
  a spare schema made at the recorded head if there is one (the new code's
  ``upgrade`` makes them), so the tenant starts at the new head, as every
  other tenant is by then; otherwise it creates the tenant at its own head
  and logs a warning: the run still going migrates it (it looks for new
  tenants until none is left), and after the run the next ``upgrade`` or
  the startup hook does, while ``current`` and ``startup = check`` show it;
- anything else (newer app code, an unrelated history): nothing special.
"""
import json

from sqlalchemy import text

from .names import quote_schema
from .reserved import STATE_TABLE

_KEY = "tenant_head"

_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    key text PRIMARY KEY,
    value jsonb NOT NULL,
    updated timestamptz NOT NULL DEFAULT now()
)
"""


def state_table(shared_schema):
    return f"{quote_schema(shared_schema)}.{quote_schema(STATE_TABLE)}"


def lineage(script, heads):
    """Every revision from ``heads`` down to base, as ids."""
    if not heads:
        return []
    return sorted({revision.revision for revision in
                   script.revision_map.iterate_revisions(
                       tuple(heads), "base")})


def record_tenant_head(connection, shared_schema, script, heads):
    """Record ``heads`` as the database's tenant head (autocommit
    ``connection``: the run lock's)."""
    table = state_table(shared_schema)
    try:
        connection.exec_driver_sql(_DDL.format(table=table))
    except Exception:
        pass  # created by a shard at the same moment
    value = {"heads": sorted(heads), "lineage": lineage(script, heads)}
    connection.execute(text(
        f"INSERT INTO {table} (key, value) VALUES (:key, CAST(:value AS "
        "jsonb)) ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
        "updated = now()"), {"key": _KEY, "value": json.dumps(value)})


def recorded_tenant_head(connection, shared_schema):
    """``(heads, lineage)`` as recorded, or ``None`` (nothing recorded, or
    a role that may not read it: an app role with the least privileges
    creates tenants as it did before)."""
    table = state_table(shared_schema)
    readable = connection.execute(text(
        "SELECT to_regclass(:name) IS NOT NULL AND pg_catalog."
        "has_table_privilege(to_regclass(:name), 'SELECT')"),
        {"name": table}).scalar()
    if not readable:
        return None
    value = connection.execute(text(
        f"SELECT value FROM {table} WHERE key = :key"), {"key": _KEY}).scalar()
    if value is None:
        return None
    return tuple(value.get("heads", ())), frozenset(value.get("lineage", ()))


def older_than_recorded(app_heads, recorded):
    """The recorded head when the app's own head is one of its ancestors
    (the app runs older code than the database), else ``None``."""
    if recorded is None:
        return None
    heads, ancestors = recorded
    if set(heads) == set(app_heads) or not app_heads:
        return None
    if set(app_heads) <= ancestors:
        return heads
    return None
