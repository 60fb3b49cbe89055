"""a backfill in autocommit_block(), as real histories write it: a catalog
probe for an INVALID index left by an earlier try, batches read ``FOR
UPDATE`` until one comes back empty, an index built CONCURRENTLY, then
DDL after the block

Revision ID: c17
Revises: c16
"""
from alembic import op
import sqlalchemy as sa

revision = "c17"
down_revision = "c16"
branch_labels = None
depends_on = None


def upgrade():
    context = op.get_context()
    with context.autocommit_block():
        bind = op.get_bind()
        if not context.as_sql:
            invalid = bind.exec_driver_sql(
                "SELECT 1 FROM pg_class c "
                "JOIN pg_index i ON i.indexrelid = c.oid "
                "WHERE c.relname = 'ix_notes_title' "
                "AND NOT i.indisvalid").scalar()
            if invalid:
                op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_notes_title")
        offset = 0
        while True:
            batch = bind.execute(sa.text(
                f"SELECT id, title FROM notes WHERE title LIKE 'n%' "
                f"ORDER BY id LIMIT 2 OFFSET {offset} FOR UPDATE")).fetchall()
            if not batch:
                break
            for id_, title in batch:
                bind.execute(sa.text(
                    "UPDATE notes SET title = :title WHERE id = :id"),
                    {"title": title.upper(), "id": id_})
            offset += 2
        op.create_index("ix_notes_title", "notes", ["title"],
                        postgresql_concurrently=True)
    op.add_column("notes", sa.Column("checked", sa.Boolean,
                                     server_default=sa.false()))


def downgrade():
    op.drop_column("notes", "checked")
    op.drop_index("ix_notes_title", table_name="notes")
