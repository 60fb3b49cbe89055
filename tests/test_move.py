"""Moving a tenant to another database of its fleet (move-tenant).

The fleet of tests/test_fleet.py: database a (control) on the session's
server, b and c on two embedded clusters of this module. The tenants'
history has foreign keys to a shared table (the shared branch runs, and
seeds it, on each database), within the tenant, to the same table, a
serial and an identity column, and a trigger.
"""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from pyramid_tenantmigrate import moving
from pyramid_tenantmigrate.reserved import (
    MOVED_PREFIX,
    PROVISIONING_LOCK,
    TENANT_LOCK,
    lock_key,
)

from . import test_fleet
from .conftest import catalog_snapshot, schema_exists

clusters = test_fleet.clusters
fleet = test_fleet.fleet


def _revisions(project):
    project.write_revision("shared", "s1", None, """
        op.create_table("plans",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.Text, nullable=False))
        op.execute("INSERT INTO plans VALUES (1, 'free'), (2, 'pro')")
        """, 'op.drop_table("plans")')
    project.write_revision("tenant", "t1", None, """
        op.create_table("customers",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("plan_id", sa.Integer,
                      sa.ForeignKey("public.plans.id"), nullable=False),
            sa.Column("name", sa.Text, nullable=False))
        op.create_table("orders",
            sa.Column("id", sa.BigInteger, sa.Identity(always=True),
                      primary_key=True),
            sa.Column("customer_id", sa.Integer,
                      sa.ForeignKey("customers.id"), nullable=False),
            sa.Column("parent_id", sa.BigInteger,
                      sa.ForeignKey("orders.id")),
            sa.Column("total", sa.Numeric(12, 2)),
            sa.Column("placed", sa.DateTime(timezone=True),
                      server_default=sa.func.now()),
            sa.Column("note", sa.Text))
        op.create_table("counter", sa.Column("n", sa.Integer))
        op.execute("INSERT INTO counter VALUES (0)")
        op.execute('''
            CREATE FUNCTION mark_note() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN NEW.note := coalesce(NEW.note, '') || '+';
            RETURN NEW; END $$''')
        op.execute("CREATE TRIGGER mark BEFORE INSERT ON orders "
                   "FOR EACH ROW EXECUTE FUNCTION mark_note()")
        """, """
        op.execute("DROP TABLE orders, customers, counter")
        op.execute("DROP FUNCTION mark_note()")
        """)
    project.write_revision("tenant", "t2", "t1", """
        op.add_column("customers", sa.Column("email", sa.Text))
        op.create_index("ix_customers_email", "customers", ["email"])
        """, 'op.drop_column("customers", "email")')


def _counting_revision(project):
    """t3: a data revision; each run of it adds 1."""
    project.write_revision("tenant", "t3", "t2", """
        op.execute("UPDATE counter SET n = n + 1")
        op.execute("SELECT pg_sleep(0.05)")
        """, 'op.execute("UPDATE counter SET n = n - 1")')


def _fill(engine, schema):
    with engine.begin() as connection:
        connection.exec_driver_sql(
            f"INSERT INTO {schema}.customers (plan_id, name, email) VALUES "
            "(1, 'ann', 'ann@x'), (2, 'bob', NULL), (1, 'cyd', 'c@x')")
        for customer, parent, total, note in [
                (1, None, "10.50", "first"), (1, 1, "3.25", None),
                (2, None, "99.99", "é ü 中 \\ tab\there"),
                (3, 2, None, None), (3, 4, "0.01", "last")]:
            connection.exec_driver_sql(
                f"INSERT INTO {schema}.orders (customer_id, parent_id, "
                "total, note) VALUES (%s, %s, %s, %s)",
                (customer, parent, total, note))


def _rows(engine, schema):
    with engine.connect() as connection:
        return {table: connection.exec_driver_sql(
            f"SELECT * FROM {schema}.{table} ORDER BY 1").all()
            for table in ("customers", "orders", "counter")}


def _placements(fleet):
    with fleet.engines["a"].connect() as connection:
        return dict(connection.exec_driver_sql(
            "SELECT schema_name, database "
            "FROM public.tenantmigrate_placements").all())


def _moves(fleet):
    with fleet.engines["a"].connect() as connection:
        if not connection.exec_driver_sql(
                "SELECT to_regclass('public.tenantmigrate_moves')").scalar():
            return []
        return connection.exec_driver_sql(
            "SELECT schema_name FROM public.tenantmigrate_moves").all()


