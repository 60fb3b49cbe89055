"""Scratch schemas: a tenant schema as its migrations alone build it.

Autogenerate compares the models with one, ``doctor`` compares the tenants
with them. A scratch schema

- has a name no tenant can have (the prefixes in :mod:`.reserved` hold a
  hyphen), fresh each time;
- is brought to a revision of the tenant branch through Alembic, with
  ``env.py``'s options and alone on ``search_path`` (then
  ``extra_search_path``), as ``upgrade`` brings a new tenant;
- lives inside a transaction the caller rolls back: no other session ever
  sees it, and nothing is left behind, even if the process is killed.

Statements of an ``autocommit_block()`` run inside that transaction in
their transaction-safe form (:func:`.capture.transaction_safe`: ``CREATE
INDEX CONCURRENTLY`` builds the same index as ``CREATE INDEX`` in a schema
nobody else sees), as in capture and provisioning.
"""
import contextlib
import secrets

from sqlalchemy import event

from .engine.capture import transaction_safe
from .engine.sql import search_path_sql
from .environment import AlembicSession
from .names import MAX_IDENTIFIER_BYTES, quote_schema, schema_name_problem
from .plan import TENANT, StepPlanner, branch_has_revisions
from .reserved import AUTOGENERATE_PREFIX


def scratch_schema_name(prefix=AUTOGENERATE_PREFIX):
    """A fresh scratch schema name: never a tenant's, never reused."""
    name = prefix + secrets.token_hex(8)
    if schema_name_problem(name) is None or (
            len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES):
        raise AssertionError(f"unsafe scratch schema name {name!r}")
    return name


def build_scratch(migrator, connection, scratch, destination="tenant@head"):
    """Create ``scratch`` on ``connection`` (in the caller's transaction,
    which the caller rolls back) and bring it to ``destination`` of the
    tenant branch: ``tenant@head``, a revision id, or a tuple of them
    (several heads); ``()`` leaves it empty, as a tenant at base.

    Leaves ``search_path`` on the scratch schema (``SET LOCAL``)."""
    connection.exec_driver_sql(f"CREATE SCHEMA {quote_schema(scratch)}")
    connection.exec_driver_sql(search_path_sql(
        scratch, migrator.settings.extra_search_path))
    if destination == () or not branch_has_revisions(migrator.script,
                                                     TENANT):
        return
    steps = StepPlanner(migrator.script, "upgrade",
                        destination).steps_for(())
    block = _InTransactionBlock(connection)
    session = AlembicSession(migrator, connection, scratch, TENANT,
                             autocommit_block=block)
    session.run(steps)


class _InTransactionBlock:
    """``autocommit_block()`` for a scratch schema: the transaction stays
    open, and statements sent meanwhile are made transaction-safe."""

    def __init__(self, connection):
        self.connection = connection

    def _safe(self, conn, cursor, statement, parameters, context,
              executemany):
        safe = transaction_safe(statement)
        return ("SELECT 1" if safe is None else safe), parameters

    @contextlib.contextmanager
    def __call__(self):
        event.listen(self.connection, "before_cursor_execute", self._safe,
                     retval=True)
        try:
            yield
        finally:
            event.remove(self.connection, "before_cursor_execute",
                         self._safe)
