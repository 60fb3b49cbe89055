"""an enum value added in autocommit_block(), as PostgreSQL wants; the
downgrade recreates the type

Revision ID: c05
Revises: c04
"""
from alembic import op

revision = "c05"
down_revision = "c04"
branch_labels = None
depends_on = None


def upgrade():
    with op.get_context().autocommit_block():
        op.execute("ALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh'")


def downgrade():
    op.execute("UPDATE people SET mood = 'happy' WHERE mood = 'meh'")
    op.execute("ALTER TYPE mood RENAME TO mood_old")
    op.execute("CREATE TYPE mood AS ENUM ('happy', 'sad')")
    op.execute("ALTER TABLE people ALTER COLUMN mood DROP DEFAULT")
    op.execute("ALTER TABLE people ALTER COLUMN mood TYPE mood "
               "USING mood::text::mood")
    op.execute("ALTER TABLE people ALTER COLUMN mood SET DEFAULT 'happy'")
    op.execute("DROP TYPE mood_old")