def _fenced(fleet, database):
    with fleet.engines[database].connect() as connection:
        return connection.exec_driver_sql(
            "SELECT nspname FROM pg_namespace WHERE left(nspname, %s) = %s",
            (len(MOVED_PREFIX), MOVED_PREFIX)).scalars().all()


def _counter(fleet, database, schema):
    with fleet.engines[database].connect() as connection:
        return connection.exec_driver_sql(
            f"SELECT n FROM {schema}.counter").scalar()


def _works(fleet, database, schema):
    """New rows take the next ids (sequences were carried over), the
    trigger runs, and the foreign keys hold."""
    with fleet.engines[database].begin() as connection:
        ids = connection.exec_driver_sql(
            f"SELECT max(id) FROM {schema}.customers").scalar()
        new = connection.exec_driver_sql(
            f"INSERT INTO {schema}.customers (plan_id, name) "
            "VALUES (2, 'new') RETURNING id").scalar()
        assert new == ids + 1
        order_ids = connection.exec_driver_sql(
            f"SELECT max(id) FROM {schema}.orders").scalar()
        order, note = connection.exec_driver_sql(
            f"INSERT INTO {schema}.orders (customer_id, note) "
            f"VALUES ({new}, 'n') RETURNING id, note").one()
        assert order == order_ids + 1 and note == "n+"


def _only_on(fleet, database, schema):
    """Exactly one copy: on ``database``, placed there; none elsewhere,
    nothing fenced left, no move recorded."""
    assert _placements(fleet)[schema] == database
    for name in "abc":
        assert schema_exists(fleet.engines[name], schema) == (
            name == database), name
        assert _fenced(fleet, name) == []
    assert _moves(fleet) == []


def _until(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _set_up(fleet):
    project = fleet.project
    _revisions(project)
    fleet.tenants("a", "tenant_a")
    fleet.tenants("b", "tenant_x", "tenant_y")
    fleet.tenants("c", "tenant_z")
    project.run("upgrade", check=0)
    _fill(fleet.engines["b"], "tenant_x")
    return project


def test_move_copies_structure_rows_and_sequences(fleet):
    project = _set_up(fleet)
    b, c = fleet.engines["b"], fleet.engines["c"]
    structure = catalog_snapshot(b, "tenant_x")
    rows = _rows(b, "tenant_x")
    result = project.run("move-tenant", "tenant_x", "--to", "c", check=0)
    assert "Moved tenant tenant_x from b to c at revision t2" in (
        result.stdout)
    assert "3 table(s), 9 row(s), 2 sequence(s)" in result.stdout
    _only_on(fleet, "c", "tenant_x")
    assert catalog_snapshot(c, "tenant_x") == structure
    # As they were: the trigger did not run again on the copied rows.
    assert _rows(c, "tenant_x") == rows
    assert rows["orders"][2].note == "é ü 中 \\ tab\there+"
    _works(fleet, "c", "tenant_x")
    # Runs and placements agree.
    project.run("placements", check=0)
    status = json.loads(project.run("current", "--json", check=0).stdout)
    schemas = {d["database"]: [s["schema"] for branch in d["branches"]
                               for s in branch["schemas"]]
               for d in status["databases"]}
    assert "tenant_x" in schemas["c"] and "tenant_x" not in schemas["b"]
    # On to the control database, through the Python API.
    migrator = project.migrator()
    try:
        report = moving.move_tenant(migrator, "tenant_x", "a")
    finally:
        migrator.close()
    assert report.to_dict()["rows"] == {"customers": 4, "orders": 6,
                                        "counter": 1}
    assert report.heads == ("t2",) and report.attempts == 1
    _only_on(fleet, "a", "tenant_x")
    _works(fleet, "a", "tenant_x")


def test_bad_input_exits_2_and_changes_nothing(fleet):
    project = _set_up(fleet)
    for args, words in [
            (["tenant_x", "--to", "zz"], "--to zz: unknown database 'zz'"),
            (["tenant_x", "--to", "b"], "on database b already"),
            (["tenant_nope", "--to", "c"], "unknown tenant 'tenant_nope'"),
            (['tenant_x"; DROP SCHEMA public; --', "--to", "c"],
             "invalid tenant schema name"),
            (["public", "--to", "c"], "invalid tenant schema name"),
            (["tenant_x"], "needs --to DATABASE (one of a, b, c)"),
            (["tenant_x", "tenant_y", "--to", "c"], "takes one tenant name"),
            (["tenant_x", "--to", "c", "--database", "b"], "not --database"),
            (["tenant_x", "--to", "c", "--wait", "soon"], "--wait")]:
        result = project.run("move-tenant", *args, check=2)
        assert words in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    project.write_ini(**{"tenantmigrate.databases": None})
    result = project.run_process("move-tenant", "tenant_x", "--to", "c",
                                 check=2)
    assert "move-tenant is for a fleet" in result.stderr
    assert "Traceback" not in result.stderr
    assert schema_exists(fleet.engines["b"], "tenant_x")
    assert not schema_exists(fleet.engines["c"], "tenant_x")
    assert _moves(fleet) == []


def test_a_row_the_target_cannot_hold_fails_the_move_safely(fleet):
    project = _set_up(fleet)
    rows = _rows(fleet.engines["b"], "tenant_x")
    with fleet.engines["c"].begin() as connection:
        connection.exec_driver_sql("DELETE FROM public.plans WHERE id = 2")
    result = project.run("move-tenant", "tenant_x", "--to", "c", check=1)
    assert "copying table customers to c failed" in result.stderr
    assert "nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr
    _only_on(fleet, "b", "tenant_x")
    assert _rows(fleet.engines["b"], "tenant_x") == rows
    _works(fleet, "b", "tenant_x")


class _Paused:
    """Holds an in-process move at a point of :mod:`.moving` (once)."""

    def __init__(self, monkeypatch, point):
        self.point = point
        self.reached = threading.Event()
        self.go = threading.Event()
        monkeypatch.setattr(moving, "_reached", self._reached)

    def _reached(self, point):
        if point == self.point and not self.reached.is_set():
            self.reached.set()
            assert self.go.wait(120)

    def start(self, project, schema, to):
        self.result = {}

        def move():
            migrator = project.migrator()
            try:
                self.result["report"] = moving.move_tenant(
                    migrator, schema, to)
            except BaseException as exc:  # shown by the test
                self.result["error"] = exc
            finally:
                migrator.close()

        self.thread = threading.Thread(target=move)
        self.thread.start()
        assert self.reached.wait(120), self.result

    def finish(self):
        self.go.set()
        self.thread.join(120)
        assert "error" not in self.result, self.result["error"]
        return self.result["report"]


def _waiting(engine, classid, objid=None):
    """Sessions waiting for an advisory lock of ``classid``."""
    sql = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
           f"AND classid = {classid} AND NOT granted")
    if objid is not None:
        sql += f" AND objid = {objid}"
    with engine.connect() as connection:
        return connection.exec_driver_sql(sql).scalar()


