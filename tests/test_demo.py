"""The demo app end to end: WebTest over the WSGI app, and the real pserve
on loopback."""
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from webtest import TestApp

from pyramid_tenantmigrate.demo import main, served_url

from .conftest import REPO_ROOT, schema_exists, version_of
from .test_startup import _free_port, start_pserve, stop, wait_for_http

DEMO_SETTINGS = {
    "tenantmigrate.script_location": "pyramid_tenantmigrate.demo:migrations",
    "tenantmigrate.tenant_schemas_query":
        "SELECT schema_name FROM public.tenants ORDER BY schema_name",
    "tenantmigrate.startup": "all",
}


@pytest.fixture
def app(database_url):
    wsgi_app = main({}, **dict(DEMO_SETTINGS, **{
        "sqlalchemy.url": database_url}))
    yield TestApp(wsgi_app)
    wsgi_app.registry.tenant_migrator.close()


def notes_in(db, schema):
    with db.connect() as connection:
        return [row[0] for row in connection.execute(sa.text(
            f'SELECT title FROM "{schema}".notes ORDER BY id'))]


def test_startup_brought_the_demo_database_to_the_heads(app, db):
    assert version_of(db, "public") == ["s003_unique_tenant_names"]
    assert version_of(db, "tenant_acme") == ["t002_pinned_notes"]
    assert app.get("/").json["tenants"][0] == {"name": "Acme Corp",
                                               "schema": "tenant_acme"}
    assert "tenant_initech" in app.get("/status").text


def test_signup_provisions_the_tenant_in_the_request(app, db):
    response = app.post("/signup", {"name": "Umbrella",
                                    "schema": "tenant_umbrella"}, status=201)
    assert response.json["schema"] == "tenant_umbrella"
    assert version_of(db, "tenant_umbrella") == ["t002_pinned_notes"]
    # The TenantCreated subscriber seeded it, in the same transaction.
    assert notes_in(db, "tenant_umbrella") == ["Welcome"]
    assert app.get("/t/tenant_umbrella/notes").json["notes"][0][
        "title"] == "Welcome"


def test_a_signup_failing_after_provisioning_leaves_no_schema(app, db):
    # The schema is created first; the tenant row then violates the unique
    # name: the whole request is rolled back, schema and tables included.
    response = app.post("/signup", {"name": "Acme Corp",
                                    "schema": "tenant_acme2"}, status=409)
    assert "uq_tenants_name" in response.json["error"]
    assert not schema_exists(db, "tenant_acme2")
    with db.connect() as connection:
        assert connection.execute(sa.text(
            "SELECT count(*) FROM public.tenants")).scalar() == 3


def test_signup_refuses_bad_and_taken_names(app, db):
    response = app.post("/signup", {"name": "X", "schema": "Tenant-X"},
                        status=400)
    assert "invalid tenant schema name" in response.json["error"]
    response = app.post("/signup", {"name": "Acme 2",
                                    "schema": "tenant_acme"}, status=409)
    assert "already exists" in response.json["error"]
    assert notes_in(db, "tenant_acme") == []  # untouched


def test_two_tenants_never_see_each_others_notes(app, db):
    app.post("/t/tenant_acme/notes", {"title": "acme secret"}, status=201)
    app.post("/t/tenant_globex/notes", {"title": "globex secret"},
             status=201)
    acme = app.get("/t/tenant_acme/notes").json["notes"]
    globex = app.get("/t/tenant_globex/notes").json["notes"]
    assert [n["title"] for n in acme] == ["acme secret"]
    assert [n["title"] for n in globex] == ["globex secret"]
    # The same ids in both: they are separate tables.
    assert acme[0]["id"] == globex[0]["id"] == 1
    assert notes_in(db, "tenant_acme") == ["acme secret"]
    assert notes_in(db, "tenant_globex") == ["globex secret"]
    assert notes_in(db, "tenant_initech") == []
    # Pooled connections kept no tenant: a plain session sees public only.
    with db.connect() as connection:
        assert connection.exec_driver_sql(
            "SHOW search_path").scalar() == '"$user", public'
    app.get("/t/tenant_nobody/notes", status=404)


def test_pserve_serves_the_demo(project, database_url, db):
    project.write_ini(**dict(DEMO_SETTINGS, **{
        "tenantmigrate.tenant_schema_prefix": None}))
    process, url = start_pserve(project)
    try:
        answer = wait_for_http(process, url + "/")
        if answer is not None:
            signup = urllib_post(url + "/signup",
                                 {"name": "Hooli", "schema": "tenant_hooli"})
            notes = wait_for_http(process, url + "/t/tenant_hooli/notes")
    finally:
        output = stop(process)
    assert answer is not None and answer[0] == 200, output
    assert "tenant_acme" in answer[1]
    assert signup == 201
    assert notes[0] == 200 and "Welcome" in notes[1]
    assert version_of(db, "tenant_hooli") == ["t002_pinned_notes"]


def urllib_post(url, fields):
    import urllib.parse
    import urllib.request
    data = urllib.parse.urlencode(fields).encode()
    with urllib.request.urlopen(url, data=data, timeout=30) as response:
        return response.status


def test_pserve_development_ini_prints_the_urls_to_open(tmp_path, project,
                                                       database_url):
    """The quick start's 'pserve development.ini', on a free port and the
    test's database: the log says where to go."""
    port = _free_port()
    with open(os.path.join(REPO_ROOT, "development.ini")) as f:
        ini = f.read()
    ini = ini.replace("embedded://%(here)s/var/postgres",
                      database_url.replace("%", "%%"))
    ini = ini.replace("listen = 127.0.0.1:6543", f"listen = 127.0.0.1:{port}")
    path = tmp_path / "development.ini"
    path.write_text(ini)
    process = subprocess.Popen(
        [sys.executable, "-m", "pyramid.scripts.pserve", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=str(tmp_path), env=project.env())
    url = f"http://127.0.0.1:{port}"
    try:
        answer = wait_for_http(process, url + "/")
    finally:
        output = stop(process)
    assert answer is not None and answer[0] == 200, output
    assert f"The demo is served at {url}/ (its tenants)" in output
    for schema in ("tenant_acme", "tenant_globex", "tenant_initech"):
        assert f"\n  {url}/t/{schema}/notes\n" in output
    assert f"schema=tenant_umbrella {url}/signup" in output


@pytest.mark.parametrize("server, url", [
    ("listen = 127.0.0.1:6543", "http://127.0.0.1:6543"),
    ("listen = *:8080 [::1]:8081", "http://localhost:8080"),
    ("host = 0.0.0.0\nport = 7000", "http://localhost:7000"),
    ("listen = 127.0.0.1:%(http_port)s", "http://127.0.0.1:9999"),
])
def test_the_demo_reads_its_address_from_the_server_section(tmp_path, server,
                                                             url):
    path = tmp_path / "demo.ini"
    path.write_text(f"[server:main]\nuse = egg:waitress#main\n{server}\n")
    assert served_url(str(path), {"http_port": "9999"}) == url
    path.write_text("[server:other]\nlisten = 127.0.0.1:1\n")
    assert served_url(str(path)) is None
