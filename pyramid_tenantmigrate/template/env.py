"""Alembic environment for a schema-per-tenant database.

Run by ``tenant-migrate <ini> <command>``. Revisions in versions/shared/ run
once against the shared schema; revisions in versions/tenant/ run against
every tenant schema, each in its own transaction with its own version table.
Write tenant operations without a schema (``op.create_table("notes", ...)``):
they land in the tenant being migrated. Name the shared schema when a tenant
table refers to a shared one (``sa.ForeignKey("public.accounts.id")``).

Keyword arguments to run_env() go to context.configure() for every schema,
e.g. run_env(context, compare_type=True, include_object=my_filter).
"""
from alembic import context

from pyramid_tenantmigrate.environment import run_env

run_env(context)
