"""sequences through op.execute (setval's row goes to no code), a table
using one, an identity column altered

Revision ID: c11
Revises: c10
"""
from alembic import op
import sqlalchemy as sa

revision = "c11"
down_revision = "c10"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "tickets",
        sa.Column("n", sa.Integer, server_default=sa.text(
            "nextval('ticket_seq')"), primary_key=True),
        sa.Column("person_id", sa.BigInteger, sa.ForeignKey("people.id")),
    )
    op.execute("SELECT setval('ticket_seq', 500)")
    op.execute("INSERT INTO tickets (person_id) SELECT id FROM people")
    op.execute("ALTER TABLE people ALTER COLUMN id SET INCREMENT BY 2")


def downgrade():
    op.execute("ALTER TABLE people ALTER COLUMN id SET INCREMENT BY 1")
    op.drop_table("tickets")
    op.execute("SELECT setval('ticket_seq', 100, false)")
