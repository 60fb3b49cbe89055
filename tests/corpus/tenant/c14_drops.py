"""drops and renames: a column, an index, a table renamed, a unique
constraint, a foreign key dropped and created again

Revision ID: c14
Revises: c13
"""
from alembic import op
import sqlalchemy as sa

revision = "c14"
down_revision = "c13"
branch_labels = None
depends_on = None


def upgrade():
    op.drop_index("ix_people_name", table_name="people")
    op.rename_table("legacy", "archive")
    op.create_unique_constraint("uq_notes_title", "notes", ["person_id",
                                                            "title"])
    op.drop_constraint("notes_person_id_fkey", "notes", type_="foreignkey")
    op.create_foreign_key("fk_notes_person", "notes", "people",
                          ["person_id"], ["id"], ondelete="SET NULL")
    op.drop_column("people", "created")


def downgrade():
    op.add_column("people", sa.Column(
        "created", sa.DateTime(timezone=True), server_default=sa.func.now()))
    op.drop_constraint("fk_notes_person", "notes", type_="foreignkey")
    op.create_foreign_key("notes_person_id_fkey", "notes", "people",
                          ["person_id"], ["id"], ondelete="CASCADE")
    op.drop_constraint("uq_notes_title", "notes", type_="unique")
    op.rename_table("archive", "legacy")
    op.create_index("ix_people_name", "people", ["name"])
