"""doctor: tenants whose tables are not what their version table says.

A fleet is migrated, then changed by hand the way fleets drift (a hotfix,
a clone of a schema that had one, a concurrent index build cut short, a
version stamped over missing work); doctor must name exactly those tenants
and what differs, compare tenants behind the head with their own revision,
and leave nothing behind.
"""
import json

import pytest
import sqlalchemy as sa

from pyramid_tenantmigrate import commands, drift
from pyramid_tenantmigrate.errors import CatalogUnreadable

from .conftest import create_schemas, version_of


def write_revisions(project):
    """s1 (accounts); t1 notes, t2 notes.pinned + index; t3 a table with
    an enum, a column with a default, a view whose alias is a tenant's
    name; t4 a unique index built CONCURRENTLY in an autocommit block."""
    project.write_standard_revisions()
    project.write_revision("tenant", "t3", "t2", """
        op.create_table("tags",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("kind", sa.Enum("a", "b", name="tag_kind"),
                      nullable=False))
        op.add_column("notes", sa.Column("slug", sa.String(100),
                                         server_default="x"))
        op.execute("CREATE VIEW note_titles AS "
                   "SELECT a.id, a.title FROM notes a")
        """, """
        op.execute("DROP VIEW note_titles")
        op.drop_column("notes", "slug")
        op.drop_table("tags")
        op.execute("DROP TYPE tag_kind")
        """)
    project.write_revision("tenant", "t4", "t3", """
        with op.get_context().autocommit_block():
            op.create_index("ix_notes_title", "notes", ["title"],
                            unique=True, postgresql_concurrently=True)
        """, 'op.drop_index("ix_notes_title", table_name="notes")')


def in_tenant(db, schema, sql):
    with db.begin() as connection:
        connection.exec_driver_sql(f'SET LOCAL search_path TO "{schema}"')
        connection.exec_driver_sql(sql)


#: Drift made by hand, and what doctor must say about it.
DRIFT = {
    "tenant_dropped_1": ("ALTER TABLE notes DROP COLUMN slug",
                         ["column notes.slug: missing"]),
    # The same hotfix in a second tenant: one group of two.
    "tenant_dropped_2": ("ALTER TABLE notes DROP COLUMN slug",
                         ["column notes.slug: missing"]),
    "tenant_retyped": (
        "ALTER TABLE notes ALTER COLUMN slug TYPE text",
        ["column notes.slug: type text, expected character varying(100)"]),
    "tenant_default": (
        "ALTER TABLE notes ALTER COLUMN pinned SET DEFAULT true",
        ["column notes.pinned: default true, expected false"]),
    "tenant_no_index": ("DROP INDEX ix_notes_pinned",
                        ["index ix_notes_pinned: missing"]),
    "tenant_hotfix": ("CREATE TABLE hotfix_tmp (id int PRIMARY KEY, x text)",
                      ["table hotfix_tmp: not in the migrations"]),
    "tenant_enum": ("ALTER TYPE tag_kind ADD VALUE 'c'",
                    ["type tag_kind: definition {a,b,c}, expected {a,b}"]),
    "tenant_trigger": (
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql "
        "AS $$BEGIN RETURN NEW; END$$; "
        "CREATE TRIGGER touch_notes BEFORE UPDATE ON notes "
        "FOR EACH ROW EXECUTE FUNCTION touch()",
        ["trigger notes.touch_notes: not in the migrations",
         "function touch(): not in the migrations"]),
}


