"""demo seed: three tenants with their (empty) schemas

A real application provisions tenants at sign-up (the demo's /signup
view, with request.create_tenant); the demo also seeds three so that the first
``tenant-migrate development.ini upgrade`` has tenants to migrate.

Revision ID: s002_demo_tenants
Revises: s001_tenants
Create Date: 2026-11-25 09:01:00

"""
from alembic import op
import sqlalchemy as sa

revision = "s002_demo_tenants"
down_revision = "s001_tenants"
branch_labels = None
depends_on = None

DEMO_TENANTS = [("Acme Corp", "tenant_acme"), ("Globex", "tenant_globex"),
                ("Initech", "tenant_initech")]


def upgrade():
    tenants = sa.table("tenants", sa.column("name"), sa.column("schema_name"))
    op.bulk_insert(tenants, [{"name": name, "schema_name": schema}
                             for name, schema in DEMO_TENANTS])
    for _, schema in DEMO_TENANTS:
        op.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')


def downgrade():
    for _, schema in DEMO_TENANTS:
        op.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    op.execute("DELETE FROM tenants WHERE schema_name IN "
               "('tenant_acme', 'tenant_globex', 'tenant_initech')")
