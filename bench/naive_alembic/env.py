"""The naive baseline: a plain Alembic env.py run once per tenant.

This is what schema-per-tenant projects commonly do without a dedicated
tool (after Alembic's cookbook recipe "Rudimental Schema-Level Multi
Tenancy"): loop over tenants in Python and call ``alembic.command.upgrade``
for each, with ``-x tenant=NAME``. Every call re-reads the revision files,
runs this env.py, creates an engine and connects. The benchmark times it on
a subset of tenants and extrapolates per tenant.
"""
from alembic import context
from sqlalchemy import engine_from_config, pool, text

config = context.config
tenant = context.get_x_argument(as_dictionary=True)["tenant"]

connectable = engine_from_config(
    config.get_section(config.config_ini_section, {}),
    prefix="sqlalchemy.", poolclass=pool.NullPool)

with connectable.connect() as connection:
    connection.execute(text(f'SET search_path TO "{tenant}"'))
    connection.commit()
    connection.dialect.default_schema_name = tenant
    context.configure(connection=connection, target_metadata=None,
                      version_table_schema=tenant)
    with context.begin_transaction():
        context.run_migrations()
