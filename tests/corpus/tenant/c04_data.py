"""data migrations through op.get_bind(): an sa.table update, and a count
read back into the revision (its SQL depends on each tenant's rows)

Revision ID: c04
Revises: c03
"""
from alembic import op
import sqlalchemy as sa

revision = "c04"
down_revision = "c03"
branch_labels = None
depends_on = None

notes = sa.table("notes", sa.column("title", sa.Text),
                 sa.column("pinned", sa.Boolean))


def upgrade():
    bind = op.get_bind()
    bind.execute(notes.update().where(notes.c.title.like("%!"))
                 .values(pinned=True))
    count = bind.execute(sa.text("SELECT count(*) FROM notes")).scalar()
    op.execute(f"COMMENT ON TABLE notes IS '{count} notes at c04'")


def downgrade():
    op.execute("COMMENT ON TABLE notes IS NULL")
    op.execute(notes.update().values(pinned=False))
