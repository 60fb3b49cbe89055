"""create the tenants table

Revision ID: s001_tenants
Revises:
Create Date: 2026-11-25 09:00:00

"""
from alembic import op
import sqlalchemy as sa

revision = "s001_tenants"
down_revision = None
branch_labels = ("shared",)
depends_on = None


def upgrade():
    op.create_table(
        "tenants",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("schema_name", sa.String(63), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True),
                  server_default=sa.func.now(), nullable=False),
    )


def downgrade():
    op.drop_table("tenants")
