"""shared accounts

Revision ID: s01
Revises:
"""
from alembic import op
import sqlalchemy as sa

revision = "s01"
down_revision = None
branch_labels = ("shared",)
depends_on = None


def upgrade():
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.Text, nullable=False, unique=True),
        schema="public")
    op.execute("INSERT INTO public.accounts (email) VALUES "
               "('a@example.com'), ('b@example.com')")


def downgrade():
    op.drop_table("accounts", schema="public")
