"""upgrade in waves: canaries first, a gate between waves, resuming."""
import io
import json

import sqlalchemy as sa

from pyramid_tenantmigrate import commands
from pyramid_tenantmigrate.waves import parse_waves, split_waves

from .conftest import create_schemas, version_of

TENANTS = [f"tenant_{n:02d}" for n in range(1, 13)]
#: Smallest first: tenant_12 holds the fewest rows, tenant_01 the most.
SMALLEST_FIRST = TENANTS[::-1]

#: t3 fails in a tenant holding a note titled 'fail', and sleeps in one
#: holding a note titled 'slow'.
T3 = """
op.execute(\"\"\"
DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM notes WHERE title = 'fail') THEN
    RAISE EXCEPTION 'a note says fail';
  END IF;
  IF EXISTS (SELECT 1 FROM notes WHERE title = 'slow') THEN
    PERFORM pg_sleep(3);
  END IF;
END $$\"\"\")
op.add_column("notes", sa.Column("archived", sa.Boolean))
"""


def fleet(project, db):
    """Twelve tenants at t2, of distinct sizes, and t3 to upgrade to."""
    project.write_standard_revisions()
    create_schemas(db, *TENANTS)
    project.run("upgrade", check=0)
    with db.begin() as connection:
        for number, tenant in enumerate(TENANTS, 1):
            connection.exec_driver_sql(
                f"INSERT INTO {tenant}.notes (title) SELECT repeat('x', 200) "
                f"FROM generate_series(1, {(13 - number) * 150})")
    project.write_revision("tenant", "t3", "t2", T3,
                           'op.drop_column("notes", "archived")')


def note(db, tenant, title):
    with db.begin() as connection:
        connection.exec_driver_sql(
            f"INSERT INTO {tenant}.notes (title) VALUES ('{title}')")


def versions(db):
    return {tenant: version_of(db, tenant) for tenant in TENANTS}


def at(db, revision):
    return [t for t, heads in versions(db).items() if heads == [revision]]


def upgrade_json(project, *args, check):
    result = project.run("upgrade", "--json", *args, check=check)
    return json.loads(result.stdout)


def wave_schemas(document):
    return [wave["schemas"] for wave in document["waves"]]


def last_run_status(db):
    with db.connect() as connection:
        return connection.execute(sa.text(
            "SELECT status, note FROM public.tenantmigrate_runs "
            "ORDER BY id DESC LIMIT 1")).one()


def test_wave_sizes():
    tenants = list(range(100))
    sizes = [len(w) for w in split_waves(parse_waves("1,5%,25%,rest"),
                                         tenants)]
    assert sizes == [1, 5, 25, 69]
    # Percentages round up, to 1 at least; the last wave takes the rest.
    assert [len(w) for w in split_waves(parse_waves("1%,2"), tenants[:7])
            ] == [1, 2, 4]
    # More waves than tenants: no empty wave.
    assert split_waves(parse_waves("2,2,rest"), ["a", "b"]) == [["a", "b"]]


def test_waves_go_smallest_first_and_all_pass(project, db):
    fleet(project, db)

    document = upgrade_json(project, "--waves", "1,25%,rest", check=0)

    assert wave_schemas(document) == [SMALLEST_FIRST[:1],
                                      SMALLEST_FIRST[1:4],
                                      SMALLEST_FIRST[4:]]
    wave = document["waves"][1]
    assert wave["index"] == 2 and wave["size"] == 3
    assert wave["status"] == "done" and wave["counts"] == {"done": 3}
    assert wave["failures"] == 0 and wave["median_duration_ms"] > 0
    assert document["halted"] is None and document["ok"]
    assert at(db, "t3") == TENANTS
    assert last_run_status(db).status == "ok"


def test_query_order_and_canaries_go_first(project, db):
    fleet(project, db)
    project.write_ini(**{
        "tenantmigrate.waves": "2,rest",
        "tenantmigrate.wave_order": (
            "SELECT name FROM (VALUES (1, 'tenant_05'), (2, 'tenant_03'), "
            "(3, 'nobody')) v(i, name) ORDER BY i")})

    document = upgrade_json(project, "--canary", "tenant_09", check=0)

    order = [name for wave in wave_schemas(document) for name in wave]
    rest = [t for t in SMALLEST_FIRST
            if t not in ("tenant_09", "tenant_05", "tenant_03")]
    assert order == ["tenant_09", "tenant_05", "tenant_03"] + rest
    assert wave_schemas(document)[0] == ["tenant_09", "tenant_05"]


