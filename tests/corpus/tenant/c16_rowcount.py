"""a data migration whose row count decides what it does next

Revision ID: c16
Revises: c15
"""
from alembic import op
import sqlalchemy as sa

revision = "c16"
down_revision = "c15"
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    changed = bind.execute(sa.text(
        "UPDATE notes SET pinned = true WHERE title LIKE 'n%'")).rowcount
    op.execute(sa.text("INSERT INTO people (name, mood) VALUES (:n, 'sad')")
               .bindparams(n=f"pinned {changed}"))


def downgrade():
    op.execute("DELETE FROM people WHERE name LIKE 'pinned %'")
