"""the new enum value used; an enum type shared by a second table
(create_type=False); a server default changed

Revision ID: c06
Revises: c05
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "c06"
down_revision = "c05"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("UPDATE people SET mood = 'meh' WHERE name = 'bob'")
    op.create_table(
        "mood_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("mood", postgresql.ENUM(name="mood", create_type=False)),
        sa.Column("at", sa.DateTime, server_default=sa.text("now()")),
    )
    op.alter_column("people", "mood", server_default="meh",
                    existing_type=postgresql.ENUM(name="mood",
                                                  create_type=False))


def downgrade():
    op.alter_column("people", "mood", server_default="happy",
                    existing_type=postgresql.ENUM(name="mood",
                                                  create_type=False))
    op.drop_table("mood_log")
    op.execute("UPDATE people SET mood = 'sad' WHERE name = 'bob'")
