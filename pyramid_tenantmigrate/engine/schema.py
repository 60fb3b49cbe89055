"""One schema outside a run: in the caller's transaction, or for a spare.

:func:`migrate_in_transaction` brings a schema to a destination inside the
transaction the caller has begun (``create_tenant`` in a request): nothing
is committed, and a request that fails later rolls the schema back.
:func:`build_schema` makes a schema nobody uses yet (a spare) with the
commits a tenant run makes, so autocommit blocks run for real.
Both use the programs the migrator keeps (capture runs once per process).
"""
from ..errors import sqlstate
from ..names import quote_schema
from ..plan import StepPlanner, heads_after
from ..versions import read_schema_versions
from .sql import READ_DIFFERS, UNSAFE_NEW_ENUM
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
    savepoint = program.checked
    while True:
        # A checked read may answer otherwise here (a shared table changed
        # since this process captured): a savepoint lets the schema run
        # again from that revision through Alembic, in the same
        # transaction. Only then: in a subtransaction, PostgreSQL does not
        # let an enum value added there be used (55P04), which it allows
        # in a transaction that created the type; on that, the schema
        # runs again without one.
        if savepoint:
            send_script(connection, f"SAVEPOINT {_SAVEPOINT}")
        try:
            heads = _in_transaction(migrator, connection, schema, program,
                                    branch)
        except ScriptFailed as exc:
            state = sqlstate(exc.error)
            if not savepoint or state not in (READ_DIFFERS, UNSAFE_NEW_ENUM):
                raise
            send_script(connection, f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}; "
                                    f"RELEASE SAVEPOINT {_SAVEPOINT}")
            if _read_differs(program, exc):
                migrator.programs.discard(program)  # capture again next time
                program = program.through_alembic_at({exc.revision})
            savepoint = state == READ_DIFFERS and program.checked
            continue
        if savepoint:
            send_script(connection, f"RELEASE SAVEPOINT {_SAVEPOINT}")
        return heads


_SAVEPOINT = "tenantmigrate_schema"


def _read_differs(program, exc):
    return (sqlstate(exc.error) == READ_DIFFERS and exc.revision
            and program.replaying(exc.revision))


def _in_transaction(migrator, connection, schema, program, branch):
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
        while True:
            run = SchemaRun(migrator, connection, schema, program,
                            TENANT_BRANCH, create_schema=True)
            try:
                run.run()
                return
            except Exception as exc:
                run.abort()
                send_script(connection, f"DROP SCHEMA IF EXISTS "
                                        f"{quote_schema(schema)} CASCADE")
                if not isinstance(exc, ScriptFailed):
                    raise ScriptFailed(exc, run.current) from exc
                if not _read_differs(program, exc):
                    raise
                # A read answered otherwise: made again, with that
                # revision through Alembic.
                program = program.through_alembic_at({exc.revision})
