"""data migrations through op.get_bind(): DML whose result the revision
ignores (replays), and DML whose row count decides what comes next
(through Alembic in each tenant)

Revision ID: c15
Revises: c14
"""
from alembic import op
import sqlalchemy as sa

revision = "c15"
down_revision = "c14"
branch_labels = None
depends_on = None

people = sa.table("people", sa.column("name", sa.Text))


def upgrade():
    bind = op.get_bind()
    bind.execute(people.update().where(people.c.name == "bob")
                 .values(name="Bob"))
    bind.execute(sa.text("UPDATE notes SET rank = rank * 10"))


def downgrade():
    bind = op.get_bind()
    bind.execute(sa.text("UPDATE notes SET rank = rank / 10"))
    bind.execute(people.update().where(people.c.name == "Bob")
                 .values(name="bob"))
