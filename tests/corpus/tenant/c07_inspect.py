"""conditional DDL on sa.inspect(bind): what it does depends on the tenant

Revision ID: c07
Revises: c06
"""
from alembic import op
import sqlalchemy as sa

revision = "c07"
down_revision = "c06"
branch_labels = None
depends_on = None


def upgrade():
    inspector = sa.inspect(op.get_bind())
    if "legacy" not in inspector.get_table_names():
        op.create_table("legacy", sa.Column("id", sa.Integer,
                                            primary_key=True))
    columns = [c["name"] for c in inspector.get_columns("notes")]
    if "body" in columns:
        op.alter_column("notes", "body", new_column_name="content")


def downgrade():
    op.alter_column("notes", "content", new_column_name="body")
    op.drop_table("legacy")
