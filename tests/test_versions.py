"""Reading many schemas' versions at once (versions.py), on a real server."""
import sqlalchemy as sa

from pyramid_tenantmigrate import versions
from pyramid_tenantmigrate.names import quote_schema

from .conftest import create_schemas


def _version_table(engine, schema, table, *revisions):
    with engine.begin() as connection:
        connection.exec_driver_sql(
            f"CREATE TABLE {quote_schema(schema)}.{quote_schema(table)} "
            "(version_num varchar(32) PRIMARY KEY)")
        for revision in revisions:
            connection.exec_driver_sql(
                f"INSERT INTO {quote_schema(schema)}.{quote_schema(table)} "
                "VALUES (%(rev)s)", {"rev": revision})


def _setup(db, table="alembic_version"):
    schemas = [f"t_{i:02d}" for i in range(9)]
    create_schemas(db, *schemas, 'we"ird')
    for i, schema in enumerate(schemas):
        if i % 3 == 0:
            _version_table(db, schema, table, "aaa")
        elif i % 3 == 1:
            _version_table(db, schema, table)  # at base
        # i % 3 == 2: no version table
    _version_table(db, 'we"ird', table, "bbb", "ccc")
    return schemas + ['we"ird', "missing"]


def _check(result, schemas):
    assert set(result) == set(schemas)
    for i, schema in enumerate(schemas[:9]):
        version = result[schema]
        assert version.exists
        if i % 3 == 0:
            assert (version.heads, version.has_version_table) == (
                ("aaa",), True)
        elif i % 3 == 1:
            assert (version.heads, version.has_version_table) == ((), True)
        else:
            assert (version.heads, version.has_version_table) == ((), False)
    assert result['we"ird'].heads == ("bbb", "ccc")
    assert not result["missing"].exists
    assert result["missing"].heads == ()


def test_one_connection_small_batches(db):
    schemas = _setup(db)
    with db.connect() as connection:
        result = versions.read_schema_versions(
            connection, schemas, "alembic_version", batch_size=2)
    _check(result, schemas)


def test_batches_spread_over_several_connections(db):
    schemas = _setup(db, table="my versions")
    opened = []

    def connect():
        opened.append(1)
        return db.connect()

    with db.connect() as connection:
        result = versions.read_schema_versions(
            connection, schemas, "my versions", batch_size=2,
            connect=connect, workers=3)
    _check(result, schemas)
    assert len(opened) == 3


def test_a_version_table_dropped_after_the_catalog_check_reads_as_base(db):
    _setup(db)
    # The catalog said t_00 had a version table; it is gone when read.
    with db.begin() as connection:
        connection.exec_driver_sql("DROP TABLE t_00.alembic_version")
    with db.connect() as connection:
        heads = versions._read_batch(
            connection, ["t_00", "t_03", "t_04"], "alembic_version",
            commit=True)
    assert heads == {"t_03": ["aaa"], "t_04": []}


def test_inside_the_callers_transaction(db):
    _setup(db)
    with db.connect() as connection:
        default = connection.exec_driver_sql(
            "SHOW effective_io_concurrency").scalar()
        connection.rollback()
        with connection.begin():
            connection.exec_driver_sql(
                "UPDATE t_00.alembic_version SET version_num = 'zzz'")
            result = versions.read_schema_versions(
                connection, ["t_00", "t_01"], "alembic_version",
                commit=False)
            # Its own uncommitted change is what it reads.
            assert result["t_00"].heads == ("zzz",)
            assert connection.in_transaction()
            # Nothing the reader set is left in the caller's transaction.
            assert connection.exec_driver_sql(
                "SHOW effective_io_concurrency").scalar() == default


def _statements_sent(engine):
    sent = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *args: sent.append(
                        statement))
    return sent


def test_batches_read_without_read_ahead_and_nothing_outlives_them(db):
    _setup(db)
    sent = _statements_sent(db)
    with db.connect() as connection:
        default = connection.exec_driver_sql(
            "SHOW effective_io_concurrency").scalar()
        connection.rollback()
        heads = versions._read_batch(connection, ["t_00", "t_03"],
                                     "alembic_version", commit=True)
        assert heads == {"t_00": ["aaa"], "t_03": ["aaa"]}
        assert connection.exec_driver_sql(
            "SHOW effective_io_concurrency").scalar() == default
        assert connection.exec_driver_sql(
            "SHOW row_security").scalar() == "on"
    reads = [s for s in sent if "UNION ALL" in s]
    assert reads and all(s.startswith(
        "SET LOCAL effective_io_concurrency = 0; "
        "SET LOCAL row_security = off; SELECT") for s in reads)


def test_no_setting_in_the_callers_transaction(db):
    _setup(db)
    sent = _statements_sent(db)
    with db.connect() as connection:
        with connection.begin():
            versions.read_schema_versions(
                connection, ["t_00", "t_03"], "alembic_version",
                commit=False)
    reads = [s for s in sent if "UNION ALL" in s]
    assert reads and not any("effective_io_concurrency" in s for s in sent)


