"""batch_alter_table, a check constraint, a type change

Revision ID: c03
Revises: c02
"""
from alembic import op
import sqlalchemy as sa

revision = "c03"
down_revision = "c02"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("notes") as batch:
        batch.add_column(sa.Column("pinned", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
        batch.alter_column("title", type_=sa.Text,
                           existing_type=sa.String(100), nullable=False)
        batch.create_index("ix_notes_pinned", ["pinned"])
    op.create_check_constraint("ck_people_name", "people",
                               "length(name) > 0")


def downgrade():
    op.drop_constraint("ck_people_name", "people", type_="check")
    with op.batch_alter_table("notes") as batch:
        batch.drop_index("ix_notes_pinned")
        batch.alter_column("title", type_=sa.String(100),
                           existing_type=sa.Text, nullable=False)
        batch.drop_column("pinned")