def test_an_upgrade_during_a_move_migrates_the_tenant_once(
        fleet, monkeypatch):
    project = _set_up(fleet)
    b = fleet.engines["b"]
    _counting_revision(project)
    paused = _Paused(monkeypatch, "copied")
    paused.start(project, "tenant_x", "c")
    # The freeze: reads go on, a write waits.
    with b.connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT count(*) FROM tenant_x.orders").scalar() == 5
    written = {}

    def write():
        try:
            with b.begin() as connection:
                connection.exec_driver_sql(
                    "INSERT INTO tenant_x.customers (plan_id, name) "
                    "VALUES (1, 'late')")
            written["ok"] = True
        except Exception as exc:
            written["error"] = exc

    writer = threading.Thread(target=write)
    writer.start()
    upgrade = project.start("upgrade", "--json")
    try:
        # Every database's ordinary passes are done; each last pass waits
        # for the move.
        _until(lambda: _waiting(fleet.engines["a"], PROVISIONING_LOCK) == 3,
               what="the run's last passes")
        assert fleet.version("b", "tenant_y") == ["t3"]
        assert fleet.version("c", "tenant_z") == ["t3"]
        assert fleet.version("b", "tenant_x") == ["t2"]  # skipped
        assert writer.is_alive()
        report = paused.finish()
        out, err = upgrade.communicate(timeout=300)
    finally:
        paused.go.set()
        if upgrade.poll() is None:
            upgrade.kill()
    writer.join(60)
    assert upgrade.returncode == 0, out + err
    assert json.loads(out)["ok"]
    assert report.heads == ("t2",)
    _only_on(fleet, "c", "tenant_x")
    assert fleet.version("c", "tenant_x") == ["t3"]
    for database, schema in [("c", "tenant_x"), ("b", "tenant_y"),
                             ("c", "tenant_z"), ("a", "tenant_a")]:
        assert _counter(fleet, database, schema) == 1, schema
    # The write that waited failed (its table's name was gone): the app
    # retries it on c. Nothing it committed was lost: it committed nothing.
    assert "ok" not in written and "does not exist" in str(
        written["error"])
    with fleet.engines["c"].connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT count(*) FROM tenant_x.customers WHERE name = 'late'"
        ).scalar() == 0
    _works(fleet, "c", "tenant_x")


