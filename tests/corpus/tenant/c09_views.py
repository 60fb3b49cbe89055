"""a view, a function and a trigger through op.execute (dollar quotes)

Revision ID: c09
Revises: c08
"""
from alembic import op

revision = "c09"
down_revision = "c08"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE VIEW pinned_notes AS "
               "SELECT id, title FROM notes WHERE pinned")
    op.execute("""
        CREATE FUNCTION trim_name() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.name := trim(NEW.name);
            RETURN NEW;
        END
        $$""")
    op.execute("CREATE TRIGGER trg_trim_name BEFORE INSERT OR UPDATE ON "
               "people FOR EACH ROW EXECUTE FUNCTION trim_name()")
    op.execute("UPDATE people SET name = name")


def downgrade():
    op.execute("DROP TRIGGER trg_trim_name ON people")
    op.execute("DROP FUNCTION trim_name()")
    op.execute("DROP VIEW pinned_notes")
