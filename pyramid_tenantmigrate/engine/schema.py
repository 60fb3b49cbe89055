"""One schema outside a run: in the caller's transaction, or for a spare.

:func:`migrate_in_transaction` brings a schema to a destination inside the
transaction the caller has begun (``create_tenant`` in a request): nothing
is committed, and a request that fails later rolls the schema back.
:func:`build_schema` makes a schema nobody uses yet (a spare) with the
commits a tenant run makes, so autocommit blocks run for real.
Both use the programs the migrator keeps (capture runs once per process).
"""
from ..names import quote_schema
from ..plan import StepPlanner, heads_after
from ..versions import read_schema_versions
from .transaction import SchemaRun, ScriptFailed, send_script

TENANT_BRANCH = "tenant"


def migrate_in_transaction(migrator, connection, schema, destination,
                           operation="upgrade"):
    """Run ``operation`` to ``destination`` for one schema on
    ``connection``, inside the transaction the caller has begun; the caller
    commits or rolls back. Replays what can replay (the program is made
    once per migrator); raises :class:`ScriptFailed` or what Alembic
    raises. Returns the heads the schema ends at."""

    if not connection.in_transaction():
        raise RuntimeError("migrate_in_transaction needs a connection in a "
                           "transaction (call connection.begin() first)")
    branch = destination.partition("@")[0]
    heads = read_schema_versions(
        connection, [schema], migrator.settings.version_table,
        commit=False)[schema].heads
    steps = StepPlanner(migrator.script, operation, destination).steps_for(
        heads)
    if not steps:
        return heads
    program = migrator.programs.get(operation, heads, steps,
                                    heads_after(heads, steps), branch)
    # Provisioning happens when nobody can see the schema yet: blocks run
    # in their transaction-safe form, in the caller's transaction.
    run = SchemaRun(migrator, connection, schema, program, branch,
                    own=False)
    try:
        return run.run()
    except ScriptFailed:
        raise
    except Exception as exc:
        raise ScriptFailed(exc, run.current) from exc


def build_schema(migrator, schema, destination="tenant@head"):
    """Create ``schema`` and bring it to ``destination`` on a connection of
    its own, committing as a tenant's migration does (autocommit blocks run
    outside a transaction for real). For a schema nobody uses yet (a
    spare): if it fails, the schema is dropped, and the error raised."""

    steps = StepPlanner(migrator.script, "upgrade", destination).steps_for(())
    program = migrator.programs.get("upgrade", (), steps,
                                    heads_after((), steps), TENANT_BRANCH)
    with migrator.run_connection("spares") as connection:
        run = SchemaRun(migrator, connection, schema, program, TENANT_BRANCH,
                        create_schema=True)
        try:
            run.run()
        except Exception as exc:
            run.abort()
            send_script(connection, f"DROP SCHEMA IF EXISTS "
                                    f"{quote_schema(schema)} CASCADE")
            if isinstance(exc, ScriptFailed):
                raise
            raise ScriptFailed(exc, run.current) from exc
