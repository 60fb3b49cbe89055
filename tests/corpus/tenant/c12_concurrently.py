"""an index built CONCURRENTLY in autocommit_block(), with work before and
after the block in the same revision

Revision ID: c12
Revises: c11
"""
from alembic import op
import sqlalchemy as sa

revision = "c12"
down_revision = "c11"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("notes", sa.Column("rank", sa.Integer))
    with op.get_context().autocommit_block():
        op.create_index("ix_notes_rank", "notes", ["rank"],
                        postgresql_concurrently=True)
    op.execute("UPDATE notes SET rank = id")


def downgrade():
    with op.get_context().autocommit_block():
        op.drop_index("ix_notes_rank", table_name="notes",
                      postgresql_concurrently=True)
    op.drop_column("notes", "rank")
