"""people and notes: enum, identity, serial, sequence, server defaults,
a foreign key to a shared table

Revision ID: c01
Revises:
"""
from alembic import op
import sqlalchemy as sa

revision = "c01"
down_revision = None
branch_labels = ("tenant",)
depends_on = None


def upgrade():
    op.create_table(
        "people",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False),
                  primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("mood", sa.Enum("happy", "sad", name="mood"),
                  nullable=False, server_default="happy"),
        sa.Column("account_id", sa.Integer,
                  sa.ForeignKey("public.accounts.id")),
        sa.Column("created", sa.DateTime(timezone=True),
                  server_default=sa.func.now()),
    )
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("person_id", sa.BigInteger,
                  sa.ForeignKey("people.id", ondelete="CASCADE")),
        sa.Column("title", sa.String(100), nullable=False),
        sa.Column("body", sa.Text),
    )
    op.execute(sa.text("CREATE SEQUENCE ticket_seq START 100"))


def downgrade():
    op.execute("DROP SEQUENCE ticket_seq")
    op.drop_table("notes")
    op.drop_table("people")
    op.execute("DROP TYPE mood")
