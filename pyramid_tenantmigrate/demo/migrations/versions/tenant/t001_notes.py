"""create the notes table

Revision ID: t001_notes
Revises:
Create Date: 2026-11-25 09:02:00

"""
from alembic import op
import sqlalchemy as sa

revision = "t001_notes"
down_revision = None
branch_labels = ("tenant",)
depends_on = None


def upgrade():
    # No schema: this lands in the tenant being migrated. The reference to
    # the shared tenants table names the shared schema.
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("author_tenant_id", sa.Integer,
                  sa.ForeignKey("public.tenants.id"), nullable=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True),
                  server_default=sa.func.now(), nullable=False),
    )


def downgrade():
    op.drop_table("notes")
