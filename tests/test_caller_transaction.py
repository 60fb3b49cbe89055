"""migrate_in_transaction: migrations inside a transaction the caller owns."""
from pyramid_tenantmigrate.engine.schema import migrate_in_transaction

from .conftest import schema_exists, version_of


def test_caller_rolls_back_and_nothing_remains(project, db):
    project.write_standard_revisions()
    migrator = project.migrator()
    with migrator.connect() as connection:
        connection.begin()
        connection.exec_driver_sql("CREATE SCHEMA tenant_x")
        before = connection.exec_driver_sql("SHOW search_path").scalar()
        migrate_in_transaction(migrator, connection, "public", "shared@head")
        migrate_in_transaction(migrator, connection, "tenant_x",
                               "tenant@head")
        # The caller's search_path is as it was.
        assert connection.exec_driver_sql(
            "SHOW search_path").scalar() == before
        connection.rollback()
    assert not schema_exists(db, "tenant_x")
    assert version_of(db, "public") is None


def test_caller_commits_and_everything_is_there(project, db):
    project.write_standard_revisions()
    migrator = project.migrator()
    with migrator.connect() as connection:
        with connection.begin():
            connection.exec_driver_sql("CREATE SCHEMA tenant_x")
            migrate_in_transaction(migrator, connection, "public",
                                   "shared@head")
            migrate_in_transaction(migrator, connection, "tenant_x",
                                   "tenant@head")
    migrator.close()
    assert version_of(db, "tenant_x") == ["t2"]
    assert version_of(db, "public") == ["s1"]