@pytest.fixture
def fleet(project, db):
    """Tenants at the head, some drifting; tenant_stamped says t4 but
    holds t2; tenant_old is at t2, as t2 builds it; tenant_old_drift is at
    t1 with an index of its own; tenant_invalid's unique index was rebuilt
    CONCURRENTLY over duplicates, and left INVALID."""
    write_revisions(project)
    at_head = ["tenant_ok_1", "tenant_ok_2", "tenant_invalid", *DRIFT]
    older = ["tenant_stamped", "tenant_old", "tenant_old_drift"]
    create_schemas(db, *at_head, *older)
    skip = [flag for name in older for flag in ("--exclude-tenant", name)]
    project.cli("upgrade", *skip, check=0)
    project.cli("upgrade", "tenant@t2", "--tenant", "tenant_stamped",
                "--tenant", "tenant_old", check=0)
    project.cli("upgrade", "tenant@t1", "--tenant", "tenant_old_drift",
                check=0)
    project.cli("stamp", "tenant@t4", "--tenant", "tenant_stamped", "--yes",
                check=0)
    for schema, (sql, _) in DRIFT.items():
        in_tenant(db, schema, sql)
    in_tenant(db, "tenant_old_drift",
              "CREATE INDEX ix_notes_by_title ON notes (title)")
    in_tenant(db, "tenant_invalid", "DROP INDEX ix_notes_title; "
              "INSERT INTO notes (title) VALUES ('same'), ('same')")
    engine = sa.create_engine(project.database_url,
                              isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        with pytest.raises(sa.exc.IntegrityError):
            connection.exec_driver_sql(
                'CREATE UNIQUE INDEX CONCURRENTLY ix_notes_title '
                'ON "tenant_invalid".notes (title)')
    engine.dispose()
    return project


def scratch_schemas(db):
    with db.connect() as connection:
        return connection.execute(sa.text(
            "SELECT nspname FROM pg_namespace "
            "WHERE nspname LIKE 'tenantmigrate-%'")).scalars().all()


def test_doctor_names_exactly_the_drifting_tenants_and_how(fleet, db):
    report = commands.doctor(fleet.migrator())
    found = {t.schema: t for t in report.tenants}
    assert len(found) == 14

    for schema, (_, differences) in DRIFT.items():
        assert found[schema].status == "drift", schema
        assert [d["text"] for d in found[schema].differences] == \
            differences, schema
    assert [d["text"] for d in found["tenant_stamped"].differences] == [
        "table tags: missing",
        "view note_titles: missing",
        "column notes.slug: missing",
        "index ix_notes_title: missing",
        "type tag_kind: missing",
    ]
    assert found["tenant_stamped"].revision == ("t4",)
    assert [d["text"] for d in found["tenant_invalid"].differences] == [
        "index ix_notes_title: state invalid, expected valid"]
    # Behind the head: compared with what its own revision builds.
    assert found["tenant_old"].status == "ok"
    assert found["tenant_old"].revision == ("t2",)
    assert found["tenant_old"].behind == 2
    assert found["tenant_old_drift"].status == "drift"
    assert [d["text"] for d in found["tenant_old_drift"].differences] == [
        "index ix_notes_by_title: not in the migrations"]
    assert {s for s, t in found.items() if t.status == "ok"} == {
        "tenant_ok_1", "tenant_ok_2", "tenant_old"}
    assert not report.ok

    difference = found["tenant_retyped"].differences[0]
    assert difference == {
        "kind": "column", "name": "notes.slug", "problem": "differs",
        "field": "type", "found": "text",
        "expected": "character varying(100)",
        "text": "column notes.slug: type text, expected character "
                "varying(100)"}
    assert scratch_schemas(db) == []


def test_cli_groups_identical_drift_and_exits_1(fleet, db):
    result = fleet.cli("doctor", check=1)
    out = result.stdout
    assert ("drift: 2 tenants at t4 (head): tenant_dropped_1, "
            "tenant_dropped_2\n  column notes.slug: missing\n") in out
    assert ("drift: 1 tenant at t1 (behind by 3): tenant_old_drift\n"
            "  index ix_notes_by_title: not in the migrations") in out
    assert ("drift: 1 tenant at t4 (head): tenant_hotfix\n"
            "  table hotfix_tmp: not in the migrations") in out
    assert out.rstrip().endswith(
        "tenants: 14 checked against what their revision builds (tenant "
        "head t4): 3 ok (1 behind the head, each compared with its own "
        "revision), 11 drift")
    assert "tenant_ok_1" not in out
    assert result.stderr == ""
    assert scratch_schemas(db) == []


def test_json(fleet):
    result = fleet.cli("doctor", "--json", check=1)
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["head"] == ["t4"]
    assert document["counts"] == {"ok": 3, "drift": 11}
    tenants = {t["schema"]: t for t in document["tenants"]}
    assert tenants["tenant_ok_1"] == {
        "schema": "tenant_ok_1", "status": "ok", "revision": ["t4"],
        "behind": 0, "differences": [], "note": None}
    assert tenants["tenant_default"]["differences"] == [{
        "kind": "column", "name": "notes.pinned", "problem": "differs",
        "field": "default", "found": "true", "expected": "false",
        "text": "column notes.pinned: default true, expected false"}]
    groups = document["groups"]
    assert groups[0] == {
        "status": "drift", "revision": ["t4"],
        "tenants": ["tenant_dropped_1", "tenant_dropped_2"],
        "differences": ["column notes.slug: missing"]}
    assert sum(len(g["tenants"]) for g in groups) == 11


def test_one_tenant_full_diff_and_selection(fleet):
    result = fleet.cli("doctor", "--tenant", "tenant_stamped", check=1)
    assert result.stdout.splitlines() == [
        "drift: 1 tenant at t4 (head): tenant_stamped",
        "  table tags: missing",
        "  view note_titles: missing",
        "  column notes.slug: missing",
        "  index ix_notes_title: missing",
        "  type tag_kind: missing",
        "tenants: 1 checked against what their revision builds (tenant "
        "head t4): 1 drift",
    ]
    fleet.cli("doctor", "--tenant", "tenant_ok_1", "--tenant", "tenant_old",
              check=0)
    drifting = [name for name in DRIFT] + ["tenant_stamped",
                                           "tenant_old_drift",
                                           "tenant_invalid"]
    clean = fleet.cli("doctor", *[a for name in drifting
                                  for a in ("--exclude-tenant", name)],
                      check=0)
    assert clean.stdout.strip() == (
        "tenants: 3 checked against what their revision builds (tenant "
        "head t4): 3 ok (1 behind the head, each compared with its own "
        "revision)")
    listing = fleet.root + "/tenants.txt"
    with open(listing, "w") as f:
        f.write("tenant_ok_2\ntenant_enum\n")
    listed = fleet.cli("doctor", "--tenants-from", listing, check=1)
    assert "1 ok, 1 drift" in listed.stdout
    # Shards split the fleet: together they check every tenant once.
    checked = []
    for shard in ("1/2", "2/2"):
        document = json.loads(fleet.cli("doctor", "--shard", shard,
                                        "--json").stdout)
        checked += [t["schema"] for t in document["tenants"]]
    assert sorted(checked) == sorted(
        t.schema for t in commands.doctor(fleet.migrator()).tenants)


def test_a_clean_fleet_exits_0(project, db):
    write_revisions(project)
    create_schemas(db, "tenant_a", "tenant_b", "tenant_c")
    project.cli("upgrade", check=0)
    project.cli("downgrade", "tenant@t1", "--tenant", "tenant_c", check=0)
    result = project.cli("doctor", check=0)
    assert result.stdout.strip() == (
        "tenants: 3 checked against what their revision builds (tenant "
        "head t4): 3 ok (1 behind the head, each compared with its own "
        "revision)")
    assert json.loads(project.cli("doctor", "--json", check=0).stdout)[
        "counts"] == {"ok": 3}
    assert scratch_schemas(db) == []


def test_hostile_and_odd_names(project, db):
    """Names from the tenant source: a keyword (always quoted), one equal
    to the view's alias (``a.id`` must not be taken for the schema's
    name), one PostgreSQL would fold (rejected, exit 1), one at an unknown
    revision, one the source lists but the database lacks."""
    write_revisions(project)
    create_schemas(db, "user", "a", "tenant_x", "Tenant_Upper")
    project.write_ini(**{
        "tenantmigrate.tenant_schema_prefix": None,
        "tenantmigrate.tenant_schemas_query":
            "SELECT unnest(ARRAY['user', 'a', 'tenant_x', 'Tenant_Upper', "
            "'tenant_gone'])"})
    project.cli("upgrade", "--exclude-tenant", "tenant_gone", check=1)
    assert version_of(db, "a") == ["t4"]
    in_tenant(db, "tenant_x", "UPDATE alembic_version SET version_num = "
              "'zzz'")
    in_tenant(db, "user", "ALTER TABLE notes ADD COLUMN extra int")

    result = project.cli("doctor", "--json", check=1)
    document = json.loads(result.stdout)
    tenants = {t["schema"]: t for t in document["tenants"]}
    assert tenants["a"]["status"] == "ok"
    assert tenants["user"]["status"] == "drift"
    assert [d["text"] for d in tenants["user"]["differences"]] == [
        "column notes.extra: not in the migrations"]
    assert tenants["tenant_x"]["status"] == "unknown-revision"
    assert tenants["tenant_gone"]["status"] == "missing"
    assert list(document["rejected"]) == ["Tenant_Upper"]

    text = project.cli("doctor", check=1).stdout
    assert "rejected 'Tenant_Upper': use lower-case ASCII letters" in text
    assert ("unknown-revision: 1 tenant at zzz: tenant_x\n  its version "
            "table names a revision the migrations do not have") in text
    assert "missing: 1 tenant: tenant_gone\n  the schema does not exist" in (
        text)
    assert scratch_schemas(db) == []


def test_a_revision_that_cannot_be_built_leaves_its_tenants_unchecked(
        project, db):
    write_revisions(project)
    create_schemas(db, "tenant_a", "tenant_b")
    project.cli("upgrade", check=0)
    project.cli("downgrade", "tenant@t2", "--tenant", "tenant_b", check=0)
    # t3 now fails in a fresh schema (a data migration needing rows, say).
    project.write_revision("tenant", "t3", "t2", """
        op.execute("SELECT 1/0")
        """)
    report = commands.doctor(project.migrator())
    found = {t.schema: t for t in report.tenants}
    assert found["tenant_b"].status == "ok"
    assert found["tenant_a"].status == "unchecked"
    assert "could not build revision t4 in a scratch schema" in (
        found["tenant_a"].note)
    assert "division by zero" in found["tenant_a"].note
    assert not report.ok
    assert scratch_schemas(db) == []


@pytest.mark.parametrize("args, message", [
    (["--shard", "3/2"], "invalid shard '3/2'"),
    (["--tenant", "Tenant-A"], "invalid tenant name 'Tenant-A'"),
    (["--tenant", "tenant_nobody"], "unknown tenant(s): tenant_nobody"),
    (["--tenants-from", "/nonexistent/list"],
     "cannot read --tenants-from /nonexistent/list"),
    (["--workers", "2"], "unrecognized arguments: --workers"),
    (["tenant_a"], "doctor takes one argument"),
])
def test_bad_usage_exits_2_without_traceback(project, db, args, message):
    write_revisions(project)
    create_schemas(db, "tenant_a")
    project.cli("upgrade", check=0)
    if args == ["tenant_a"]:
        args = ["tenant_a", "tenant_b"]
    result = project.cli("doctor", *args, check=2)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") <= 3


def test_tenants_split_over_workers_read_the_same(fleet, monkeypatch):
    """Past PARALLEL_FROM tenants a worker, each worker's connection
    checks its share; the outcome is the same, whether the tenants that
    differ are read straight away or grouped by the server first."""
    alone = {t.schema: (t.status, t.differences)
             for t in commands.doctor(fleet.migrator()).tenants}
    monkeypatch.setattr(drift, "PARALLEL_FROM", 3)
    migrator = fleet.migrator(**{"tenantmigrate.workers": "4"})
    shared = {t.schema: (t.status, t.differences)
              for t in commands.doctor(migrator).tenants}
    assert shared == alone
    # Past READ_DIRECTLY drifting tenants a worker, the server groups
    # them first: the same outcome.
    monkeypatch.setattr(drift, "READ_DIRECTLY", 0)
    grouped = {t.schema: (t.status, t.differences)
               for t in commands.doctor(migrator).tenants}
    assert grouped == alone


def test_a_catalog_read_that_fails_is_read_again(project, db):
    """The catalog functions may fail when a tenant changes under them:
    the read is made again, up to three times, then named."""
    migrator = project.migrator()
    attempts = []

    def read(connection, failures):
        attempts.append(1)
        divisor = 0 if len(attempts) <= failures else 1
        return connection.exec_driver_sql(f"SELECT 1 / {divisor}").scalar()

    with migrator.connect() as connection:
        assert drift.read_only(connection, lambda: read(connection, 2)) == 1
        assert len(attempts) == 3
        attempts.clear()
        with pytest.raises(CatalogUnreadable, match="division by zero"):
            drift.read_only(connection, lambda: read(connection, 3))
        assert len(attempts) == 3


#: Foreign keys and checks in every form doctor writes from the catalog
#: or once per distinct check: what it reads must be what
#: pg_get_constraintdef writes for each.
CONSTRAINTS = """
CREATE TABLE public.plans (id int PRIMARY KEY, code text UNIQUE);
CREATE TABLE "tenant_q"."Odd Table" (
    "Weird Id" int, b int, c int, PRIMARY KEY ("Weird Id", b));
CREATE TABLE tenant_q.things (
    id int PRIMARY KEY,
    parent_id int REFERENCES tenant_q.things,
    plan_id int REFERENCES public.plans ON DELETE SET NULL,
    plan_code text REFERENCES public.plans (code) MATCH FULL
        ON UPDATE CASCADE ON DELETE RESTRICT,
    x int DEFAULT 0, y int DEFAULT 0,
    total int GENERATED ALWAYS AS (x * 2 + y) STORED,
    label text DEFAULT 'a' || 'b',
    quantity int CONSTRAINT ck_quantity CHECK (quantity > 0),
    CONSTRAINT fk_odd FOREIGN KEY (x, y)
        REFERENCES tenant_q."Odd Table" ("Weird Id", b)
        ON DELETE SET DEFAULT DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT fk_odd_some FOREIGN KEY (x, y)
        REFERENCES tenant_q."Odd Table" ON DELETE SET NULL (x),
    CONSTRAINT ck_no_inherit CHECK (x >= 0) NO INHERIT,
    CONSTRAINT ck_pair CHECK (x <= y));
ALTER TABLE tenant_q.things ADD CONSTRAINT fk_later FOREIGN KEY (y)
    REFERENCES public.plans NOT VALID;
ALTER TABLE tenant_q.things ADD CONSTRAINT ck_later CHECK (y < 100)
    NOT VALID;
-- The same check expressions on a table whose columns are named
-- otherwise, and on one with the same names: written once for each.
CREATE TABLE tenant_q.others (
    quantity int CONSTRAINT ck_quantity CHECK (quantity > 0),
    z int CONSTRAINT ck_z CHECK (z > 0));
CREATE TABLE tenant_q.renamed (
    quantity int CONSTRAINT ck_quantity CHECK (quantity > 0));
ALTER TABLE tenant_q.renamed RENAME COLUMN quantity TO amount;
"""


#: What PostgreSQL 18 adds: constraints not enforced.
CONSTRAINTS_18 = """
ALTER TABLE tenant_q.things ADD CONSTRAINT fk_unenforced FOREIGN KEY (x)
    REFERENCES public.plans NOT ENFORCED;
ALTER TABLE tenant_q.others ADD CONSTRAINT ck_unenforced CHECK (z > 0)
    NOT ENFORCED;
"""


def test_constraints_read_as_pg_get_constraintdef_writes_them(
        project, db, server_version):
    from pyramid_tenantmigrate.catalog import read_objects

    create_schemas(db, "tenant_q")
    since_18 = int(server_version) >= 180000
    with db.begin() as connection:
        connection.exec_driver_sql(CONSTRAINTS)
        if since_18:
            connection.exec_driver_sql(CONSTRAINTS_18)
    with db.connect() as connection:
        with connection.begin():
            found = read_objects(connection, ["tenant_q"], "alembic_version")
            written = dict(connection.exec_driver_sql(
                "SELECT c.relname || '.' || k.conname, "
                "pg_get_constraintdef(k.oid) FROM pg_constraint k "
                "JOIN pg_class c ON c.oid = k.conrelid "
                "WHERE k.connamespace = 'tenant_q'::regnamespace "
                "AND k.contype IN ('f', 'c')").all())
            defaults = dict(connection.exec_driver_sql(
                "SET LOCAL search_path TO pg_catalog; "
                "SELECT c.relname || '.' || a.attname, pg_get_expr(d.adbin, "
                "CASE WHEN a.attgenerated <> '' THEN d.adrelid ELSE 0 END) "
                "FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid "
                "JOIN pg_attribute a ON a.attrelid = d.adrelid "
                "AND a.attnum = d.adnum "
                "WHERE c.relnamespace = 'tenant_q'::regnamespace").all())
    read = {name: fields[1] for (kind, name), fields
            in found["tenant_q"].items() if name in written}
    assert read == written
    assert {name: fields[2] for (kind, name), fields
            in found["tenant_q"].items()
            if kind == "column" and name in defaults} == defaults
    assert defaults["things.total"] == "((x * 2) + y)"
    assert len(written) == (15 if since_18 else 13)
    assert written["renamed.ck_quantity"] == "CHECK ((amount > 0))"
    assert written["things.fk_odd"].endswith(
        "ON DELETE SET DEFAULT DEFERRABLE INITIALLY DEFERRED")


#: A schema with one of everything doctor compares; ``{s}`` is the
#: schema's quoted name.
EVERYTHING = """
CREATE TYPE {s}.mood AS ENUM ('sad', 'ok');
CREATE DOMAIN {s}.posint AS int DEFAULT 1
    CONSTRAINT positive CHECK (VALUE > 0);
CREATE TYPE {s}.span AS RANGE (subtype = float8);
CREATE TYPE {s}.pair AS (a int, b text);
CREATE SEQUENCE {s}.counter START 5 INCREMENT 2;
CREATE TABLE {s}.parent (
    id int PRIMARY KEY CHECK (id > 0),
    code text COLLATE "C",
    mood {s}.mood DEFAULT 'ok',
    amount {s}.posint,
    span {s}.span,
    pair {s}.pair,
    label varchar(10) NOT NULL DEFAULT 'x',
    ident int GENERATED BY DEFAULT AS IDENTITY UNIQUE,
    twice int GENERATED ALWAYS AS (id * 2) STORED,
    counted int DEFAULT nextval('{s}.counter'),
    CONSTRAINT parent_code_key UNIQUE NULLS NOT DISTINCT (code));
CREATE TABLE {s}.child (
    id serial PRIMARY KEY,
    parent_id int REFERENCES {s}.parent ON DELETE CASCADE,
    plan_id int REFERENCES public.digest_plans,
    v int, w text, area circle,
    CONSTRAINT ck_w CHECK (w <> '') NO INHERIT,
    CONSTRAINT no_overlap EXCLUDE USING gist (area WITH &&));
ALTER TABLE {s}.child ADD CONSTRAINT ck_v CHECK (v < 10) NOT VALID;
ALTER TABLE {s}.child ADD CONSTRAINT fk_v FOREIGN KEY (v)
    REFERENCES {s}.parent ON DELETE SET NULL DEFERRABLE;
CREATE TABLE {s}.other (id int PRIMARY KEY);
-- Node trees that name the schema's own enum and function (their OIDs
-- are each schema's own).
CREATE FUNCTION {s}.double(int) RETURNS int LANGUAGE sql IMMUTABLE
    AS 'SELECT $1 * 2';
ALTER TABLE {s}.parent ADD CONSTRAINT ck_mood CHECK (mood <> 'sad');
CREATE INDEX ix_parent_ok ON {s}.parent (id) WHERE mood = 'ok';
CREATE INDEX ix_parent_double ON {s}.parent ({s}.double(id));
CREATE INDEX ix_child_v ON {s}.child (v DESC NULLS LAST) INCLUDE (w)
    WHERE v > 0;
CREATE INDEX ix_child_lower ON {s}.child (lower(w)) WITH (fillfactor = 70);
CREATE INDEX ix_child_w ON {s}.child USING hash (w);
CREATE INDEX ix_child_pattern ON {s}.child (w text_pattern_ops);
ALTER TABLE {s}.child ENABLE ROW LEVEL SECURITY;
CREATE TABLE {s}.events (id int, at date) PARTITION BY RANGE (at);
CREATE TABLE {s}.events_2026 PARTITION OF {s}.events
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE UNLOGGED TABLE {s}.cache (k text PRIMARY KEY);
CREATE TABLE {s}.legacy (a int);
CREATE TABLE {s}.legacy_kid (b int) INHERITS ({s}.legacy);
CREATE VIEW {s}.child_view AS SELECT id, v FROM {s}.child WHERE v > 1;
CREATE MATERIALIZED VIEW {s}.totals AS
    SELECT parent_id, count(*) AS n FROM {s}.child GROUP BY parent_id;
CREATE INDEX ix_totals ON {s}.totals (n);
CREATE FUNCTION {s}.touch() RETURNS trigger LANGUAGE plpgsql
    AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER child_touch BEFORE UPDATE ON {s}.child
    FOR EACH ROW EXECUTE FUNCTION {s}.touch();
"""

#: PostgreSQL 18's constraints that are not enforced.
EVERYTHING_18 = """
ALTER TABLE {s}.child ADD CONSTRAINT fk_unenforced FOREIGN KEY (v)
    REFERENCES {s}.parent NOT ENFORCED;
"""

FK_V = ("ALTER TABLE {{s}}.child DROP CONSTRAINT fk_v, "
        "ADD CONSTRAINT fk_v FOREIGN KEY (v) REFERENCES {}")

#: Drift of every kind the body shows, made in a copy of EVERYTHING.
DRIFT_KINDS = {
    "fk action": "ALTER TABLE {s}.child DROP CONSTRAINT child_parent_id_fkey,"
                 " ADD CONSTRAINT child_parent_id_fkey FOREIGN KEY (parent_id)"
                 " REFERENCES {s}.parent ON DELETE SET NULL",
    "fk deferrable": "ALTER TABLE {s}.child ALTER CONSTRAINT "
                     "child_parent_id_fkey DEFERRABLE INITIALLY DEFERRED",
    "fk match": "ALTER TABLE {s}.child DROP CONSTRAINT child_plan_id_fkey, "
                "ADD CONSTRAINT child_plan_id_fkey FOREIGN KEY (plan_id) "
                "REFERENCES public.digest_plans MATCH FULL",
    "fk to another tenant": (
        "ALTER TABLE {s}.child DROP CONSTRAINT child_parent_id_fkey, "
        "ADD CONSTRAINT child_parent_id_fkey FOREIGN KEY (parent_id) "
        "REFERENCES tenant_ref.parent ON DELETE CASCADE"),
    "fk columns": "ALTER TABLE {s}.child DROP CONSTRAINT child_plan_id_fkey,"
                  " ADD CONSTRAINT child_plan_id_fkey FOREIGN KEY (v) "
                  "REFERENCES public.digest_plans",
    "check expression": "ALTER TABLE {s}.child DROP CONSTRAINT ck_v, "
                        "ADD CONSTRAINT ck_v CHECK (v < 11) NOT VALID",
    "check validated": "ALTER TABLE {s}.child VALIDATE CONSTRAINT ck_v",
    "check inherited": "ALTER TABLE {s}.child DROP CONSTRAINT ck_w, "
                       "ADD CONSTRAINT ck_w CHECK (w <> '')",
    "check dropped": "ALTER TABLE {s}.parent DROP CONSTRAINT parent_id_check",
    "exclusion dropped": "ALTER TABLE {s}.child DROP CONSTRAINT no_overlap",
    "nulls distinct": "ALTER TABLE {s}.parent DROP CONSTRAINT "
                      "parent_code_key, ADD CONSTRAINT parent_code_key "
                      "UNIQUE (code)",
    "primary key": "ALTER TABLE {s}.cache DROP CONSTRAINT cache_pkey, "
                   "ADD CONSTRAINT cache_pkey UNIQUE (k)",
    "index options": "ALTER INDEX {s}.ix_child_lower SET (fillfactor = 80)",
    "index predicate": "DROP INDEX {s}.ix_child_v; CREATE INDEX ix_child_v "
                       "ON {s}.child (v DESC NULLS LAST) INCLUDE (w) "
                       "WHERE v > 1",
    "index order": "DROP INDEX {s}.ix_child_v; CREATE INDEX ix_child_v "
                   "ON {s}.child (v) INCLUDE (w) WHERE v > 0",
    "index included": "DROP INDEX {s}.ix_child_v; CREATE INDEX ix_child_v "
                      "ON {s}.child (v DESC NULLS LAST, w) WHERE v > 0",
    "index method": "DROP INDEX {s}.ix_child_w; "
                    "CREATE INDEX ix_child_w ON {s}.child (w)",
    "index expression": "DROP INDEX {s}.ix_child_lower; CREATE INDEX "
                        "ix_child_lower ON {s}.child (upper(w)) "
                        "WITH (fillfactor = 70)",
    "index collation": "DROP INDEX {s}.ix_child_pattern; CREATE INDEX "
                       "ix_child_pattern ON {s}.child (w COLLATE \"C\")",
    "index operator class": "DROP INDEX {s}.ix_child_pattern; CREATE INDEX "
                            "ix_child_pattern ON {s}.child (w)",
    "index unique": "DROP INDEX {s}.ix_totals; "
                    "CREATE UNIQUE INDEX ix_totals ON {s}.totals (n)",
    "index on a renamed view column": (
        "ALTER MATERIALIZED VIEW {s}.totals RENAME COLUMN n TO total"),
    "column type": "ALTER TABLE {s}.parent ALTER COLUMN label "
                   "TYPE varchar(20)",
    "column renamed": "ALTER TABLE {s}.child RENAME COLUMN w TO words",
    "nullability": "ALTER TABLE {s}.child ALTER COLUMN w SET NOT NULL",
    "default": "ALTER TABLE {s}.parent ALTER COLUMN mood SET DEFAULT 'sad'",
    "identity": "ALTER TABLE {s}.parent ALTER COLUMN ident "
                "SET GENERATED ALWAYS",
    "generated": "ALTER TABLE {s}.parent DROP COLUMN twice, ADD COLUMN twice "
                 "int GENERATED ALWAYS AS (id * 3) STORED",
    "collation": "ALTER TABLE {s}.parent ALTER COLUMN code "
                 "TYPE text COLLATE \"POSIX\"",
    "sequence": "ALTER SEQUENCE {s}.counter INCREMENT 3",
    "row security": "ALTER TABLE {s}.child FORCE ROW LEVEL SECURITY",
    "persistence": "ALTER TABLE {s}.cache SET LOGGED",
    "partition bound": "ALTER TABLE {s}.events DETACH PARTITION "
                       "{s}.events_2026; ALTER TABLE {s}.events ATTACH "
                       "PARTITION {s}.events_2026 FOR VALUES FROM "
                       "('2026-01-01') TO ('2026-07-01')",
    "inherits": "ALTER TABLE {s}.legacy_kid NO INHERIT {s}.legacy",
    "domain": "ALTER DOMAIN {s}.posint SET DEFAULT 2",
    "domain check": "ALTER DOMAIN {s}.posint DROP CONSTRAINT positive",
    "range": "ALTER TABLE {s}.parent DROP COLUMN span; DROP TYPE {s}.span; "
             "CREATE TYPE {s}.span AS RANGE (subtype = numeric); "
             "ALTER TABLE {s}.parent ADD COLUMN span {s}.span",
    "composite": "ALTER TYPE {s}.pair ADD ATTRIBUTE c int",
    "enum": "ALTER TYPE {s}.mood ADD VALUE 'glad'",
    "view": "CREATE OR REPLACE VIEW {s}.child_view AS "
            "SELECT id, v FROM {s}.child WHERE v > 2",
    "trigger disabled": "ALTER TABLE {s}.child DISABLE TRIGGER child_touch",
    "function": "CREATE OR REPLACE FUNCTION {s}.touch() RETURNS trigger "
                "LANGUAGE plpgsql AS $$BEGIN RETURN OLD; END$$",
    "extra table": "CREATE TABLE {s}.hotfix (id int)",
    # Each of these changes one field of the digest's raw rows alone.
    "fk set null columns": FK_V.format("{s}.parent ON DELETE SET NULL (v) "
                                       "DEFERRABLE"),
    "fk on update": FK_V.format("{s}.parent ON DELETE SET NULL "
                                "ON UPDATE CASCADE DEFERRABLE"),
    "fk referenced columns": FK_V.format("{s}.parent (ident) "
                                         "ON DELETE SET NULL DEFERRABLE"),
    "fk referenced table": FK_V.format("{s}.other ON DELETE SET NULL "
                                       "DEFERRABLE"),
    "fk initially deferred": "ALTER TABLE {s}.child ALTER CONSTRAINT fk_v "
                             "DEFERRABLE INITIALLY DEFERRED",
    "exclusion operator": "ALTER TABLE {s}.child DROP CONSTRAINT no_overlap, "
                          "ADD CONSTRAINT no_overlap "
                          "EXCLUDE USING gist (area WITH ~=)",
    "unique deferrable": "ALTER TABLE {s}.parent DROP CONSTRAINT "
                         "parent_code_key, ADD CONSTRAINT parent_code_key "
                         "UNIQUE NULLS NOT DISTINCT (code) DEFERRABLE",
    "unique include": "ALTER TABLE {s}.parent DROP CONSTRAINT "
                      "parent_code_key, ADD CONSTRAINT parent_code_key "
                      "UNIQUE NULLS NOT DISTINCT (code) INCLUDE (label)",
    "generated dropped": "ALTER TABLE {s}.parent ALTER COLUMN twice "
                         "DROP EXPRESSION",
    "check on the enum": "ALTER TABLE {s}.parent DROP CONSTRAINT ck_mood, "
                         "ADD CONSTRAINT ck_mood CHECK (mood <> 'ok')",
    "predicate on the enum": "DROP INDEX {s}.ix_parent_ok; CREATE INDEX "
                             "ix_parent_ok ON {s}.parent (id) "
                             "WHERE mood = 'sad'",
    "index on another function": (
        "CREATE FUNCTION {s}.triple(int) RETURNS int LANGUAGE sql "
        "IMMUTABLE AS 'SELECT $1 * 3'; DROP INDEX {s}.ix_parent_double; "
        "CREATE INDEX ix_parent_double ON {s}.parent ({s}.triple(id))"),
}

#: Changes the body does not show: the tenant is what its reference is.
NOT_DRIFT = {
    "columns in another order": (
        "ALTER TABLE {s}.parent DROP COLUMN counted, "
        "ADD COLUMN counted int DEFAULT nextval('{s}.counter')"),
}

DRIFT_KINDS_18 = {
    "fk enforced": "ALTER TABLE {s}.child ALTER CONSTRAINT fk_unenforced "
                   "ENFORCED",
    "check not enforced": "ALTER TABLE {s}.child DROP CONSTRAINT ck_v, "
                          "ADD CONSTRAINT ck_v CHECK (v < 10) NOT ENFORCED",
}


def test_a_digest_differs_wherever_the_body_does(db, server_version,
                                                monkeypatch):
    """The digest (the first, cheap comparison) must differ from the
    reference's for every drift the exact comparison of bodies finds, or
    doctor would pass a drifting tenant; and be equal for copies made by
    statements written otherwise (another schema name, so other
    ``:location`` in the node trees, other OIDs). Where it differs and
    the bodies do not, the tenant is found as it is."""
    from pyramid_tenantmigrate import catalog

    since_18 = int(server_version) >= 180000
    kinds = {**DRIFT_KINDS, **(DRIFT_KINDS_18 if since_18 else {})}
    changes = {**kinds, **NOT_DRIFT}
    clean = ["tenant_ref", "tenant_copy", 'tenant "odd", a much longer name']
    # Its qualifier holds the character digests mark it with.
    unusual = "tenant_\x1dmarked"
    schemas = {**dict.fromkeys([*clean, unusual]),
               **{f"tenant_{n}": kind for n, kind in enumerate(changes)}}
    with db.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE public.digest_plans (id int PRIMARY KEY)")
        for schema, kind in schemas.items():
            quoted = '"' + schema.replace('"', '""') + '"'
            connection.exec_driver_sql(f"CREATE SCHEMA {quoted}")
            for sql in (EVERYTHING, EVERYTHING_18 if since_18 else "",
                        changes.get(kind, "")):
                if sql:
                    connection.exec_driver_sql(sql.replace("{s}", quoted))
    def read():
        with db.connect() as connection, connection.begin():
            reference = catalog.read_references(
                connection, ["tenant_ref"], "alembic_version")["tenant_ref"]
            expected = {schema: reference for schema in schemas}
            return (
                reference,
                catalog.read_digests(connection, schemas, "alembic_version"),
                catalog.check_schemas(connection, expected,
                                      "alembic_version"),
                drift.check_share(connection, expected, "alembic_version"),
                catalog.read_objects(connection, schemas, "alembic_version"))

    reference, digests, exact, (found, shapes), objects = read()
    # A statement for a few schemas looks their objects up, one for many
    # scans the catalog for them: the same rows, bodies and digests.
    monkeypatch.setattr(catalog, "LOOK_UP_UNTIL", 0)
    scanned = read()
    assert (scanned[0], scanned[0].body, scanned[0].digest) == \
        (reference, reference.body, reference.digest)
    assert scanned[1:] == (digests, exact, (found, shapes), objects)
    assert {s: o.parents for s, o in scanned[4].items()} == \
        {s: o.parents for s, o in objects.items()}
    assert len(objects) == len(schemas)
    assert {s: digests[s] == reference.digest for s in clean} == \
        dict.fromkeys(clean, True)
    drifting = {kind: schema for schema, kind in schemas.items()
                if kind in kinds}
    # Each kind is drift by the exact comparison, and by the digest.
    assert {kind: exact[s] is not None for kind, s in drifting.items()} == \
        dict.fromkeys(kinds, True)
    assert {kind: digests[s] != reference.digest
            for kind, s in drifting.items()} == dict.fromkeys(kinds, True)
    # Not drift: the digest differs (the exact comparison is made), the
    # bodies do not.
    same = [schema for schema, kind in schemas.items()
            if kind in NOT_DRIFT] + [unusual]
    assert {s: digests[s] != reference.digest for s in same} == \
        dict.fromkeys(same, True)
    assert {s: exact[s] for s in [*clean, *same]} == \
        dict.fromkeys([*clean, *same])
    # What a worker finds: the drifting schemas, each with how.
    assert shapes == {}
    assert {kind: bool(found[s]) for kind, s in drifting.items()} == \
        dict.fromkeys(kinds, True)
    assert {s: found[s] for s in [*clean, *same]} == \
        dict.fromkeys([*clean, *same], [])
