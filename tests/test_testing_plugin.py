"""pyramid_tenantmigrate.testing, as an app's own test suite uses it: a
throwaway database, a tenant per test, a WebTest app bound to it."""
import os
import subprocess
import sys
import textwrap

APP = '''
import sqlalchemy as sa
import zope.sqlalchemy
from pyramid.config import Configurator
from sqlalchemy.orm import declarative_base, sessionmaker

Base = declarative_base()


class Note(Base):
    __tablename__ = "notes"
    id = sa.Column(sa.Integer, primary_key=True)
    title = sa.Column(sa.Text, nullable=False)


def notes(request):
    if request.method == "POST":
        request.dbsession.add(Note(title=request.params["title"]))
        request.dbsession.flush()
    titles = request.dbsession.scalars(sa.select(Note.title)).all()
    return {"tenant": request.tenant, "titles": titles}


def main(global_config, **settings):
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_tenantmigrate")
        factory = sessionmaker(bind=config.registry.tenant_migrator.engine)

        def dbsession(request):
            session = factory(info={"request": request})
            zope.sqlalchemy.register(session, transaction_manager=request.tm)
            return session

        config.add_request_method(dbsession, reify=True)
        config.add_route("notes", "/notes")
        config.add_view(notes, route_name="notes", renderer="json")
    return config.make_wsgi_app()
'''

CONFTEST = '''
import pytest

from myapp import main

pytest_plugins = ["pyramid_tenantmigrate.testing"]


@pytest.fixture(scope="session")
def app(tenantmigrate_settings, tenantmigrate_migrator):
    return main({}, **tenantmigrate_settings)


@pytest.fixture
def tenantmigrate_registry(app):
    return app.registry
'''

TESTS = '''
import webtest


def test_notes_are_the_tenants(app, tenant, tenant_testapp):
    testapp = tenant_testapp(app)
    testapp.post("/notes", {"title": "first"})
    assert testapp.get("/notes").json == {"tenant": tenant,
                                          "titles": ["first"]}


def test_each_test_has_a_tenant_of_its_own(app, tenant, tenant_testapp):
    assert tenant_testapp(app).get("/notes").json["titles"] == []


def test_no_tenant_no_notes(app):
    webtest.TestApp(app).get("/notes", headers={"Host": "nope.example.com"},
                             status=404)
'''


def test_an_apps_suite_with_the_fixtures(project, server_url, server_engine,
                                         tmp_path):
    project.write_revision("tenant", "t1", None, """
        op.create_table("notes",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("title", sa.Text, nullable=False))
        """)
    suite = tmp_path / "suite"
    (suite / "tests").mkdir(parents=True)
    (suite / "myapp.py").write_text(APP)
    (suite / "tests" / "conftest.py").write_text(CONFTEST)
    (suite / "tests" / "test_notes.py").write_text(TESTS)
    (suite / "testing.ini").write_text(textwrap.dedent(f"""\
        [app:main]
        use = call:myapp:main
        sqlalchemy.url = {server_url.replace("%", "%%")}
        tenantmigrate.script_location = {project.migrations}
        tenantmigrate.tenant_schema_prefix = tenant_
        tenantmigrate.tenant_from = subdomain
        tenantmigrate.tenant_domain = example.com
        tenantmigrate.spare_schemas = 2
        """))
    with server_engine.connect() as connection:
        before = set(connection.exec_driver_sql(
            "SELECT datname FROM pg_database").scalars())

    # The app's suite, on its own: not this suite's options (CI's coverage
    # floor) nor its coverage hooks.
    env = {key: value for key, value in os.environ.items()
           if key != "PYTEST_ADDOPTS" and not key.startswith("COV_CORE_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests"], cwd=suite, capture_output=True, text=True, timeout=300,
        env=dict(env, PYTHONPATH=str(suite)))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    with server_engine.connect() as connection:
        after = set(connection.exec_driver_sql(
            "SELECT datname FROM pg_database").scalars())
    assert after == before  # the throwaway database is gone
