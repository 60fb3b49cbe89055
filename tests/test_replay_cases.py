"""Revisions that used to replay wrongly: each must do on the fast path
what plain Alembic does (issue: replay fidelity, cases 1-5), and every
setting must apply on both paths."""
import json

import pytest
import sqlalchemy as sa

from pyramid_tenantmigrate.provisioning import create_tenant

from .conftest import columns_of, create_schemas, version_of
from .differential import PlainAlembic, assert_same

NOTES = """
    op.create_table("notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.Text, nullable=False))
    op.execute("INSERT INTO notes (title) VALUES ('a'), ('b')")
    """


def titles(db, schema):
    with db.connect() as connection:
        return connection.exec_driver_sql(
            f"SELECT title FROM {schema}.notes ORDER BY id").scalars().all()


def upgrade_json(project, *args, check=0):
    result = project.run("upgrade", "--json", *args, check=check)
    return json.loads(result.stdout)


def tenant_results(report):
    branch = [b for b in report["branches"] if b["branch"] == "tenant"][0]
    return {s["schema"]: s for s in branch["schemas"]}


def test_get_bind_inside_try_except_still_does_its_work(project, db):
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", """
        try:
            bind = op.get_bind()
            bind.execute(sa.text("UPDATE notes SET title = upper(title)"))
        except Exception:
            pass
        op.add_column("notes", sa.Column("extra", sa.Integer))
        """)
    create_schemas(db, "tenant_a", "tenant_b")

    report = upgrade_json(project)

    for tenant in ("tenant_a", "tenant_b"):
        assert titles(db, tenant) == ["A", "B"]
        assert "extra" in columns_of(db, tenant, "notes")
    # Its UPDATE's result is never looked at: nothing it did depends on
    # the tenant, so it replays, UPDATE included.
    paths = tenant_results(report)["tenant_a"]["paths"]
    assert paths == {"t1": "replay", "t2": "replay"}


def test_an_as_sql_branch_runs_its_online_side(project, db):
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", """
        if not op.get_context().as_sql:
            op.execute("UPDATE notes SET title = title || '!'")
        """)
    create_schemas(db, "tenant_a")

    report = upgrade_json(project)

    assert titles(db, "tenant_a") == ["a!", "b!"]
    # What it did reads nothing from the database: it replays.
    assert tenant_results(report)["tenant_a"]["paths"]["t2"] == "replay"


def test_an_enum_type_created_by_two_revisions_of_one_run(
        project, db, tmp_path):
    project.write_revision("tenant", "t1", None, """
        op.create_table("people", sa.Column("id", sa.Integer,
            primary_key=True), sa.Column("mood", sa.Enum("happy", "sad",
            name="mood")))
        """)
    project.write_revision("tenant", "t2", "t1", """
        op.create_table("moods", sa.Column("id", sa.Integer,
            primary_key=True), sa.Column("mood", sa.Enum("happy", "sad",
            name="mood")))
        """)
    create_schemas(db, "tenant_a", "plain_a")

    report = upgrade_json(project)
    PlainAlembic(project, tmp_path).upgrade("plain_a", "heads")

    assert tenant_results(report)["tenant_a"]["status"] == "done"
    assert_same(db, [("tenant_a", "plain_a")], "base -> head")


def test_an_enum_type_created_twice_fails_step_by_step_as_with_alembic(
        project, db, tmp_path):
    project.write_revision("tenant", "t1", None, """
        op.create_table("people", sa.Column("id", sa.Integer,
            primary_key=True), sa.Column("mood", sa.Enum("happy", "sad",
            name="mood")))
        """)
    project.write_revision("tenant", "t2", "t1", """
        op.create_table("moods", sa.Column("id", sa.Integer,
            primary_key=True), sa.Column("mood", sa.Enum("happy", "sad",
            name="mood")))
        """)
    create_schemas(db, "tenant_a", "plain_a")
    plain = PlainAlembic(project, tmp_path)
    project.run("upgrade", "tenant@t1", check=0)
    plain.upgrade("plain_a", "t1")

    report = upgrade_json(project, check=1)
    with pytest.raises(sa.exc.ProgrammingError, match="already exists"):
        plain.upgrade("plain_a", "t2")

    failed = tenant_results(report)["tenant_a"]
    assert failed["status"] == "failed" and "already exists" in failed[
        "error"]
    assert version_of(db, "tenant_a") == ["t1"]


CONCURRENT_INDEX = """
    op.add_column("notes", sa.Column("rank", sa.Integer))
    with op.get_context().autocommit_block():
        op.create_index("ix_notes_rank", "notes", ["rank"],
                        postgresql_concurrently=True)
    op.execute("UPDATE notes SET rank = id")
    """
DROP_CONCURRENT_INDEX = """
    with op.get_context().autocommit_block():
        op.drop_index("ix_notes_rank", table_name="notes",
                      postgresql_concurrently=True)
    op.drop_column("notes", "rank")
    """


def index_is_valid(db, schema, name):
    with db.connect() as connection:
        return connection.execute(sa.text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON "
            "c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = "
            "c.relnamespace WHERE n.nspname = :s AND c.relname = :i"),
            {"s": schema, "i": name}).scalar()


@pytest.mark.parametrize("replay", ["true", "false"])
def test_autocommit_block_upgrade_and_downgrade(project, db, replay):
    project.write_ini(**{"tenantmigrate.replay": replay})
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", CONCURRENT_INDEX,
                           DROP_CONCURRENT_INDEX)
    create_schemas(db, "tenant_a", "tenant_b")

    report = upgrade_json(project)

    for tenant in ("tenant_a", "tenant_b"):
        assert index_is_valid(db, tenant, "ix_notes_rank") is True
        assert version_of(db, tenant) == ["t2"]
        with db.connect() as connection:
            assert connection.exec_driver_sql(
                f"SELECT array_agg(rank ORDER BY id) FROM {tenant}.notes"
            ).scalar() == [1, 2]
    if replay == "true":
        assert tenant_results(report)["tenant_a"]["paths"]["t2"] == "replay"

    project.run("downgrade", "tenant@t1", check=0)
    for tenant in ("tenant_a", "tenant_b"):
        assert index_is_valid(db, tenant, "ix_notes_rank") is None
        assert "rank" not in columns_of(db, tenant, "notes")
        assert version_of(db, tenant) == ["t1"]


def test_autocommit_block_in_create_tenant_and_spares(project, db):
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", CONCURRENT_INDEX,
                           DROP_CONCURRENT_INDEX)
    project.app_factory = "call:tests.apps:main"
    project.write_ini(**{"tenantmigrate.spare_schemas": "1"})

    project.run("create-tenant", "tenant_new", check=0)
    project.run("fill-spares", check=0)
    project.run("create-tenant", "tenant_spare", check=0)

    for tenant in ("tenant_new", "tenant_spare"):
        assert index_is_valid(db, tenant, "ix_notes_rank") is True
        assert version_of(db, tenant) == ["t2"]
    # In a caller's transaction too (a request's), rolled back whole.
    migrator = project.migrator()
    with migrator.connect() as connection:
        transaction = connection.begin()
        create_tenant(migrator, "tenant_rolled_back", connection=connection)
        transaction.rollback()
    migrator.close()
    with db.connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT count(*) FROM pg_namespace WHERE nspname = "
            "'tenant_rolled_back'").scalar() == 0


def test_a_failing_concurrent_index_is_reported_and_a_rerun_proceeds(
        project, db):
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", """
        op.execute("UPDATE notes SET title = title || '.'")
        with op.get_context().autocommit_block():
            op.create_index("ix_title", "notes", ["title"], unique=True,
                            postgresql_concurrently=True)
        """)
    create_schemas(db, "tenant_a", "tenant_b")
    project.run("upgrade", "tenant@t1", check=0)
    with db.begin() as connection:
        # tenant_b's titles are not unique.
        connection.exec_driver_sql(
            "INSERT INTO tenant_b.notes (title) VALUES ('a')")

    report = upgrade_json(project, check=1)

    results = tenant_results(report)
    assert results["tenant_a"]["status"] == "done"
    failed = results["tenant_b"]
    assert failed["status"] == "failed"
    assert failed["failed_revision"] == "t2"
    assert "ix_title" in failed["error"] and "dropped" in failed["error"]
    assert "re-run" in failed["error"]
    # What came before the block was committed, and the report says so.
    assert "before its autocommit block were committed" in failed["error"]
    assert titles(db, "tenant_b") == ["a.", "b.", "a."]
    assert version_of(db, "tenant_b") == ["t1"]
    assert index_is_valid(db, "tenant_b", "ix_title") is None

    with db.begin() as connection:
        connection.exec_driver_sql(
            "DELETE FROM tenant_b.notes WHERE id = 3")
    project.run("upgrade", check=0)
    assert version_of(db, "tenant_b") == ["t2"]
    assert index_is_valid(db, "tenant_b", "ix_title") is True


@pytest.mark.parametrize("replay", ["true", "false"])
def test_every_setting_applies_on_both_paths(project, db, replay, tmp_path):
    with db.begin() as connection:
        connection.exec_driver_sql("CREATE SCHEMA extensions")
        connection.exec_driver_sql(
            "CREATE DOMAIN extensions.email AS text "
            "CHECK (VALUE LIKE '%%@%%')")
    project.write_ini(**{
        "tenantmigrate.replay": replay,
        "tenantmigrate.extra_search_path": "extensions",
        "tenantmigrate.version_table": "tm_version",
        "tenantmigrate.lock_timeout": "1234ms",
        "tenantmigrate.statement_timeout": "56s",
    })
    project.write_revision("tenant", "t1", None, """
        op.execute("CREATE TABLE contacts (address email)")
        op.execute("CREATE TABLE seen AS SELECT "
                   "current_setting('lock_timeout') AS lock_timeout, "
                   "current_setting('statement_timeout') "
                   "AS statement_timeout, "
                   "current_setting('search_path') AS search_path")
        """)
    # This one reads, so it runs through Alembic on either setting.
    project.write_revision("tenant", "t2", "t1", """
        seen = op.get_bind().execute(sa.text(
            "SELECT current_setting('lock_timeout'), "
            "current_setting('statement_timeout'), "
            "current_setting('search_path')")).one()
        op.execute(sa.text("INSERT INTO seen VALUES (:a, :b, :c)")
                   .bindparams(a=seen[0], b=seen[1], c=seen[2]))
        """)
    create_schemas(db, "tenant_a")

    report = upgrade_json(project)

    paths = tenant_results(report)["tenant_a"]["paths"]
    assert paths == ({"t1": "replay", "t2": "alembic"} if replay == "true"
                     else {"t1": "alembic", "t2": "alembic"})
    with db.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT * FROM tenant_a.seen").fetchall()
    assert rows == [("1234ms", "56s", "tenant_a, extensions")] * 2
    assert version_of(db, "tenant_a", "tm_version") == ["t2"]
    assert version_of(db, "tenant_a") is None


@pytest.mark.parametrize("reads", [False, True],
                         ids=["no-read", "with-a-checked-read"])
def test_an_enum_value_added_in_a_block_then_used_in_a_new_tenant(
        project, db, server_version, reads):
    project.app_factory = "call:tests.apps:main"
    project.write_ini()
    # With a checked read, create_tenant runs in a savepoint, where
    # PostgreSQL does not allow the new value: it runs again without.
    read = ('op.get_bind().execute(sa.text("SELECT 1")).scalar()'
            if reads else "")
    project.write_revision("tenant", "t1", None, f"""
        op.create_table("people", sa.Column("id", sa.Integer,
            primary_key=True), sa.Column("mood", sa.Enum("happy", "sad",
            name="mood")))
        {read}
        """)
    project.write_revision("tenant", "t2", "t1", """
        with op.get_context().autocommit_block():
            op.execute("ALTER TYPE mood ADD VALUE 'meh'")
        """)
    project.write_revision("tenant", "t3", "t2", """
        op.execute("INSERT INTO people (mood) VALUES ('meh')")
        """)
    create_schemas(db, "tenant_a")
    project.cli("upgrade", check=0)  # an existing tenant: blocks commit
    assert version_of(db, "tenant_a") == ["t3"]

    result = project.run("create-tenant", "tenant_new")
    if int(server_version) >= 170000:
        assert result.returncode == 0, result.stderr
    else:
        # One transaction cannot use the value it added: said, with what
        # to do instead.
        assert result.returncode == 1, result.stderr
        assert "spare_schemas" in result.stderr
        assert "Traceback" not in result.stderr
        project.write_ini(**{"tenantmigrate.spare_schemas": "1"})
        project.cli("fill-spares", check=0)
        project.run("create-tenant", "tenant_new", check=0)
    assert version_of(db, "tenant_new") == ["t3"]
    with db.connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT mood::text FROM tenant_new.people").scalar() == "meh"


@pytest.mark.parametrize("replay", ["true", "false"])
def test_a_revision_reading_with_a_server_side_cursor(project, db, replay):
    project.write_ini(**{"tenantmigrate.replay": replay})
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", """
        query = sa.text("SELECT id, title FROM notes ORDER BY id")
        rows = op.get_bind().execute(
            query.execution_options(yield_per=1)).fetchall()
        for id_, title in rows:
            op.execute(sa.text("UPDATE notes SET title = :t WHERE id = :i")
                       .bindparams(t=title * 2, i=id_))
        """)
    create_schemas(db, "tenant_a", "tenant_b")

    project.cli("upgrade", check=0)

    for tenant in ("tenant_a", "tenant_b"):
        assert titles(db, tenant) == ["aa", "bb"]


def test_revisions_through_alembic_run_side_by_side(project, db):
    """Alembic's op and context are per thread: two workers run two
    tenants' Alembic steps at once (each sees the other arrive), blocks
    with CREATE INDEX CONCURRENTLY included."""
    with db.begin() as connection:
        # A sequence: what one transaction takes, another sees at once.
        connection.exec_driver_sql("CREATE SEQUENCE public.arrivals")
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", """
        bind = op.get_bind()
        if current_schema := bind.execute(sa.text(
                "SELECT current_schema()")).scalar():
            if not current_schema.startswith("tenant_"):
                return  # capture, in its scratch schema: no partner
        bind.execute(sa.text("SELECT nextval('public.arrivals')"))
        partner = False
        for _ in range(100):
            partner = bind.execute(sa.text(
                "SELECT last_value >= 2 FROM public.arrivals")).scalar()
            if partner:
                break
            bind.execute(sa.text("SELECT pg_sleep(0.05)"))
        op.execute(sa.text("CREATE TABLE met AS SELECT :p AS partner")
                   .bindparams(p=partner))
        with op.get_context().autocommit_block():
            op.create_index("ix_title", "notes", ["title"],
                            postgresql_concurrently=True)
        """)
    create_schemas(db, "tenant_a", "tenant_b")

    project.cli("upgrade", "--workers", "2", check=0)

    with db.connect() as connection:
        for tenant in ("tenant_a", "tenant_b"):
            assert connection.exec_driver_sql(
                f"SELECT partner FROM {tenant}.met").scalar() is True
            assert index_is_valid(db, tenant, "ix_title") is True


def test_indexes_emitted_in_set_order_still_replay(project, db):
    project.write_revision("tenant", "t1", None, """
        op.create_table("wide",
            sa.Column("id", sa.Integer, primary_key=True),
            *[sa.Column(f"c{n}", sa.Integer) for n in range(8)],
            *[sa.Index(f"ix_wide_c{n}", f"c{n}") for n in range(8)])
        """)
    create_schemas(db, "tenant_a")

    report = upgrade_json(project)

    assert tenant_results(report)["tenant_a"]["paths"] == {"t1": "replay"}


@pytest.mark.parametrize("options", ["", ".execution_options(yield_per=1)"],
                         ids=["read", "server-side-cursor"])
def test_a_read_answering_differently_in_a_tenant(project, db, tmp_path,
                                                  options):
    """A revision reading rows replays, checked: in the tenant whose rows
    are those capture read it replays, in the one whose rows differ it
    runs through Alembic, and both end as plain Alembic leaves them. A
    server-side cursor's read (``yield_per``, one row fetched at a time)
    is checked the same way."""
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", f"""
        bind = op.get_bind()
        for id_, title in bind.execute(sa.text(
                "SELECT id, title FROM notes ORDER BY id"){options}):
            op.execute(sa.text("UPDATE notes SET title = :t WHERE id = :i")
                       .bindparams(t=f"{{title}}{{id_}}", i=id_))
        op.add_column("notes", sa.Column("extra", sa.Integer))
        """)
    plain = PlainAlembic(project, tmp_path)
    create_schemas(db, "tenant_a", "tenant_b", "plain_b")
    project.cli("upgrade", "tenant@t1", check=0)
    plain.upgrade("plain_b", "t1")
    with db.begin() as connection:
        for schema in ("tenant_b", "plain_b"):
            connection.exec_driver_sql(
                f"INSERT INTO {schema}.notes (title) VALUES ('c')")

    report = upgrade_json(project)
    plain.upgrade("plain_b", "heads")

    paths = {schema: result["paths"]
             for schema, result in tenant_results(report).items()}
    assert paths == {"tenant_a": {"t2": "replay"},
                     "tenant_b": {"t2": "alembic"}}
    assert titles(db, "tenant_a") == ["a1", "b2"]
    assert titles(db, "tenant_b") == ["a1", "b2", "c3"]
    assert_same(db, [("tenant_b", "plain_b")], "a read answering otherwise")


def test_a_row_count_the_revision_uses(project, db):
    """``result.rowcount`` of the revision's own UPDATE decides what it
    does next: replayed with the count checked per tenant."""
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", """
        changed = op.get_bind().execute(sa.text(
            "UPDATE notes SET title = upper(title) WHERE title < 'c'"
            )).rowcount
        op.execute(f"COMMENT ON TABLE notes IS '{changed} changed'")
        """)
    create_schemas(db, "tenant_a", "tenant_b")
    project.cli("upgrade", "tenant@t1", check=0)
    with db.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO tenant_b.notes (title) VALUES ('bb')")

    report = upgrade_json(project)

    paths = {schema: result["paths"]
             for schema, result in tenant_results(report).items()}
    assert paths == {"tenant_a": {"t2": "replay"},
                     "tenant_b": {"t2": "alembic"}}
    with db.connect() as connection:
        comments = {schema: connection.exec_driver_sql(
            f"SELECT obj_description('{schema}.notes'::regclass)").scalar()
            for schema in ("tenant_a", "tenant_b")}
    assert comments == {"tenant_a": "2 changed", "tenant_b": "3 changed"}


def test_a_read_that_writes_is_not_replayed(project, db):
    """A read with a side effect (nextval) is not run again to check it:
    the revision runs through Alembic, and the sequence moves once."""
    project.write_revision("tenant", "t1", None, NOTES + """
    op.execute("CREATE SEQUENCE counter")
    """)
    project.write_revision("tenant", "t2", "t1", """
        value = op.get_bind().execute(
            sa.text("SELECT nextval('counter')")).scalar()
        op.execute(f"COMMENT ON TABLE notes IS 'took {value}'")
        """)
    create_schemas(db, "tenant_a")

    report = upgrade_json(project)

    assert tenant_results(report)["tenant_a"]["paths"]["t2"] == "alembic"
    with db.connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT last_value FROM tenant_a.counter").scalar() == 1
        assert connection.exec_driver_sql(
            "SELECT obj_description('tenant_a.notes'::regclass)"
        ).scalar() == "took 1"


def test_a_new_tenant_reading_a_shared_table_that_changed(project, db):
    """An app process captures once; a tenant revision reads a shared
    table, which changes before the next sign-up: that sign-up runs the
    revision through Alembic in its request's transaction (a savepoint),
    and reads what the table holds now."""
    project.write_revision("shared", "s1", None, """
        op.create_table("plans", sa.Column("name", sa.Text))
        op.execute("INSERT INTO plans VALUES ('basic')")
        """)
    project.write_revision("tenant", "t1", None, """
        names = op.get_bind().execute(sa.text(
            "SELECT name FROM public.plans ORDER BY name")).scalars().all()
        op.create_table("limits", sa.Column("plan", sa.Text))
        for name in names:
            op.execute(sa.text("INSERT INTO limits VALUES (:n)")
                       .bindparams(n=name))
        """)
    project.cli("upgrade", check=0)
    migrator = project.migrator()
    try:
        with db.begin() as connection:
            create_tenant(migrator, "tenant_a", connection=connection)
        with db.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO public.plans VALUES ('pro')")
        with db.begin() as connection:
            create_tenant(migrator, "tenant_b", connection=connection)
            connection.exec_driver_sql("SELECT 1")  # still usable
        create_tenant(migrator, "tenant_c")  # captured again: replays
    finally:
        migrator.close()

    with db.connect() as connection:
        limits = {schema: connection.exec_driver_sql(
            f"SELECT plan FROM {schema}.limits ORDER BY plan"
        ).scalars().all() for schema in ("tenant_a", "tenant_b", "tenant_c")}
    assert limits == {"tenant_a": ["basic"], "tenant_b": ["basic", "pro"],
                      "tenant_c": ["basic", "pro"]}


def test_catalog_reads_replay_and_unordered_reads_are_checked(project, db):
    """An inspector's catalog reads return rows in no defined order (the
    catalog's own), and OIDs, another in each schema: their check leaves
    ``oid`` columns out and hashes the rows in any order, so they replay
    in a tenant whose catalog rows lie otherwise. A read of the
    tenant's rows without ORDER BY is checked in order: a revision may
    use its first row."""
    project.write_revision("tenant", "t1", None, NOTES + """
    op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("note_id", sa.Integer, sa.ForeignKey("notes.id")),
        sa.Column("name", sa.Text, unique=True))
    """)
    project.write_revision("tenant", "t2", "t1", """
        bind = op.get_bind()
        inspector = sa.inspect(bind)
        # Each passes the table's OID on from one catalog query to the
        # next; the foreign key's rows name the schema it is in.
        for unique in inspector.get_unique_constraints("tags"):
            op.drop_constraint(unique["name"], "tags", type_="unique")
        for key in inspector.get_foreign_keys("tags"):
            op.drop_constraint(key["name"], "tags", type_="foreignkey")
            op.create_foreign_key(key["name"] + "_x", "tags",
                key["referred_table"], key["constrained_columns"],
                key["referred_columns"], ondelete="CASCADE")
        names = sorted(inspector.get_table_names())
        # OIDs differ in each schema: left out of the check.
        oids = dict(bind.execute(sa.text(
            "SELECT c.relname, c.oid FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema()")).all())
        assert sorted(oids)[-1] == "tags_pkey"
        op.execute(f"COMMENT ON TABLE tags IS 'tables: {' '.join(names)}'")
        """)
    project.write_revision("tenant", "t3", "t2", """
        first = op.get_bind().execute(
            sa.text("SELECT title FROM notes")).first()[0]
        op.execute(f"COMMENT ON TABLE notes IS 'first read: {first}'")
        """)
    create_schemas(db, "tenant_a", "tenant_b")
    project.cli("upgrade", "tenant@t1", check=0)
    with db.begin() as connection:
        # tenant_b's catalog row of notes, and its row 'a', written anew:
        # each now lies after the other ones.
        connection.exec_driver_sql(
            "ALTER TABLE tenant_b.notes RENAME TO notes_x; "
            "ALTER TABLE tenant_b.notes_x RENAME TO notes; "
            "UPDATE tenant_b.notes SET title = title WHERE title = 'a'")

    report = upgrade_json(project)

    paths = {schema: result["paths"]
             for schema, result in tenant_results(report).items()}
    assert paths == {"tenant_a": {"t2": "replay", "t3": "replay"},
                     "tenant_b": {"t2": "replay", "t3": "alembic"}}
    with db.connect() as connection:
        for schema, first in (("tenant_a", "a"), ("tenant_b", "b")):
            assert connection.exec_driver_sql(
                f"SELECT obj_description('{schema}.tags'::regclass)"
            ).scalar() == "tables: alembic_version notes tags"
            assert connection.exec_driver_sql(
                "SELECT string_agg(conname || ' ' || confrelid::regclass::text"
                " || ' ' || confdeltype::text, ',') FROM pg_constraint WHERE "
                f"conrelid = '{schema}.tags'::regclass AND contype IN "
                f"('u', 'f')").scalar() == (
                    f"tags_note_id_fkey_x {schema}.notes c")
            assert connection.exec_driver_sql(
                f"SELECT obj_description('{schema}.notes'::regclass)"
            ).scalar() == f"first read: {first}"


def test_a_catalog_read_made_once_per_process_replays(project, db):
    """SQLAlchemy looks some catalog facts up once and keeps them (pg_am's
    access methods): the first capture reads, the second does not. A
    catalog read is a read; the revision still replays."""
    project.write_revision("tenant", "t1", None, NOTES)
    path = project.write_revision("tenant", "t2", "t1", """
        if not KEPT:
            KEPT.extend(op.get_bind().execute(sa.text(
                "SELECT amname FROM pg_catalog.pg_am ORDER BY 1")).scalars())
        op.execute(f"COMMENT ON TABLE notes IS '{len(KEPT) > 0}'")
        """)
    with open(path, "a") as f:
        f.write("\nKEPT = []\n")
    create_schemas(db, "tenant_a", "tenant_b")

    report = upgrade_json(project)

    paths = {schema: result["paths"]
             for schema, result in tenant_results(report).items()}
    assert paths == {"tenant_a": {"t1": "replay", "t2": "replay"},
                     "tenant_b": {"t1": "replay", "t2": "replay"}}
    with db.connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT obj_description('tenant_b.notes'::regclass)"
        ).scalar() == "True"


def test_a_read_answering_otherwise_after_an_autocommit_block(project, db):
    """A revision with an autocommit block commits as it ends; a checked
    read answering otherwise later in the range then runs that revision
    through Alembic from there, and never builds the block's index again
    (which failed with 'already exists' in every tenant of a real
    history)."""
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", """
        with op.get_context().autocommit_block():
            op.create_index("ix_notes_title", "notes", ["title"],
                            postgresql_concurrently=True)
        """)
    project.write_revision("tenant", "t3", "t2", """
        n = op.get_bind().execute(sa.text("SELECT count(*) FROM notes"))
        op.execute(f"COMMENT ON TABLE notes IS '{n.scalar()} notes'")
        """)
    create_schemas(db, "tenant_a", "tenant_b")
    project.cli("upgrade", "tenant@t1", check=0)
    with db.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO tenant_b.notes (title) VALUES ('c')")

    report = upgrade_json(project)

    paths = {schema: result["paths"]
             for schema, result in tenant_results(report).items()}
    assert paths["tenant_a"] == {"t2": "replay", "t3": "replay"}
    assert paths["tenant_b"]["t3"] == "alembic"
    with db.connect() as connection:
        for schema, count in (("tenant_a", 2), ("tenant_b", 3)):
            assert connection.exec_driver_sql(
                f"SELECT obj_description('{schema}.notes'::regclass)"
            ).scalar() == f"{count} notes"
            assert connection.exec_driver_sql(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = "
                f"'{schema}' AND indexname = 'ix_notes_title'").scalar() == 1
    assert version_of(db, "tenant_b") == ["t3"]


def test_a_check_failing_in_most_tenants_is_learned(project, db, caplog):
    """A revision whose read answers otherwise in tenant after tenant
    (rows of their own) costs each of them a second try; after three, the
    run's later tenants run it through Alembic at once."""
    project.write_ini(**{"tenantmigrate.workers": "1"})
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", """
        n = op.get_bind().execute(sa.text("SELECT count(*) FROM notes"))
        op.execute(f"COMMENT ON TABLE notes IS '{n.scalar()} notes'")
        """)
    tenants = [f"tenant_{n}" for n in range(6)]
    create_schemas(db, *tenants)
    project.cli("upgrade", "tenant@t1", check=0)
    with db.begin() as connection:
        for tenant in tenants:
            connection.exec_driver_sql(
                f"INSERT INTO {tenant}.notes (title) VALUES ('c')")

    with caplog.at_level("INFO", logger="pyramid_tenantmigrate"):
        report = upgrade_json(project)

    retried = [r for r in caplog.records if "answers otherwise" in
               r.getMessage()]
    assert len(retried) == 3
    paths = {schema: result["paths"]
             for schema, result in tenant_results(report).items()}
    assert paths == {tenant: {"t2": "alembic"} for tenant in tenants}
    with db.connect() as connection:
        assert {connection.exec_driver_sql(
            f"SELECT obj_description('{t}.notes'::regclass)").scalar()
            for t in tenants} == {"3 notes"}


@pytest.mark.parametrize("how", ["literal", "parameter"])
def test_an_oid_written_back_into_sql(project, db, how):
    """A revision reads a table's OID and uses it in its next query: as a
    bound parameter it is replayed as the table's name (the tenant's own
    table), written into the SQL by the revision it cannot replay; either
    way each tenant does what plain Alembic does there."""
    where = ("conrelid = :t" if how == "parameter" else "conrelid = {oid}")
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", f"""
        bind = op.get_bind()
        oid = bind.execute(sa.text("SELECT 'notes'::regclass::oid")).scalar()
        n = bind.execute(sa.text(
            f"SELECT count(*) FROM pg_constraint WHERE {where} "
            "AND contype = 'u'"), {{"t": oid}}).scalar()
        if not n:
            op.create_unique_constraint("uq_title", "notes", ["title"])
        """)
    create_schemas(db, "tenant_a", "tenant_b")
    project.cli("upgrade", "tenant@t1", check=0)
    with db.begin() as connection:
        connection.exec_driver_sql(
            "ALTER TABLE tenant_b.notes "
            "ADD CONSTRAINT uq_title UNIQUE (title)")

    report = upgrade_json(project)

    paths = {schema: result["paths"]["t2"]
             for schema, result in tenant_results(report).items()}
    assert paths == ({"tenant_a": "replay", "tenant_b": "alembic"}
                     if how == "parameter" else
                     {"tenant_a": "alembic", "tenant_b": "alembic"})
    with db.connect() as connection:
        for schema in ("tenant_a", "tenant_b"):
            assert connection.exec_driver_sql(
                "SELECT count(*) FROM pg_constraint WHERE conrelid = "
                f"'{schema}.notes'::regclass AND contype = 'u'").scalar() == 1


def test_a_read_after_an_autocommit_block_is_not_replayed(project, db):
    """A tenant where it answered otherwise could not be rolled back past
    the block's commit: such a revision runs through Alembic."""
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", """
        with op.get_context().autocommit_block():
            op.create_index("ix_title", "notes", ["title"],
                            postgresql_concurrently=True)
        n = op.get_bind().execute(sa.text("SELECT count(*) FROM notes"))
        op.execute(f"COMMENT ON TABLE notes IS '{n.scalar()}'")
        """)
    create_schemas(db, "tenant_a")
    report = upgrade_json(project)
    assert tenant_results(report)["tenant_a"]["paths"]["t2"] == "alembic"


def test_a_system_oid_read_is_checked(project, db):
    """A built-in type's OID means the same everywhere: it is part of the
    check (only OIDs of objects made in the database are left out)."""
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", """
        kind = op.get_bind().execute(sa.text(
            "SELECT atttypid FROM pg_catalog.pg_attribute WHERE attrelid = "
            "'notes'::regclass AND attname = 'title'")).scalar()
        if kind == 25:  # text
            op.execute("COMMENT ON COLUMN notes.title IS 'text'")
        """)
    create_schemas(db, "tenant_a", "tenant_b")
    project.cli("upgrade", "tenant@t1", check=0)
    with db.begin() as connection:
        connection.exec_driver_sql(
            "ALTER TABLE tenant_b.notes ALTER title TYPE varchar(50)")

    report = upgrade_json(project)

    paths = {schema: result["paths"]["t2"]
             for schema, result in tenant_results(report).items()}
    assert paths == {"tenant_a": "replay", "tenant_b": "alembic"}
    with db.connect() as connection:
        comments = [connection.exec_driver_sql(
            f"SELECT col_description('{s}.notes'::regclass, 2)").scalar()
            for s in ("tenant_a", "tenant_b")]
    assert comments == ["text", None]


def test_the_first_row_of_a_catalog_read_keeps_its_order(project, db):
    """A catalog read is checked in any order, unless the revision took
    fewer rows than it returned (``.scalar()``, ``.first()``): which came
    first is then what it used, and a tenant whose catalog rows lie in
    another order runs it through Alembic."""
    project.write_revision("tenant", "t1", None, NOTES + """
    op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True))
    """)
    project.write_revision("tenant", "t2", "t1", """
        first = op.get_bind().execute(sa.text(
            "SELECT relname FROM pg_catalog.pg_class WHERE relnamespace = "
            "current_schema()::regnamespace AND relkind = 'r' "
            "AND relname <> 'alembic_version'")).scalar()
        op.execute(f"COMMENT ON TABLE tags IS 'first: {first}'")
        """)
    create_schemas(db, "tenant_a", "tenant_b")
    project.cli("upgrade", "tenant@t1", check=0)
    with db.begin() as connection:
        connection.exec_driver_sql(
            "ALTER TABLE tenant_b.notes RENAME TO notes_x; "
            "ALTER TABLE tenant_b.notes_x RENAME TO notes")

    report = upgrade_json(project)

    paths = {schema: result["paths"]["t2"]
             for schema, result in tenant_results(report).items()}
    assert paths == {"tenant_a": "replay", "tenant_b": "alembic"}
    with db.connect() as connection:
        comments = [connection.exec_driver_sql(
            f"SELECT obj_description('{s}.tags'::regclass)").scalar()
            for s in ("tenant_a", "tenant_b")]
    assert comments == ["first: notes", "first: tags"]


def test_a_backfill_in_batches_inside_an_autocommit_block(project, db):
    """The usual large backfill: batches in an autocommit block until one
    changes no row. Where the first batch changes nothing, as in capture,
    it replays; where it finds rows, the batch is rolled back with its
    check and the revision runs through Alembic from its start."""
    project.write_revision("tenant", "t1", None, NOTES + """
    op.add_column("notes", sa.Column("slug", sa.Text))
    op.execute("UPDATE notes SET slug = title")
    """)
    project.write_revision("tenant", "t2", "t1", """
        batch = sa.text("UPDATE notes SET slug = upper(title) WHERE id IN "
                        "(SELECT id FROM notes WHERE slug IS NULL LIMIT 1)")
        with op.get_context().autocommit_block():
            while op.get_bind().execute(batch).rowcount > 0:
                pass
            while op.get_bind().execute(sa.text(
                    "DELETE FROM notes WHERE title = ''")).rowcount > 0:
                pass
        """)
    create_schemas(db, "tenant_a", "tenant_b")
    project.cli("upgrade", "tenant@t1", check=0)
    with db.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO tenant_b.notes (title) VALUES ('c'), ('d')")

    report = upgrade_json(project)

    paths = {schema: result["paths"]["t2"]
             for schema, result in tenant_results(report).items()}
    assert paths == {"tenant_a": "replay", "tenant_b": "alembic"}
    with db.connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT string_agg(slug, ',' ORDER BY id) FROM tenant_b.notes"
        ).scalar() == "a,b,C,D"
    assert version_of(db, "tenant_b") == ["t2"]


def test_numbers_beyond_any_oid_are_values(project, db):
    """A bound number too large for an OID (a time in milliseconds) is a
    value, never looked up as one (which failed the revision in capture)."""
    project.write_revision("tenant", "t1", None, NOTES + """
    op.add_column("notes", sa.Column("at", sa.BigInteger))
    """)
    project.write_revision("tenant", "t2", "t1", """
        op.get_bind().execute(sa.text("UPDATE notes SET at = :at"),
                              {"at": 1795672532349})
        """)
    create_schemas(db, "tenant_a")
    report = upgrade_json(project)
    assert tenant_results(report)["tenant_a"]["paths"]["t2"] == "replay"
    with db.connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT DISTINCT at FROM tenant_a.notes").scalar() == 1795672532349


@pytest.mark.parametrize("seen_by_capture", [True, False],
                         ids=["in-capture", "data-dependent"])
def test_an_enum_made_by_a_checked_revision_then_given_a_value(
        project, db, seen_by_capture, server_version):
    if int(server_version) < 170000:
        pytest.skip("before PostgreSQL 17 a value cannot be used in the "
                    "transaction that added it, under plain Alembic too")
    # t2 reads (checked: replayed after a savepoint, where it could run
    # through Alembic in place) and makes an enum type; t3 adds a value in
    # the transaction, which t4 uses. PostgreSQL refuses a value added to a
    # type made inside a subtransaction (55P04). When capture sees the
    # ADD VALUE, the program takes no savepoint; when only the tenant's
    # rows make t3 add it, the tenant runs again without savepoints.
    project.write_revision("tenant", "t1", None, NOTES)
    project.write_revision("tenant", "t2", "t1", """
        count = op.get_bind().execute(
            sa.text("SELECT count(*) FROM notes WHERE title = 'a'")).scalar()
        op.create_table("moods",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("mood", sa.Enum("sad", "happy", name="mood")))
        op.execute(f"COMMENT ON TABLE moods IS '{count} a'")
        """)
    condition = "True" if seen_by_capture else (
        "op.get_bind().execute(sa.text("
        "\"SELECT count(*) FROM notes WHERE title = 'x'\")).scalar()")
    project.write_revision("tenant", "t3", "t2", f"""
        if {condition}:
            op.execute("ALTER TYPE mood ADD VALUE 'meh'")
        """)
    project.write_revision("tenant", "t4", "t3", """
        op.execute("INSERT INTO moods (mood) SELECT 'meh' FROM pg_enum "
                   "WHERE enumlabel = 'meh' AND enumtypid = 'mood'::regtype")
        """)
    create_schemas(db, "tenant_a")
    upgrade_json(project, "tenant@t1")
    with db.begin() as connection:  # a row capture does not see
        connection.exec_driver_sql(
            "INSERT INTO tenant_a.notes (title) VALUES ('x')")

    report = upgrade_json(project)

    assert tenant_results(report)["tenant_a"]["status"] == "done"
    with db.connect() as connection:
        moods = connection.exec_driver_sql(
            "SELECT mood::text FROM tenant_a.moods").scalars().all()
    assert moods == ["meh"]
