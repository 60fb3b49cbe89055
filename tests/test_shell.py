"""'tenant-migrate <ini> shell TENANT': Pyramid's pshell, its request in the
tenant. The app is the demo, with its [pshell] setup (the cookiecutter's:
tm, dbsession, models)."""
import pytest
import sqlalchemy as sa

from pyramid_tenantmigrate.scripts.tenant_migrate import TenantMigrateCommand

from .test_demo import DEMO_SETTINGS, notes_in


@pytest.fixture
def demo(project):
    """The demo's database at the heads, except tenant_initech (at base)."""
    project.write_ini(**dict(DEMO_SETTINGS, **{
        "tenantmigrate.tenant_schema_prefix": None}))
    with open(project.ini, "a") as f:
        f.write("\n[pshell]\nsetup = pyramid_tenantmigrate.demo.pshell.setup"
                "\n")
    project.cli("upgrade", "--exclude-tenant", "tenant_initech", check=0)
    return project


class Runner:
    """A pshell runner ``(env, help)`` that runs ``code`` in the shell's
    namespace, as typed lines would, and keeps what it was given."""

    def __init__(self, code=""):
        self.code = code
        self.env = None

    def __call__(self, env, help):
        self.env, self.help = dict(env), help
        exec(self.code, env)


@pytest.fixture
def runner(monkeypatch):
    def install(code=""):
        runner = Runner(code)
        monkeypatch.setattr(TenantMigrateCommand, "shell_runner", runner)
        return runner
    return install


def test_code_typed_in_the_shell_writes_to_the_tenant(demo, db):
    """The real shell, with lines on its standard input."""
    code = "\n".join([
        'request.dbsession.add(models.Note(title="typed in the shell"))',
        "tm.commit()",
        'print("in", tenant, request.tenant)',
        ""])

    result = demo.run_process("shell", "tenant_globex", "-p", "python",
                              input=code, check=0)

    assert "in tenant_globex tenant_globex" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert notes_in(db, "tenant_globex") == ["typed in the shell"]
    assert notes_in(db, "tenant_acme") == []
    with db.connect() as connection:  # not the shared schema's either
        assert connection.execute(sa.text(
            "SELECT to_regclass('public.notes')")).scalar() is None


def test_the_shell_has_pshells_variables_and_the_tenant(demo, db, runner):
    shell = runner('dbsession.add(models.Note(title="from the shell"))\n'
                   "tm.commit()\n")

    result = demo.cli("shell", "tenant_acme", check=0)

    env = shell.env
    assert {"app", "root", "registry", "settings", "request",
            "root_factory"} <= set(env)
    assert env["settings"] is env["registry"].settings
    assert env["tenant"] == env["request"].tenant == "tenant_acme"
    # The [pshell] setup ran after the request was put in the tenant.
    assert env["dbsession"] is env["request"].dbsession
    assert "tenant       tenant_acme" in shell.help
    assert "settings     registry.settings" in shell.help
    assert "sqlalchemy.url" not in shell.help
    assert result.stderr == ""
    assert notes_in(db, "tenant_acme") == ["from the shell"]
    assert notes_in(db, "tenant_globex") == []

    # --setup instead of the [pshell] section's, as pshell's.
    shell = runner()
    demo.cli("shell", "tenant_globex", "--setup", "tests.apps:pshell_setup",
             check=0)
    assert shell.env["seen_by_setup"] == ("tenant_globex", "tenant_globex")
    assert "dbsession" not in shell.env


def test_a_tenant_behind_the_head_opens_with_a_warning(demo, runner):
    shell = runner()

    result = demo.cli("shell", "tenant_initech", check=0)

    assert shell.env["tenant"] == "tenant_initech"
    assert result.stderr.strip() == (
        "tenant-migrate: warning: tenant tenant_initech is at base, the "
        "tenant head is t002_pinned_notes: its tables may not be what the "
        "app's models say (tenant-migrate <ini> upgrade --tenant "
        "tenant_initech)")


@pytest.mark.parametrize("name", [
    "tenant_nope", "public", "tenantmigrate_spare_0",
    "tenant_acme; DROP SCHEMA public CASCADE", "tenant_acme\nx"])
def test_what_is_no_tenant_is_refused_before_any_shell(demo, db, runner,
                                                       name):
    with db.begin() as connection:
        connection.exec_driver_sql("CREATE SCHEMA tenantmigrate_spare_0")
    shell = runner()

    result = demo.cli("shell", name, check=2)

    assert result.stderr == (f"tenant-migrate: error: {name!r} is not a "
                             "tenant: the tenant source does not list it\n")
    assert shell.env is None


def test_bad_usage_is_named(demo, runner, monkeypatch):
    shell = runner()
    for args, message in (
            ((), "shell needs a tenant name"),
            (("tenant_acme", "tenant_globex"), "shell takes one tenant name"),
            (("tenant_acme", "--tenant", "x"), "unrecognized arguments")):
        result = demo.cli("shell", *args, check=2)
        assert message in result.stderr, result.stderr
    assert shell.env is None
    # A shell pshell does not know: the same exit, nothing opened.
    monkeypatch.setattr(TenantMigrateCommand, "shell_runner", None)
    result = demo.cli("shell", "tenant_acme", "-p", "nosuchshell", check=2)
    assert 'could not find a shell named "nosuchshell"' in result.stderr
    assert "Traceback" not in result.stderr