def test_failing_wave_halts_and_fixed_rerun_completes(project, db):
    fleet(project, db)
    note(db, "tenant_10", "fail")  # the third smallest: wave 2

    result = project.run("upgrade", "--waves", "1,2,rest", check=1)

    assert "halted after wave 2 of 3: 1 of its 2 tenant(s) failed" in (
        result.stdout)
    assert "9 tenant(s) of the later waves were not started" in (
        result.stdout)
    assert at(db, "t3") == ["tenant_11", "tenant_12"]
    assert versions(db)["tenant_10"] == ["t2"]  # rolled back
    # The third wave's tenants were not touched.
    assert set(at(db, "t2")) == set(SMALLEST_FIRST[2:])
    status, why = last_run_status(db)
    assert status == "halted" and why.startswith("halted after wave 2 of 3")

    # Fixed: the rerun resumes with what is pending, the failed one first.
    with db.begin() as connection:
        connection.exec_driver_sql(
            "DELETE FROM tenant_10.notes WHERE title = 'fail'")
    document = upgrade_json(project, "--waves", "1,2,rest", check=0)

    assert wave_schemas(document)[0] == ["tenant_10"]
    assert sum(w["size"] for w in document["waves"]) == 10
    assert at(db, "t3") == TENANTS


def test_failure_rate_threshold(project, db):
    fleet(project, db)
    note(db, "tenant_10", "fail")
    project.write_ini(**{"tenantmigrate.wave_max_failures": 5,
                         "tenantmigrate.wave_max_failure_rate": "60%"})

    # One of wave 2's two tenants fails: 50% is within 60%, the run goes on.
    document = upgrade_json(project, "--waves", "1,2,rest", check=1)

    assert document["halted"] is None
    assert [w["status"] for w in document["waves"]] == ["done"] * 3
    assert at(db, "t2") == ["tenant_10"]

    project.write_revision("tenant", "t4", "t3", """
        op.execute(\"\"\"
        DO $$ BEGIN
          IF EXISTS (SELECT 1 FROM notes WHERE title = 'boom') THEN
            RAISE EXCEPTION 'a note says boom';
          END IF;
        END $$\"\"\")
        """)
    with db.begin() as connection:
        connection.exec_driver_sql(
            "DELETE FROM tenant_10.notes WHERE title = 'fail'")
    note(db, "tenant_11", "boom")
    project.write_ini(**{"tenantmigrate.wave_max_failures": 5,
                         "tenantmigrate.wave_max_failure_rate": "0.4"})
    document = upgrade_json(project, "--waves", "1,2,rest", check=1)
    # Wave 2 is tenant_11 (fails) and tenant_10: 50% is more than 40%.
    assert document["halted"].startswith(
        "halted after wave 2 of 3: 50% of its tenants failed")


def test_slow_wave_halts_and_rerun_goes_on_from_there(project, db):
    fleet(project, db)
    for tenant in ("tenant_09", "tenant_08"):  # two of wave 3's three
        note(db, tenant, "slow")
    project.write_ini(**{"tenantmigrate.wave_slowdown": 10})

    document = upgrade_json(project, "--waves", "1,2,3,rest", check=1)

    assert document["halted"].startswith(
        "halted after wave 3 of 4: its median time per tenant")
    assert [w["status"] for w in document["waves"]] == [
        "done", "done", "halted", "not-started"]
    migrated = SMALLEST_FIRST[:6]
    assert sorted(at(db, "t3")) == sorted(migrated)
    assert sorted(at(db, "t2")) == sorted(SMALLEST_FIRST[6:])

    # The rerun migrates the six others only; the migrated are left alone.
    # --retry-failed too: a halted run's tenants not started are what it
    # left behind, as its failures are.
    document = upgrade_json(project, "--retry-failed", "--waves",
                            "1,2,3,rest", check=0)

    statuses = {r["schema"]: r["status"]
                for r in document["branches"][-1]["schemas"]}
    assert statuses == {s: "done" for s in SMALLEST_FIRST[6:]}
    assert wave_schemas(document)[0] == [SMALLEST_FIRST[6]]
    assert at(db, "t3") == TENANTS


