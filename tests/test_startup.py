"""The tenantmigrate.startup hook, with real app processes and pserve."""
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import sqlalchemy as sa
from pyramid.paster import bootstrap, get_app

from pyramid_tenantmigrate import StartupRefused

from .conftest import create_schemas, version_of

LOAD_APP = ("import sys; from pyramid.paster import get_app; "
            "get_app(sys.argv[1])")


@pytest.fixture
def behind(project, db):
    """Standard revisions, nothing applied, three tenants at base."""
    project.app_factory = "call:tests.apps:main"
    project.write_standard_revisions()
    create_schemas(db, "tenant_a", "tenant_b", "tenant_c")
    return project


def _load_app_process(project):
    # get_app() passes no __script__, as gunicorn --paste or uWSGI.
    return subprocess.Popen(
        [sys.executable, "-c", LOAD_APP, project.ini],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=project.root, env=project.env())


def test_several_processes_starting_at_once_migrate_once(behind, db):
    # A log every tenant revision writes to: a second run would add rows
    # (or fail creating the tenant's table twice).
    behind.write_revision("shared", "s2", "s1", """
        op.create_table("run_log", sa.Column("schema", sa.Text),
                        sa.Column("backend", sa.Integer))
        op.execute("SELECT pg_sleep(0.5)")  # widen the overlap
        """)
    behind.write_revision("tenant", "t3", "t2", """
        op.execute("INSERT INTO public.run_log "
                   "SELECT current_schema(), pg_backend_pid()")
        op.execute("SELECT pg_sleep(0.1)")
        """)
    behind.write_ini(**{"tenantmigrate.startup": "all",
                        "tenantmigrate.startup_lock_wait": "120"})
    processes = [_load_app_process(behind) for _ in range(4)]
    outcomes = [p.communicate(timeout=300) + (p.returncode,)
                for p in processes]
    for _, err, code in outcomes:
        assert code == 0, err
    with db.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT schema, count(*) FROM public.run_log GROUP BY schema "
            "ORDER BY schema")).all()
    assert rows == [("tenant_a", 1), ("tenant_b", 1), ("tenant_c", 1)]
    assert version_of(db, "public") == ["s2"]
    for tenant in ("tenant_a", "tenant_b", "tenant_c"):
        assert version_of(db, tenant) == ["t3"]


def test_shared_mode_upgrades_the_shared_branch_only(behind, db):
    behind.write_ini(**{"tenantmigrate.startup": "shared"})
    process = _load_app_process(behind)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert version_of(db, "public") == ["s1"]
    assert version_of(db, "tenant_a") is None


def test_check_mode_refuses_a_behind_database(behind, db):
    behind.write_ini(**{"tenantmigrate.startup": "check"})
    with pytest.raises(StartupRefused) as info:
        get_app(behind.ini)
    message = str(info.value)
    assert "behind" in message and "tenant_a" in message
    assert "tenant-migrate" in message and "upgrade" in message
    assert version_of(db, "public") is None

    behind.run("upgrade", check=0)
    app = get_app(behind.ini)  # at the heads: starts
    app.registry.tenant_migrator.close()


def test_scripts_do_not_fire_the_hook(behind, db):
    behind.write_ini(**{"tenantmigrate.startup": "all"})
    env = bootstrap(behind.ini)  # __script__ = bootstrap
    env["registry"].tenant_migrator.close()
    env["closer"]()
    app = get_app(behind.ini, options={"__script__": "pshell"})
    app.registry.tenant_migrator.close()
    assert version_of(db, "public") is None
    # tenant-migrate bootstraps the app too (create-tenant), hook off.
    behind.run("upgrade", "shared", check=0)
    behind.run("create-tenant", "tenant_new", check=0)
    assert version_of(db, "tenant_a") is None
    assert version_of(db, "tenant_new") == ["t2"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_pserve(project):
    """Start the real pserve on a free loopback port; return (process,
    base url)."""
    port = _free_port()
    with open(project.ini, "a") as f:
        f.write(f"\n[server:main]\nuse = egg:waitress#main\n"
                f"listen = 127.0.0.1:{port}\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "pyramid.scripts.pserve", project.ini],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=project.root, env=project.env())
    return process, f"http://127.0.0.1:{port}"


def wait_for_http(process, url, attempts=600):
    """GET url until it answers or the process exits; bounded."""
    for _ in range(attempts):
        if process.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except OSError:
            time.sleep(0.1)
    return None


def stop(process):
    if process.poll() is None:
        process.kill()
    return process.communicate(timeout=60)[0]


def test_pserve_upgrades_on_start_then_serves(behind, db):
    behind.write_ini(**{"tenantmigrate.startup": "all"})
    process, url = start_pserve(behind)
    try:
        answer = wait_for_http(process, url + "/")
    finally:
        output = stop(process)
    assert answer == (200, "ok"), output
    assert version_of(db, "public") == ["s1"]
    assert version_of(db, "tenant_b") == ["t2"]


def test_pserve_refuses_to_start_behind_in_check_mode(behind, db):
    behind.write_ini(**{"tenantmigrate.startup": "check"})
    process, url = start_pserve(behind)
    try:
        process.wait(timeout=120)
    finally:
        output = stop(process)
    assert process.returncode != 0
    assert "StartupRefused" in output and "behind" in output
    assert version_of(db, "public") is None


def test_a_hook_that_cannot_tell_scripts_says_so(project, db, caplog):
    """An app factory that forgot set_tenantmigrate_global_config: the hook
    runs (it cannot tell pshell from a server) and warns; a refusal is
    logged as one line before the traceback."""
    project.app_factory = "call:tests.apps:main_without_global_config"
    project.write_standard_revisions()
    project.write_ini(**{"tenantmigrate.startup": "check"})
    with caplog.at_level("WARNING", logger="pyramid_tenantmigrate"):
        with pytest.raises(StartupRefused):
            get_app(project.ini, options={"__script__": "pshell"})
    messages = [r.getMessage() for r in caplog.records]
    assert any("set_tenantmigrate_global_config" in m
               and "cannot be told from a server" in m for m in messages)
    assert any(m.startswith("tenantmigrate.startup = check: the database "
                            "is behind") for m in messages)