def test_a_copy_arriving_after_the_target_was_migrated_catches_up(fleet):
    project = _set_up(fleet)
    _counting_revision(project)
    project.run("upgrade", "--database", "c", check=0)
    assert fleet.version("b", "tenant_x") == ["t2"]
    result = project.run("move-tenant", "tenant_x", "--to", "c", "--json",
                         check=0)
    report = json.loads(result.stdout)
    assert report["revision"] == ["t2"] and report["caught_up"] == ["t3"]
    assert fleet.version("c", "tenant_x") == ["t3"]
    project.run("upgrade", check=0)
    assert _counter(fleet, "c", "tenant_x") == 1
    assert _counter(fleet, "b", "tenant_y") == 1
    _only_on(fleet, "c", "tenant_x")


def test_a_migration_waiting_for_the_tenant_goes_first(fleet, monkeypatch):
    project = _set_up(fleet)
    b = fleet.engines["b"]
    paused = _Paused(monkeypatch, "copied")
    paused.start(project, "tenant_x", "c")
    # What a run's transaction for the tenant does first: its lock.
    migration = {}

    def migrate():
        with b.begin() as connection:
            connection.exec_driver_sql(
                f"SELECT pg_advisory_xact_lock({TENANT_LOCK}, "
                f"{lock_key('tenant_x')})")
            connection.exec_driver_sql(
                "UPDATE tenant_x.counter SET n = n + 100")
        migration["done"] = True

    thread = threading.Thread(target=migrate)
    thread.start()
    _until(lambda: _waiting(b, TENANT_LOCK, lock_key("tenant_x")) == 1,
           what="the migration to wait")
    report = paused.finish()
    thread.join(60)
    assert migration == {"done": True}
    assert report.attempts == 2
    _only_on(fleet, "c", "tenant_x")
    assert _counter(fleet, "c", "tenant_x") == 100


_QUERY_SOURCE = {
    "tenantmigrate.tenant_schema_prefix": None,
    "tenantmigrate.tenant_schemas_query":
        "SELECT schema_name FROM public.tenantmigrate_placements"}


@pytest.mark.parametrize("point, placed", [
    ("copied", "b"), ("renamed", "b"), ("switched", "c")])
def test_kill_9_during_a_move_then_repair(fleet, point, placed):
    project = fleet.project
    _revisions(project)
    project.settings.update(_QUERY_SOURCE)
    project.write_ini()
    project.run("upgrade", check=0)
    project.run("create-tenant", "tenant_x", "--database", "b", check=0)
    project.run("create-tenant", "tenant_y", "--database", "c", check=0)
    _fill(fleet.engines["b"], "tenant_x")
    rows = _rows(fleet.engines["b"], "tenant_x")
    env = dict(project.env(), TENANTMIGRATE_TEST_KILL_AT=point)
    process = subprocess.run(
        [sys.executable, "-m", "pyramid_tenantmigrate.scripts.tenant_migrate",
         project.ini, "move-tenant", "tenant_x", "--to", "c"],
        env=env, capture_output=True, text=True, timeout=300,
        cwd=project.root)
    assert process.returncode == -9, process.stderr
    assert _placements(fleet)["tenant_x"] == placed
    assert len(_moves(fleet)) == 1
    # What was left: the copy on c, or the source fenced or not dropped.
    assert schema_exists(fleet.engines["c"], "tenant_x")
    assert len(_fenced(fleet, "b")) == (point != "copied")
    result = project.run("placements", check=1)
    assert "interrupted move: tenant_x" in result.stdout
    assert "(to do)" in result.stdout
    project.run("placements", "--repair", check=0)
    _only_on(fleet, placed, "tenant_x")
    assert _rows(fleet.engines[placed], "tenant_x") == rows
    _works(fleet, placed, "tenant_x")
    project.run("placements", check=0)
    # Runs find it where it is; a later move goes through.
    _counting_revision(project)
    project.run("upgrade", check=0)
    assert _counter(fleet, placed, "tenant_x") == 1
    other = "c" if placed == "b" else "b"
    project.run("move-tenant", "tenant_x", "--to", other, check=0)
    _only_on(fleet, other, "tenant_x")
    assert os.environ.get(moving.KILL_AT) is None


