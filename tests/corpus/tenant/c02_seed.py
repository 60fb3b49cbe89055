"""seed rows: bulk_insert, op.execute with text and bound parameters

Revision ID: c02
Revises: c01
"""
from alembic import op
import sqlalchemy as sa

revision = "c02"
down_revision = "c01"
branch_labels = None
depends_on = None

people = sa.table("people", sa.column("name", sa.Text),
                  sa.column("mood", sa.String), sa.column("account_id",
                                                          sa.Integer))
notes = sa.table("notes", sa.column("person_id", sa.BigInteger),
                 sa.column("title", sa.String), sa.column("body", sa.Text))


def upgrade():
    op.bulk_insert(people, [
        {"name": "ada", "mood": "happy", "account_id": 1},
        {"name": "bob", "mood": "sad", "account_id": 2},
        {"name": "  cy  ", "mood": "happy", "account_id": None},
    ])
    op.bulk_insert(notes, [
        {"person_id": 1, "title": "first!", "body": "it's 100% done"},
        {"person_id": 2, "title": "second", "body": None},
    ])
    op.execute(sa.text("UPDATE people SET name = :new WHERE name = :old")
               .bindparams(new="Ada", old="ada"))
    op.execute("UPDATE notes SET body = body || ' (50% off: $5)' "
               "WHERE body LIKE '%done'")


def downgrade():
    op.execute("DELETE FROM notes")
    op.execute("DELETE FROM people")
