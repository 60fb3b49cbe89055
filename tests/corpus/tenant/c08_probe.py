"""try/except around a probe, inside a savepoint, as real histories do;
then ordinary DDL

Revision ID: c08
Revises: c07
"""
from alembic import op
import sqlalchemy as sa

revision = "c08"
down_revision = "c07"
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            bind.execute(sa.text(
                "ALTER TABLE notes DROP CONSTRAINT old_unique_title"))
    except sa.exc.ProgrammingError:
        pass
    op.create_index("ix_people_name", "people", ["name"])


def downgrade():
    op.drop_index("ix_people_name", table_name="people")