def test_a_batch_whose_tables_all_vanished_reads_nothing(db):
    _setup(db)
    with db.begin() as connection:
        connection.exec_driver_sql("DROP TABLE t_00.alembic_version")
        connection.exec_driver_sql("DROP TABLE t_03.alembic_version")
    with db.connect() as connection:
        heads = versions._read_batch(connection, ["t_00", "t_03"],
                                     "alembic_version", commit=True)
    assert heads == {}


def test_an_owner_is_asked_about_privileges_it_revoked_from_itself(
        roles, db):
    # Owning a schema and its version table lets a role read them unless
    # their privileges were changed: an owner can revoke its own.
    deploy = sa.create_engine(roles.url(roles.deploy))
    create_schemas(deploy, "t_kept", "t_no_usage", "t_no_select")
    for schema in ("t_kept", "t_no_usage", "t_no_select"):
        _version_table(deploy, schema, "alembic_version", "aaa")
    with deploy.begin() as connection:
        connection.exec_driver_sql(
            f'REVOKE USAGE ON SCHEMA t_no_usage FROM "{roles.deploy}"')
        connection.exec_driver_sql(
            "REVOKE SELECT ON t_no_select.alembic_version "
            f'FROM "{roles.deploy}"')
    try:
        with deploy.connect() as connection:
            result = versions.read_schema_versions(
                connection, ["t_kept", "t_no_usage", "t_no_select"],
                "alembic_version")
    finally:
        deploy.dispose()
    assert result["t_kept"].heads == ("aaa",)
    assert result["t_kept"].problem is None
    # Told by the catalog, with the fix, not by a failed read.
    assert result["t_no_usage"].problem == (
        f"permission denied: the role {roles.deploy} may not read schema "
        "t_no_usage, though it owns it (its own privilege was revoked): "
        f'GRANT USAGE ON SCHEMA "t_no_usage" TO "{roles.deploy}"')
    assert result["t_no_select"].problem == (
        f"permission denied: the role {roles.deploy} may not read the "
        "version table t_no_select.alembic_version, though it owns it (its "
        "own privilege was revoked): GRANT SELECT ON "
        f'"t_no_select"."alembic_version" TO "{roles.deploy}"')
    # A superuser reads them all.
    with db.connect() as connection:
        result = versions.read_schema_versions(
            connection, ["t_no_usage", "t_no_select"], "alembic_version")
    assert {s: (v.heads, v.problem) for s, v in result.items()} == {
        "t_no_usage": (("aaa",), None), "t_no_select": (("aaa",), None)}


def test_a_privilege_the_catalog_does_not_show_is_the_schemas_problem(
        db, monkeypatch):
    # The catalog says the role may read the table, the read says no
    # (row security, a grant revoked in flight): the schema is named with
    # the server's error, and the others of its batch are read.
    create_schemas(db, "t_ok", "t_denied")
    _version_table(db, "t_ok", "alembic_version", "aaa")
    _version_table(db, "t_denied", "alembic_version", "bbb")
    real = versions._union_sql

    def denying(batch, version_table):
        # A read of t_denied fails as an unshown privilege would.
        sql = real(batch, version_table)
        if "t_denied" in batch:
            sql = ("DO $$BEGIN RAISE EXCEPTION 'permission denied for "
                   "table alembic_version' USING ERRCODE = '42501'; "
                   "END$$; " + sql)
        return sql

    monkeypatch.setattr(versions, "_union_sql", denying)
    with db.connect() as connection:
        result = versions.read_schema_versions(
            connection, ["t_ok", "t_denied"], "alembic_version")
    assert result["t_ok"].heads == ("aaa",)
    assert result["t_denied"].problem.startswith(
        "permission denied for table alembic_version")


def test_a_version_table_hiding_its_rows_is_reported_not_read_as_base(
        roles):
    # Row security forced on the owner, no policy: a plain read sees no
    # row, as if the schema were at base.
    deploy = sa.create_engine(roles.url(roles.deploy))
    create_schemas(deploy, "t_hidden", "t_plain")
    _version_table(deploy, "t_hidden", "alembic_version", "aaa")
    _version_table(deploy, "t_plain", "alembic_version", "bbb")
    with deploy.begin() as connection:
        connection.exec_driver_sql(
            "ALTER TABLE t_hidden.alembic_version ENABLE ROW LEVEL SECURITY")
        connection.exec_driver_sql(
            "ALTER TABLE t_hidden.alembic_version FORCE ROW LEVEL SECURITY")
    try:
        with deploy.connect() as connection:
            result = versions.read_schema_versions(
                connection, ["t_hidden", "t_plain"], "alembic_version")
    finally:
        deploy.dispose()
    assert result["t_plain"].heads == ("bbb",)
    assert "row-level security" in result["t_hidden"].problem
    assert result["t_hidden"].heads == ()
