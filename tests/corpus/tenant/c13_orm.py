"""a data migration through an ORM session on op.get_bind() (reads rows)

Revision ID: c13
Revises: c12
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy import orm

revision = "c13"
down_revision = "c12"
branch_labels = None
depends_on = None


class Base(orm.DeclarativeBase):
    pass


class Person(Base):
    __tablename__ = "people"
    id = sa.Column(sa.BigInteger, primary_key=True)
    name = sa.Column(sa.Text)


def upgrade():
    op.add_column("people", sa.Column("initial", sa.String(1)))
    session = orm.Session(bind=op.get_bind())
    for person in session.scalars(sa.select(Person)):
        session.execute(sa.text("UPDATE people SET initial = :i WHERE id = :id"),
                        {"i": person.name[:1], "id": person.id})
    session.flush()


def downgrade():
    op.drop_column("people", "initial")