def replication_lag(migrator, wave):
    """A health check as an app would write one: lag read from the
    database (here a table the test fills)."""
    with migrator.connect() as connection:
        lag = connection.execute(sa.text(
            "SELECT seconds FROM public.fake_lag")).scalar()
    return f"replication lag is {lag}s" if lag > 10 else None


def test_health_check_halts(project, db):
    fleet(project, db)
    with db.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE public.fake_lag AS SELECT 42 AS seconds")
    project.write_ini(**{
        "tenantmigrate.wave_check": "tests.test_waves:replication_lag"})

    document = upgrade_json(project, "--waves", "2,rest", check=1)

    assert document["halted"] == (
        "halted after wave 1 of 2: tenantmigrate.wave_check: replication "
        "lag is 42s")
    assert sorted(at(db, "t3")) == sorted(SMALLEST_FIRST[:2])

    with db.begin() as connection:
        connection.exec_driver_sql("UPDATE public.fake_lag SET seconds = 1")
    upgrade_json(project, "--waves", "2,rest", check=0)
    assert at(db, "t3") == TENANTS


def test_confirmation_between_waves(project, db):
    fleet(project, db)
    asked = []

    def confirm(wave):
        asked.append(wave.index)
        return wave.index < 2

    report = commands.upgrade(project.migrator(), waves="1,1,rest",
                              confirm_wave=confirm)

    assert asked == [1, 2]
    assert report.halted == ("halted after wave 2 of 3: not confirmed "
                             "(--wave-pause)")
    assert sorted(at(db, "t3")) == sorted(SMALLEST_FIRST[:2])


class Terminal(io.StringIO):
    """What a person types at a terminal."""

    def isatty(self):
        return True


def test_wave_pause_asks_on_the_terminal(project, db):
    from pyramid_tenantmigrate.scripts.tenant_migrate import (
        TenantMigrateCommand,
    )
    fleet(project, db)
    command = TenantMigrateCommand(["tenant-migrate", project.ini, "upgrade",
                                    "--waves", "1,1,rest", "--wave-pause"])
    command.stdout, command.stderr = io.StringIO(), io.StringIO()
    command.stdin = Terminal("y\nn\n")

    assert command.run() == 1

    assert command.stderr.getvalue().count("Go on with the next wave?") == 2
    assert ("halted after wave 2 of 3: not confirmed"
            in command.stdout.getvalue())
    assert sorted(at(db, "t3")) == sorted(SMALLEST_FIRST[:2])


def test_wave_pause_needs_a_terminal(project, db):
    fleet(project, db)

    result = project.run("upgrade", "--waves", "1,rest", "--wave-pause",
                         check=2)

    assert "--wave-pause asks on the terminal" in result.stderr
    assert at(db, "t2") == TENANTS


def test_bad_wave_specs_exit_2(project, db):
    fleet(project, db)
    for spec in ("1,rest,2", "0", "abc", "150%"):
        result = project.run("upgrade", "--waves", spec, check=2)
        assert "--waves" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout
    result = project.run("upgrade", "--canary", "tenant_01", check=2)
    assert "--waves" in result.stderr
    result = project.run("upgrade", "--waves", "1,rest", "--canary",
                         "tenant_99", check=2)
    assert "tenant_99" in result.stderr

    project.write_ini(**{"tenantmigrate.waves": "1,%"})
    result = project.run("upgrade", check=2)
    assert "tenantmigrate.waves" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert at(db, "t2") == TENANTS


def test_no_waves_is_one_run_as_before(project, db):
    fleet(project, db)
    note(db, "tenant_12", "fail")

    document = upgrade_json(project, check=1)

    assert document["waves"] == [] and document["halted"] is None
    # Without waves nothing halts: every other tenant is migrated.
    assert at(db, "t2") == ["tenant_12"]
    assert last_run_status(db).status == "failed"


def test_waves_setting_and_downgrade_untouched(project, db):
    fleet(project, db)
    project.write_ini(**{"tenantmigrate.waves": "1,rest"})

    document = upgrade_json(project, check=0)
    assert len(document["waves"]) == 2

    document = json.loads(project.run(
        "downgrade", "tenant@t2", "--json", check=0).stdout)
    assert document["waves"] == []
    assert at(db, "t2") == TENANTS
