"""Names and numbers this package reserves in a database.

Every layer that needs one of these imports it from here, so that no lower
layer reaches up into the engine for a constant: the bookkeeping tables
kept in the shared schema, the schema name prefixes no tenant may use, the
advisory lock keys, and the driver the engine runs on.
"""
import zlib

#: The driver the migration engine runs on: replayed SQL goes through
#: psycopg2's simple-query protocol, and capture records what psycopg2
#: sends.
DRIVER = "psycopg2"

#: Bookkeeping tables, in the shared schema.
RUNS_TABLE = "tenantmigrate_runs"
SPARES_TABLE = "tenantmigrate_spares"
STATE_TABLE = "tenantmigrate_state"
#: A fleet's placements (which database holds each tenant), on its
#: control database.
PLACEMENTS_TABLE = "tenantmigrate_placements"
#: Sign-ups of a fleet under way: the tenant's schema may exist on its
#: database before its placement commits (see placement.py).
INTENTS_TABLE = "tenantmigrate_placement_intents"
#: Moves of tenants between a fleet's databases under way (moving.py).
MOVES_TABLE = "tenantmigrate_moves"
OWN_TABLES = (RUNS_TABLE, SPARES_TABLE, STATE_TABLE, PLACEMENTS_TABLE,
              INTENTS_TABLE, MOVES_TABLE)

#: Spare tenant schemas (see spares.py) are named with this prefix; no
#: tenant may be.
SPARE_PREFIX = "tenantmigrate_spare_"

#: Scratch schemas: autogenerate compares against one, capture runs
#: revisions in them, doctor builds one per tenant revision it checks. The
#: hyphen makes them names no tenant can have.
AUTOGENERATE_PREFIX = "tenantmigrate-autogenerate-"
CAPTURE_PREFIX = "tenantmigrate-capture-"
DOCTOR_PREFIX = "tenantmigrate-doctor-"
#: A moved tenant's schema on the database it left, between the write
#: fence and its drop (moving.py).
MOVED_PREFIX = "tenantmigrate-moved-"

#: First halves of two-int advisory lock keys, one per kind of lock.
#: The run lock: held for a whole run, exclusive for ordinary runs,
#: shared by the shards of one deploy.
RUN_LOCK = 0x7E4A11
#: One per shard (I/N), so that the same shard never runs twice at once.
SHARD_LOCK = 0x7E4A12
#: One per tenant schema, taken by every transaction that changes a
#: tenant before it reads the tenant's version: two runs (or a run and a
#: sign-up) never work on the same tenant at the same time.
TENANT_LOCK = 0x7E4A13
#: Sign-ups hold it shared while they create a tenant; a run takes it
#: exclusive for its last look at the tenant list, so no tenant is being
#: created unseen while the run decides it is done.
PROVISIONING_LOCK = 0x7E4A14
#: Taken while the functions of isolation.py are (re)installed: two runs
#: replacing a function at once would fail ("tuple concurrently updated").
FUNCTIONS_LOCK = 0x7E4A15
#: One per tenant schema, held by a move of it (for the session, on the
#: control database) from its intent to its end: a run tells a move under
#: way from one cut short by it.
MOVE_LOCK = 0x7E4A16


def lock_key(name):
    """Second half of an advisory lock key for ``name`` (a schema, or the
    shared schema plus a scope), in int4's range. Two names may share a key;
    that only makes them wait for each other, never both run."""
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF
