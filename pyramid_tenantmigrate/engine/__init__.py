"""The engine: how a plan is executed, schema by schema.

- :mod:`.capture`     what each revision sends, found once per run
- :mod:`.program`     what each group of schemas runs: replayed and Alembic
  steps, in order
- :mod:`.transaction` one schema's program in its transaction(s): the
  tenant lock, the guard, replayed SQL, Alembic steps, autocommit blocks
- :mod:`.execute`     a branch's plan over a pool of connections, with
  retries, re-planning and connections lost
- :mod:`.schema`      one schema outside a run: in the caller's transaction
  (provisioning) or in its own (spares)
- :mod:`.offline`     ``--sql``: the SQL a run would send
- :mod:`.sql`         the SQL text the engine writes

It runs on :mod:`..workers` (the one job runner) and :mod:`..retry` (the
one retry policy).
"""
