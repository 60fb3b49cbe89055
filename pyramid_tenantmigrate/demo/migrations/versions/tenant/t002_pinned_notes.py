"""pin notes

Revision ID: t002_pinned_notes
Revises: t001_notes
Create Date: 2026-11-25 09:03:00

"""
from alembic import op
import sqlalchemy as sa

revision = "t002_pinned_notes"
down_revision = "t001_notes"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("notes", sa.Column("pinned", sa.Boolean, nullable=False,
                                     server_default=sa.false()))
    op.create_index("ix_notes_pinned", "notes", ["pinned"])


def downgrade():
    op.drop_index("ix_notes_pinned", table_name="notes")
    op.drop_column("notes", "pinned")
