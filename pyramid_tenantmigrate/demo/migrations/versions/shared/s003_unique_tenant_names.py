"""tenant names are unique

Revision ID: s003_unique_tenant_names
Revises: s002_demo_tenants
Create Date: 2026-11-25 10:00:00

"""
from alembic import op

revision = "s003_unique_tenant_names"
down_revision = "s002_demo_tenants"
branch_labels = None
depends_on = None


def upgrade():
    op.create_unique_constraint("uq_tenants_name", "tenants", ["name"])


def downgrade():
    op.drop_constraint("uq_tenants_name", "tenants", type_="unique")
