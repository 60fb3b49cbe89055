"""get_context() uses: the dialect name, as_sql and is_offline_mode()
branches (online runs take the online branch, replayed or not)

Revision ID: c10
Revises: c09
"""
from alembic import context, op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "c10"
down_revision = "c09"
branch_labels = None
depends_on = None


def upgrade():
    migration_context = op.get_context()
    if migration_context.dialect.name == "postgresql":
        op.add_column("people", sa.Column(
            "tags", postgresql.ARRAY(sa.Text), server_default="{}",
            nullable=False))
    if op.get_bind().dialect.name != "postgresql":
        raise RuntimeError("PostgreSQL only")
    if not migration_context.as_sql:
        op.execute("UPDATE people SET tags = ARRAY['online'] "
                   "WHERE name = 'Ada'")
    if context.is_offline_mode():
        op.execute("UPDATE people SET tags = ARRAY['offline']")


def downgrade():
    op.drop_column("people", "tags")