def test_a_pass_reaching_the_tenant_after_its_move_still_exits_0(fleet):
    """The run's pass over b chose tenant_x before the move began, and
    reaches it after the move is over: not b's tenant any more."""
    project = _set_up(fleet)
    fleet.tenants("b", "tenant_w")  # migrated first on b, slowly
    project.run("upgrade", check=0)
    _slow_t3(project)
    code, report = _upgrade_moving_tenant_x(fleet, project)
    assert code == 0, report
    assert report["ok"]
    on_b = report["databases"][1]["report"]
    assert "tenant_x was moved to database c during the run" in (
        on_b["warnings"][0])
    _only_on(fleet, "c", "tenant_x")
    assert fleet.version("c", "tenant_x") == ["t3"]
    for database, schema in [("c", "tenant_x"), ("b", "tenant_w"),
                             ("b", "tenant_y"), ("c", "tenant_z")]:
        assert _counter(fleet, database, schema) == 1, schema


def _slow_t3(project):
    project.write_revision("tenant", "t3", "t2", """
        op.execute("UPDATE counter SET n = n + 1")
        op.execute("SELECT pg_sleep(CASE WHEN current_schema() = "
                   "'tenant_w' THEN 4 ELSE 0.05 END)")
        """)


def _upgrade_moving_tenant_x(fleet, project, *args):
    """``upgrade *args`` over b (tenant_w first, slowly), tenant_x moved
    from b to c meanwhile: (exit code, the JSON report)."""
    upgrade = project.start("upgrade", "--json", "--workers", "1", *args)
    try:
        def sleeping():
            with fleet.engines["b"].connect() as connection:
                return connection.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = "
                    "'active' AND query LIKE '%%pg_sleep(CASE%%' "
                    "AND pid <> pg_backend_pid()").scalar()
        _until(sleeping, what="tenant_w's migration")
        project.run("move-tenant", "tenant_x", "--to", "c", check=0)
        assert sleeping()  # the pass has not reached tenant_x yet
        out, err = upgrade.communicate(timeout=300)
    finally:
        if upgrade.poll() is None:
            upgrade.kill()
    assert upgrade.returncode in (0, 1), out + err
    return upgrade.returncode, json.loads(out)


def _tenant_x_on_b(report):
    on_b = [d for d in report["databases"] if d["database"] == "b"][0]
    return [s for b in on_b["report"]["branches"] for s in b["schemas"]
            if s["schema"] == "tenant_x"]


@pytest.mark.parametrize("args", [
    ("--tenant", "tenant_w", "--tenant", "tenant_x"),
    ("--database", "b"),
], ids=["named tenants", "one database"])
def test_a_run_whose_tenant_moved_behind_its_reach_exits_1(fleet, args):
    """A run with no last pass over the database the tenant moved to
    (named tenants; or that database left out) leaves it at its old
    revision there: failed, with what to run, and running it migrates
    the tenant once."""
    project = _set_up(fleet)
    fleet.tenants("b", "tenant_w")  # migrated first on b, slowly
    project.run("upgrade", check=0)
    _slow_t3(project)
    code, report = _upgrade_moving_tenant_x(fleet, project, *args)
    assert code == 1
    failed = _tenant_x_on_b(report)
    assert failed and failed[0]["status"] == "failed"
    assert "moved to database c during the run" in failed[0]["error"]
    assert "--tenant tenant_x" in failed[0]["error"]
    _only_on(fleet, "c", "tenant_x")
    assert fleet.version("c", "tenant_x") == ["t2"]
    project.run("upgrade", "--tenant", "tenant_x", check=0)
    assert fleet.version("c", "tenant_x") == ["t3"]
    assert _counter(fleet, "c", "tenant_x") == 1
    assert _counter(fleet, "b", "tenant_w") == 1


def test_a_run_whose_moved_tenant_the_move_brought_up_exits_0(fleet):
    """c's tenants were at t3 already: the move brought tenant_x's copy
    there, so the run that let it go is done with it."""
    project = _set_up(fleet)
    fleet.tenants("b", "tenant_w")
    project.run("upgrade", check=0)
    _slow_t3(project)
    project.run("upgrade", "--database", "c", check=0)
    code, report = _upgrade_moving_tenant_x(
        fleet, project, "--tenant", "tenant_w", "--tenant", "tenant_x")
    assert code == 0, report
    assert _tenant_x_on_b(report) == []
    assert fleet.version("c", "tenant_x") == ["t3"]
    assert _counter(fleet, "c", "tenant_x") == 1
