"""``tenant-migrate``: Alembic's commands for a schema-per-tenant database.

Usage: ``tenant-migrate development.ini <command> [options] [var=value ...]``.
The app's settings are read from the ini file (``tenantmigrate.*`` and
``sqlalchemy.url``); ``var=value`` pairs fill ``%(var)s`` in it, as for
``pserve``. Exit codes: 0 success, 1 some schema failed, 2 bad usage or
configuration.
"""
import argparse
import configparser
import functools
import gc
import json
import re
import sys
import textwrap

from ..errors import TenantMigrateError, UsageError
from .progress import Progress

# Pyramid, Alembic, SQLAlchemy and the engine are imported by the commands
# that use them: 'tenant-migrate --help' and bad usage answer at once.

#: What reading or loading an ini file raises when the file is at fault
#: (missing, malformed, a missing %(var)s): exit 2, not a traceback.
_UNREADABLE_CONFIG = (OSError, LookupError, ValueError, configparser.Error)

#: ``name=value`` on the command line fills ``%(name)s`` in the ini file;
#: anything else with an ``=`` (``tenant@t1=``) is a positional argument.
_CONFIG_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*=")


def _positive_int(text):
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number, got {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {number}")
    return number


def _wait(text):
    from ..settings import wait_seconds
    try:
        return wait_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


#: A list item whose JSON is longer than this is itself indented (a
#: branch of an upgrade, with every schema in it), not one line.
_LONGEST_LINE = 2000


def json_text(document, indent=""):
    """``document`` as JSON for people and programs alike: objects
    indented by two spaces, as ``json.dumps`` with ``indent=2`` would,
    but the items of a list of objects one to a line (a tenant, a run, a
    finding), written by json's C encoder; an item longer than
    :data:`_LONGEST_LINE` is indented in turn. (``indent`` makes json use
    its pure-Python encoder: 0.3 s for 10,000 tenants, a tenth of what
    doctor takes.)"""
    inner = indent + "  "
    if isinstance(document, dict) and document:
        return "{\n" + ",\n".join(
            f"{inner}{_json_key(key)}: {json_text(value, inner)}"
            for key, value in document.items()) + f"\n{indent}}}"
    if isinstance(document, list) and any(
            isinstance(item, (dict, list)) for item in document):
        return "[\n" + ",\n".join(
            inner + _json_line(item, inner) for item in document) + (
            f"\n{indent}]")
    return json.dumps(document)


def _json_line(item, indent):
    line = json.dumps(item)
    if len(line) > _LONGEST_LINE and isinstance(item, (dict, list)):
        return json_text(item, indent)
    return line


def _json_key(key):
    if isinstance(key, str):
        return json.dumps(key)
    # As json.dumps writes a number, true, false or null key (a string),
    # or refuses any other.
    return json.dumps({key: 0})[1:-4]


def _get_config_loader(config_uri):
    from pyramid.scripts.common import get_config_loader
    return get_config_loader(config_uri)


def _bootstrap(config_uri, options=None):
    from pyramid.paster import bootstrap
    return bootstrap(config_uri, options=options)


def _parse_vars(args):
    from pyramid.scripts.common import parse_vars
    return parse_vars(args)


class SubscriberFailed(TenantMigrateError):
    """The app's code failed while a tenant was created (exit 1)."""


def make_parser():
    """The console script's argument parser (the docs' CLI reference is
    made from it)."""
    return TenantMigrateCommand(["tenant-migrate"]).parser


def main(argv=sys.argv, quiet=False):
    """Console script entry point; returns the exit code."""
    command = TenantMigrateCommand(argv, quiet)
    return command.run()


def _add_tenant_selection(parser):
    parser.add_argument(
        "--tenant", action="append", default=[], metavar="NAME",
        help="only this tenant schema (repeatable)")
    parser.add_argument(
        "--exclude-tenant", action="append", default=[], metavar="NAME",
        help="skip this tenant schema (repeatable)")


#: The options of commands that run over tenants: flags -> add_argument's
#: keywords (``upgrade`` takes them all, ``run`` those that apply).
_RUN_OPTIONS = {
    ("--tenants-from",): dict(
        metavar="FILE",
        help="only the tenants named in FILE, one per line ('-': stdin)"),
    ("--shard",): dict(
        metavar="I/N",
        help="only shard I of N of the tenants (a stable split by name), "
             "tenant branch only; shards run side by side"),
    ("--retry-failed",): dict(
        action="store_true",
        help="only the tenants that failed in the last run of this command"),
    ("--report",): dict(
        metavar="PATH", help="also write the run report as JSON to PATH"),
    ("--sql",): dict(
        action="store_true",
        help="print the SQL for each schema instead of running it "
             "(offline mode); a 'start:end' target renders from 'start'"),
    ("--fail-fast",): dict(
        action="store_true", default=None,
        help="stop at the first failing tenant (default: go on and report); "
             "tenants already running on other workers finish"),
    ("--workers",): dict(
        type=_positive_int, default=None, metavar="N",
        help="parallel connections for tenants (default: the "
             "tenantmigrate.workers setting, 4)"),
    ("--json",): dict(
        action="store_true", help="print the run report as JSON on stdout"),
    ("--wait",): dict(
        type=_wait, default=None, metavar="SECONDS",
        help="wait this long for another run's lock (default: the "
             "tenantmigrate.lock_wait setting, 0: exit at once)"),
    ("-v", "--verbose"): dict(
        action="store_true", help="print a line per schema as it finishes"),
}


#: The options of the commands calling a function in each tenant.
_TASK_OPTIONS = ("--tenants-from", "--shard", "--report", "--fail-fast",
                 "--workers", "--json", "--verbose")


def _add_run_options(parser, only=None):
    _add_tenant_selection(parser)
    for flags, keywords in _RUN_OPTIONS.items():
        if only is None or flags[-1] in only:
            parser.add_argument(*flags, **keywords)


def _fleet_doctor(member, tenants, **selection):
    """``doctor`` on one database of a fleet, for the named tenants
    placed there."""
    from .. import commands
    if tenants:
        where = member.fleet.all_tenants()[0]
        unknown = [name for name in tenants if name not in where]
        if unknown:
            raise UsageError("unknown tenant(s): " + ", ".join(unknown))
        tenants = tuple(t for t in tenants if where[t] ==
                        member.database_name) or None
        if tenants is None:
            return None  # none of them here
    return commands.doctor(member, tenants=tenants or (), **selection)


class TenantMigrateCommand:
    """Parse arguments, load the app's settings, run one command."""

    description = textwrap.dedent("""\
        Run Alembic migrations for the shared schema and every tenant schema
        of a Pyramid application's PostgreSQL database.

        The 'shared' branch is applied once to the shared schema (public);
        the 'tenant' branch to every tenant schema, each in its own
        transaction and with its own version table. Settings come from the
        application section of the ini file (tenantmigrate.*).
    """)

    # One loader for logging and settings, as pshell does: finding it scans
    # every installed distribution's entry points.
    get_config_loader = staticmethod(_get_config_loader)
    #: Commands that list tenants, and so need the tenant source.
    tenant_commands = frozenset({"upgrade", "downgrade", "stamp", "current",
                                 "lint", "doctor", "move-tenant"})
    stdout = sys.stdout
    stderr = sys.stderr

    def __init__(self, argv, quiet=False):
        self.quiet = quiet
        self.parser = self._make_parser()
        self.argv = argv

    def _make_parser(self):
        command = self

        class Parser(argparse.ArgumentParser):
            # Messages go to the command's streams (a test's, or the
            # caller's), not to sys.stdout/sys.stderr directly.
            def _print_message(self, message, file=None):
                if message:
                    stream = (command.stdout if file is sys.stdout
                              else command.stderr)
                    stream.write(message)

        parser = Parser(
            prog="tenant-migrate", description=self.description,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("config_uri", help="the ini file, e.g. "
                            "development.ini or development.ini#myapp")
        sub = parser.add_subparsers(dest="command", metavar="command")
        sub.required = True

        p = sub.add_parser("init", help="write a new migrations folder")
        p.add_argument("args", nargs="*", metavar="[directory] [var=value]")

        p = sub.add_parser("revision", help="write a new revision file")
        p.add_argument("-m", "--message", help="the revision's message")
        p.add_argument("--branch", required=True, choices=["shared", "tenant"],
                       help="the branch the revision belongs to")
        p.add_argument("--rev-id", help="the revision id to use")
        p.add_argument("--autogenerate", action="store_true",
                       help="write the operations that bring the database "
                            "to the branch's models (tenantmigrate."
                            "shared_metadata / tenant_metadata)")
        p.add_argument("args", nargs="*", metavar="var=value")

        p = sub.add_parser(
            "check", help="exit 1 if models and migrations disagree")
        p.add_argument("--branch", choices=["shared", "tenant"],
                       help="check only this branch (default: both)")
        p.add_argument("args", nargs="*", metavar="var=value")

        p = sub.add_parser("upgrade", help="upgrade shared, then tenants")
        p.add_argument("args", nargs="*", metavar="[target] [var=value]",
                       help="heads (default), shared, tenant, tenant@<rev>, "
                            "tenant@+1 or a revision id")
        _add_run_options(p)
        p.add_argument("--create-missing", action="store_true",
                       help="create tenant schemas the tenant source lists "
                            "but the database lacks")
        p.add_argument("--force", action="store_true",
                       help="upgrade even when lint finds errors "
                            "(tenantmigrate.lint_before_upgrade)")
        p.add_argument("--waves", metavar="SPEC",
                       help="tenants in waves of these sizes, e.g. "
                            "1,5%%,25%%,rest, halting when a wave fails or "
                            "slows down (default: the tenantmigrate.waves "
                            "setting); a halted run resumes with the next "
                            "upgrade")
        p.add_argument("--canary", action="append", default=[],
                       metavar="NAME",
                       help="this tenant goes in the first wave(s) "
                            "(repeatable, in order)")
        p.add_argument("--wave-pause", action="store_true",
                       help="ask on the terminal before each wave after "
                            "the first")

        p = sub.add_parser(
            "lint", help="lint the pending revisions' SQL for lock hazards "
            "(squawk), with each tenant's share; exit 1 on errors")
        p.add_argument("args", nargs="*", metavar="[rev1:rev2] [var=value]",
                       help="the revisions to lint (default: from the "
                            "oldest version any schema is at to the heads)")
        p.add_argument("--json", action="store_true", help="print JSON")

        p = sub.add_parser("downgrade", help="downgrade tenants, then shared")
        p.add_argument("args", nargs="*", metavar="target [var=value]",
                       help="tenant@-1, tenant@<rev>, tenant@base, base ...")
        _add_run_options(p)

        p = sub.add_parser("stamp",
                           help="set version tables without migrating")
        p.add_argument("args", nargs="*", metavar="target [var=value]")
        p.add_argument("--yes", action="store_true",
                       help="set versions away from the revision a schema "
                            "is at without asking")
        _add_run_options(p)

        p = sub.add_parser("current", help="show where each schema stands")
        _add_tenant_selection(p)
        p.add_argument("-v", "--verbose", action="store_true",
                       help="list every tenant")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("args", nargs="*", metavar="var=value")

        p = sub.add_parser(
            "doctor", help="exit 1 if a tenant's tables are not what its "
            "revision's migrations build (drift)")
        _add_run_options(p, only=("--tenants-from", "--shard"))
        p.add_argument("-v", "--verbose", action="store_true",
                       help="name every tenant and every difference")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("args", nargs="*", metavar="var=value")

        p = sub.add_parser("runs", help="list recent runs and their outcome")
        p.add_argument("-n", "--limit", type=int, default=20,
                       help="how many runs (default 20)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("args", nargs="*", metavar="var=value")

        p = sub.add_parser(
            "fill-spares", help="keep spare tenant schemas ready at the "
            "tenant head (tenantmigrate.spare_schemas), so create-tenant "
            "is a rename")
        p.add_argument("--count", type=int, default=None, metavar="N",
                       help="how many (default: the tenantmigrate."
                            "spare_schemas setting; 0 drops them all)")
        p.add_argument("--wait", type=_wait, default=None, metavar="SECONDS",
                       help="wait this long for another run's lock")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("args", nargs="*", metavar="var=value")

        p = sub.add_parser(
            "run", help="call an app's function in each tenant, one "
            "transaction each (a data fix, a seed)")
        p.add_argument("args", nargs="*",
                       metavar="module:function [arg ...] [var=value]",
                       help="the function, called with a TenantTask per "
                            "tenant (its .args: the arguments after it); "
                            "or a script, path/to/script.py[:function], "
                            "its function run by default")
        _add_run_options(p, only=_TASK_OPTIONS)

        p = sub.add_parser(
            "seed", help="run the app's seed function (tenantmigrate.seed) "
            "in each tenant, as run does")
        p.add_argument("args", nargs="*", metavar="var=value")
        _add_run_options(p, only=_TASK_OPTIONS)

        p = sub.add_parser(
            "shell", help="open pshell with its request in one tenant "
            "(request.tenant, the request's session, tenant)")
        p.add_argument("-p", "--python-shell", metavar="NAME",
                       help="the shell to use, as pshell's -p (python, "
                            "ipython, bpython ...)")
        p.add_argument("--setup", metavar="DOTTED",
                       help="a callable given the environment before the "
                            "shell starts, instead of the [pshell] "
                            "section's setup")
        p.add_argument("args", nargs="*", metavar="TENANT [var=value]")

        p = sub.add_parser(
            "placements", help="a fleet's tenants per database, and what "
            "does not match (sign-ups and moves cut short, schemas placed "
            "nowhere); --repair mends it")
        p.add_argument("--repair", action="store_true",
                       help="drop schemas of sign-ups cut short, finish or "
                            "undo moves cut short, place tenants found on "
                            "exactly one database")
        p.add_argument("--wait", type=_wait, default=60.0,
                       metavar="SECONDS",
                       help="wait this long for sign-ups in flight "
                            "(default 60)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("args", nargs="*", metavar="var=value")

        p = sub.add_parser(
            "move-tenant", help="move a tenant to another database of the "
            "fleet: copied, checked (revision, row counts), placement "
            "switched, source dropped; writes to it wait meanwhile")
        p.add_argument("--to", metavar="DATABASE",
                       help="the database to move it to (one of "
                            "tenantmigrate.databases)")
        p.add_argument("--wait", type=_wait, default=60.0,
                       metavar="SECONDS",
                       help="wait this long for a run's last look at the "
                            "tenants, and for writes in flight to the "
                            "tenant (default 60)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("args", nargs="*", metavar="NAME [var=value]")

        p = sub.add_parser("history", help="list revisions")
        p.add_argument("-r", "--rev-range",
                       help="e.g. tenant@base:tenant@head")
        p.add_argument("-v", "--verbose", action="store_true")
        p.add_argument("args", nargs="*", metavar="var=value")

        p = sub.add_parser("heads", help="show each branch's head")
        p.add_argument("-v", "--verbose", action="store_true")
        p.add_argument("args", nargs="*", metavar="var=value")
        self._add_tenant_commands(sub)
        for name, p in sub.choices.items():
            if name not in self.offline_commands:
                p.add_argument(
                    "--database", action="append", default=[],
                    metavar="NAME",
                    help="in a fleet (tenantmigrate.databases): only this "
                         "database (repeatable)")
        return parser

    def out(self, text):
        if not self.quiet:
            print(text, file=self.stdout)

    def out_report(self, report, **render):
        """``report`` as JSON (``--json``) or as text
        (``render_text(**render)``)."""
        if self.options.json:
            self.out(json_text(report.to_dict()))
        else:
            self.out(report.render_text(**render))

    def err(self, text):
        print(text, file=self.stderr)

    def run(self):
        try:
            # var=value may come after options too: what argparse leaves
            # over is taken as more positional arguments, options are not.
            self.options, extra = self.parser.parse_known_args(self.argv[1:])
            unknown = [a for a in extra if a.startswith("-")]
            if unknown or not hasattr(self.options, "args"):
                self.parser.error("unrecognized arguments: "
                                  + " ".join(unknown or extra))
            self.options.args.extend(extra)
        except SystemExit as exc:
            return exc.code
        positionals = [a for a in self.options.args
                       if not _CONFIG_VAR.match(a)]
        config_vars = _parse_vars([a for a in self.options.args
                                   if _CONFIG_VAR.match(a)])
        try:
            return self._run(positionals, config_vars)
        except TenantMigrateError as exc:
            self.err(f"tenant-migrate: error: {exc}")
            return exc.exit_code
        finally:
            migrator = getattr(self, "migrator", None)
            if migrator is not None:
                migrator.close()

    #: Commands that never connect to the database.
    offline_commands = frozenset({"init"})

    def _load(self, config_uri, config_vars):
        from ..migrator import TenantMigrator
        try:
            loader = self.get_config_loader(config_uri)
            loader.setup_logging(config_vars)
            try:
                settings = loader.get_wsgi_app_settings(defaults=config_vars)
            except ImportError:
                # The app cannot be imported (yet): its settings can still
                # be read; commands that need the app say so when loading it.
                section = "app:" + (config_uri.partition("#")[2] or "main")
                settings = dict(loader.get_settings(section, config_vars))
        except _UNREADABLE_CONFIG as exc:
            raise UsageError(f"cannot read {config_uri}: {exc}") from None
        self.migrator = TenantMigrator.from_settings(
            settings,
            require_url=self.options.command not in self.offline_commands)
        return self.migrator

    #: Commands that run over every database of a fleet (``--database``
    #: narrows them), and those that run on one (``--database NAME``).
    fleet_commands = frozenset({"upgrade", "downgrade", "stamp", "current",
                                "doctor",
                                "runs", "placements", "create-tenant",
                                "move-tenant",
                                "revision", "check", "history", "heads"})
    one_database_commands = frozenset({"lint", "fill-spares"})

    def _fleet_member(self, migrator, command):
        """The migrator ``command`` runs with, given ``--database``."""
        databases = getattr(self.options, "database", None) or []
        if not migrator.runs_fleet:
            if databases:
                raise UsageError("--database is for a fleet: "
                                 "tenantmigrate.databases is not set")
            return migrator
        names = ", ".join(migrator.fleet.names)
        if command in self.one_database_commands:
            if len(databases) != 1:
                raise UsageError(f"{command} runs on one database of the "
                                 f"fleet: give --database NAME ({names})")
            return migrator.fleet.database(databases[0])
        if command not in self.fleet_commands:
            raise UsageError(
                f"{command} does not run on a fleet yet "
                f"(tenantmigrate.databases lists {names})")
        for name in databases:
            migrator.fleet.database(name)  # unknown: exit 2
        return migrator

    def _run(self, positionals, config_vars):
        options = self.options
        command = options.command
        migrator = self._fleet_member(
            self._load(options.config_uri, config_vars), command)
        method = getattr(self, "command_" + command.replace("-", "_"))
        # What is loaded by now (SQLAlchemy, Alembic, the app's settings)
        # outlives the command: the collector need not walk it each time
        # the command's objects (rows for 10,000 tenants) set off a full
        # collection. Not when the caller manages frozen objects itself
        # (unfreezing would undo its freeze too).
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        try:
            if (command in self.tenant_commands
                    and migrator.settings.tenant_source_setting is None):
                # No tenant source in the settings: the app may set one in
                # code (config.set_tenant_source); load it and use its
                # migrator.
                env = self._bootstrap_app()
                try:
                    return method(self.migrator, positionals)
                finally:
                    env["closer"]()
            return method(migrator, positionals)
        finally:
            if freeze:
                gc.unfreeze()

    def _one_positional(self, positionals, name, required):
        if len(positionals) > 1:
            raise UsageError(
                f"{self.options.command} takes one {name}, got "
                + " ".join(positionals))
        if required and not positionals:
            raise UsageError(f"{self.options.command} needs a {name}")
        return positionals[0] if positionals else None

    # One method per command, each a thin layer over commands.*

    def command_init(self, migrator, positionals):
        from .. import commands
        directory = self._one_positional(positionals, "directory", False)
        path = commands.init(migrator, directory)
        self.out(f"Wrote a migrations folder in {path}")
        return 0

    def command_revision(self, migrator, positionals):
        from .. import commands
        self._one_positional(positionals, "argument", False)
        script = commands.revision(
            migrator, self.options.message, self.options.branch,
            rev_id=self.options.rev_id,
            autogenerate=self.options.autogenerate)
        self.out(f"Wrote {script.path} ({self.options.branch} branch)")
        return 0

    def command_check(self, migrator, positionals):
        from .. import autogenerate, commands
        self._one_positional(positionals, "argument", False)
        branches = ((self.options.branch,) if self.options.branch
                    else ("shared", "tenant"))
        differences = commands.check(migrator, branches)
        for branch, diffs in differences.items():
            if not diffs:
                self.out(f"{branch}: no differences")
                continue
            self.out(f"{branch}: {len(diffs)} difference(s) between the "
                     "models and the migrations:")
            for diff in diffs:
                self.out(f"  {autogenerate.describe_diff(diff)}")
        return 1 if any(differences.values()) else 0

    def command_upgrade(self, migrator, positionals):
        from .. import commands
        from ..errors import LintRefused
        target = self._one_positional(positionals, "target", False)
        try:
            return self._run_report(
                commands.upgrade, migrator, target or "heads",
                force=self.options.force,
                create_missing=self.options.create_missing,
                waves=self.options.waves,
                canaries=tuple(self.options.canary),
                confirm_wave=self._wave_pause())
        except LintRefused as exc:
            self.err(exc.report.render_text())
            raise

    def _wave_pause(self):
        """``--wave-pause``: a question on the terminal after each wave but
        the last; ``None`` without it."""
        if not self.options.wave_pause:
            return None
        if not self.stdin.isatty():
            raise UsageError("--wave-pause asks on the terminal, but stdin "
                             "is not one; run it from a terminal, or use "
                             "tenantmigrate.wave_check to decide in code")

        def confirm(wave):
            self.err(f"wave {wave.index} done: {len(wave.schemas)} "
                     f"tenant(s), {len(wave.failures)} failed. Go on with "
                     "the next wave? [y/N]")
            return self.stdin.readline().strip().lower() in ("y", "yes")
        return confirm

    def command_lint(self, migrator, positionals):
        from .. import commands
        rev_range = self._one_positional(positionals, "revision range",
                                         False)
        report = commands.lint(migrator, rev_range)
        self.out_report(report)
        return 0 if report.ok else 1

    def command_downgrade(self, migrator, positionals):
        from .. import commands
        target = self._one_positional(positionals, "target", True)
        return self._run_report(commands.downgrade, migrator, target)

    def command_stamp(self, migrator, positionals):
        from .. import commands
        from ..run import ConfirmationNeeded
        target = self._one_positional(positionals, "target", True)
        try:
            return self._run_report(commands.stamp, migrator, target,
                                    yes=self.options.yes)
        except ConfirmationNeeded as exc:
            if self.options.yes or not self.stdin.isatty():
                raise
            self.err(f"{exc}\nType 'yes' to stamp them all the same:")
            if self.stdin.readline().strip() != "yes":
                raise UsageError(
                    "not confirmed; nothing was stamped") from None
            return self._run_report(commands.stamp, migrator, target,
                                    yes=True)

    def _tenant_names(self):
        names = list(self.options.tenant)
        path = self.options.tenants_from
        if path:
            try:
                if path == "-":
                    data = self.stdin.buffer.read() if hasattr(
                        self.stdin, "buffer") else self.stdin.read().encode()
                else:
                    with open(path, "rb") as f:
                        data = f.read()
                lines = data.decode("utf-8").splitlines()
            except OSError as exc:
                raise UsageError(f"cannot read --tenants-from {path}: "
                                 f"{exc.strerror}") from None
            except UnicodeDecodeError as exc:
                raise UsageError(
                    f"--tenants-from {path} is not UTF-8 text (byte "
                    f"{exc.start}): give one tenant name per line") from None
            names.extend(line.strip() for line in lines
                         if line.strip() and not line.startswith("#"))
            if not names:
                raise UsageError(f"--tenants-from {path} names no tenant")
        return names

    def _run_report(self, fn, migrator, target, **extra):
        from ..tenants import parse_shard
        options = self.options
        progress = Progress(self.stderr, tty=self.stderr.isatty(),
                            verbose=options.verbose)
        report = fn(
            migrator, target, tenants=tuple(self._tenant_names()),
            exclude_tenants=tuple(options.exclude_tenant), sql=options.sql,
            output=self.stdout, fail_fast=options.fail_fast,
            progress=progress, config_uri=options.config_uri,
            lock_wait=options.wait, workers=options.workers,
            shard=parse_shard(options.shard) if options.shard else None,
            retry_failed=options.retry_failed,
            databases=tuple(options.database), **extra)
        progress.finish_line()
        return self._print_report(report)

    def _print_report(self, report):
        options = self.options
        # Serialised only when asked for: at 10,000 tenants it costs more
        # than reading their versions.
        if options.report or options.json:
            document = json_text(report.to_dict())
        if options.report:
            try:
                with open(options.report, "w") as f:
                    f.write(document + "\n")
            except OSError as exc:
                self.err(f"tenant-migrate: cannot write --report "
                         f"{options.report}: {exc.strerror}")
        if options.json:
            self.out(document)
        else:
            # With --sql, stdout is the SQL script: the summary goes aside.
            text = report.render_text()
            if getattr(options, "sql", False):
                self.err(text)
            else:
                self.out(text)
        return 0 if report.ok else 1

    def command_run(self, migrator, positionals):
        from ..tasks import resolve_task, run_in_tenants
        if not positionals:
            raise UsageError("run needs the function to call, as "
                             "package.module:function or script.py")
        name, *args = positionals
        try:
            task = resolve_task(name)
        except ValueError as exc:
            raise UsageError(f"run: {exc}") from None
        return self._in_each_tenant(functools.partial(
            run_in_tenants, task=task, args=tuple(args), name=name))

    def command_seed(self, migrator, positionals):
        from ..seeds import seed_function, seed_tenants
        if positionals:
            raise UsageError(
                "seed takes no argument (the function is the "
                "tenantmigrate.seed setting), got " + " ".join(positionals))
        seed_function(migrator)  # not set: say so before loading the app
        return self._in_each_tenant(seed_tenants)

    def _in_each_tenant(self, run):
        """Load the app, call ``run(migrator, registry=..., <the selection
        options>)`` (:func:`..tasks.run_in_tenants` or one built on it),
        print its report."""
        from ..tenants import parse_shard
        env = self._bootstrap_app()
        options = self.options
        progress = Progress(self.stderr, tty=self.stderr.isatty(),
                            verbose=options.verbose)
        try:
            report = run(
                self.migrator, tenants=tuple(self._tenant_names()),
                exclude_tenants=tuple(options.exclude_tenant),
                shard=parse_shard(options.shard) if options.shard else None,
                workers=options.workers, fail_fast=options.fail_fast,
                registry=env["registry"], progress=progress)
        finally:
            env["closer"]()
        progress.finish_line()
        report.config_uri = options.config_uri
        return self._print_report(report)

    def command_runs(self, migrator, positionals):
        from .. import commands
        self._one_positional(positionals, "argument", False)
        rows = commands.runs(migrator, self.options.limit)
        if self.options.database:
            rows = [row for row in rows
                    if row.database in self.options.database]
        if self.options.json:
            self.out(json_text([row.to_dict() for row in rows]))
            return 0
        if not rows:
            self.out("no runs recorded yet")
        fleet_run = None
        for row in rows:
            if row.fleet_run and row.fleet_run != fleet_run:
                self.out(f"fleet run {row.fleet_run}:")
            fleet_run = row.fleet_run
            counts = ", ".join(f"{n} {k}" for k, n in sorted(
                (row.counts or {}).items()))
            took = (f"{(row.finished - row.started).total_seconds():.1f}s"
                    if row.finished else "-")
            self.out((f"[{row.database}] " if row.database else "")
                     + f"#{row.id} {row.started:%Y-%m-%d %H:%M:%S} "
                     f"{row.command} {row.target or ''} {row.status} "
                     f"({took}) on {row.host} pid {row.pid}"
                     + (f": {counts}" if counts else ""))
            for failure in (row.failures or [])[:5]:
                if failure.get("schema"):
                    self.out(f"    {failure.get('status')} "
                             f"{failure['schema']}: {failure.get('error')}")
        return 0

    def command_current(self, migrator, positionals):
        from .. import commands
        self._one_positional(positionals, "argument", False)
        status = commands.current(migrator, tenants=self.options.tenant,
                                  exclude_tenants=self.options.exclude_tenant,
                                  databases=tuple(self.options.database))
        self.out_report(status, verbose=self.options.verbose)
        return 0

    def command_doctor(self, migrator, positionals):
        from .. import commands
        from ..tenants import parse_shard
        self._one_positional(positionals, "argument", False)
        options = self.options
        selection = dict(
            tenants=tuple(self._tenant_names()),
            exclude_tenants=tuple(options.exclude_tenant),
            shard=parse_shard(options.shard) if options.shard else None)
        if migrator.runs_fleet:
            from ..fleetrun import each_database
            report = each_database(migrator, _fleet_doctor,
                                   tuple(options.database), **selection)
        else:
            report = commands.doctor(migrator, **selection)
        self.out_report(report, verbose=options.verbose)
        return 0 if report.ok else 1

    def command_fill_spares(self, migrator, positionals):
        from .. import commands
        self._one_positional(positionals, "argument", False)
        count = self.options.count
        if count is not None and count < 0:
            raise UsageError("--count must be 0 or more")
        report = commands.fill_spares(migrator, count=count,
                                      lock_wait=self.options.wait)
        self.out_report(report)
        return 0

    def command_placements(self, migrator, positionals):
        from ..placement import repair
        self._one_positional(positionals, "argument", False)
        if not migrator.runs_fleet:
            raise UsageError("placements is for a fleet: "
                             "tenantmigrate.databases is not set")
        report = repair(migrator, fix=self.options.repair,
                        lock_wait=self.options.wait)
        self.out_report(report)
        return 0 if report.ok else 1

    def command_move_tenant(self, migrator, positionals):
        from ..moving import move_tenant
        name = self._one_positional(positionals, "tenant name", True)
        if not migrator.runs_fleet:
            raise UsageError("move-tenant is for a fleet: "
                             "tenantmigrate.databases is not set")
        if self.options.database:
            raise UsageError("move-tenant takes --to DATABASE (where the "
                             "tenant goes), not --database")
        if not self.options.to:
            raise UsageError("move-tenant needs --to DATABASE (one of "
                             + ", ".join(migrator.fleet.names) + ")")
        report = move_tenant(migrator, name, self.options.to,
                             wait=self.options.wait)
        self.out_report(report)
        return 0

    def command_history(self, migrator, positionals):
        from .. import commands
        self._one_positional(positionals, "argument", False)
        commands.history(migrator, self.options.rev_range,
                         self.options.verbose, output=self.stdout)
        return 0

    def command_heads(self, migrator, positionals):
        from .. import commands
        self._one_positional(positionals, "argument", False)
        commands.heads(migrator, self.options.verbose, output=self.stdout)
        return 0


    # Tenant provisioning: these bootstrap the app, so a tenant source set in
    # code and the app's TenantCreated subscribers apply as in a request.

    bootstrap = staticmethod(_bootstrap)
    stdin = sys.stdin
    #: The shell ``shell`` opens, ``runner(env, help)``; ``None``: pshell's
    #: choice (``-p``, the ``[pshell]`` section, IPython, bpython, python).
    shell_runner = None

    def _add_tenant_commands(self, sub):
        p = sub.add_parser("create-tenant",
                           help="create a tenant schema at the tenant head")
        p.add_argument("args", nargs="*", metavar="NAME [var=value]")

        p = sub.add_parser("rename-tenant",
                           help="rename a tenant schema (TenantRenamed)")
        p.add_argument("args", nargs="*", metavar="OLD NEW [var=value]")

        p = sub.add_parser(
            "clone-tenant", help="make a tenant as a copy of another, at "
            "its revision (TenantCloned)")
        p.add_argument("--data", action="store_true",
                       help="copy the rows too (default: the tables only)")
        p.add_argument("args", nargs="*", metavar="SOURCE NEW [var=value]")

        p = sub.add_parser("drop-tenant",
                           help="drop a tenant schema and all its data")
        p.add_argument("--yes", action="store_true",
                       help="do not ask for confirmation")
        p.add_argument("args", nargs="*", metavar="NAME [var=value]")

    def _bootstrap_app(self):
        """Load the app (without its startup hook) and use its migrator."""
        from pyramid.exceptions import (
            ConfigurationError as PyramidConfigurationError,
        )

        from ..directives import get_migrator
        from ..errors import ConfigurationError
        from ..startup import suppressed

        config_vars = _parse_vars([a for a in self.options.args
                                   if _CONFIG_VAR.match(a)])
        config_vars.setdefault("__script__", "tenant-migrate")
        try:
            with suppressed():
                env = self.bootstrap(self.options.config_uri,
                                     options=config_vars)
        except _UNREADABLE_CONFIG as exc:
            raise UsageError(
                f"cannot load the app from {self.options.config_uri}: "
                f"{exc}") from None
        except PyramidConfigurationError as exc:
            # Pyramid wraps errors raised by deferred actions (such as
            # set_tenant_source's) in its own ConfigurationExecutionError.
            raise ConfigurationError(
                f"the app in {self.options.config_uri} is misconfigured: "
                + " ".join(str(exc).split())) from None
        if getattr(env["registry"], "tenant_migrator", None) is not None:
            # The app's migrator (tenant source set in code included).
            self.migrator.close()
            self.migrator = get_migrator(env["registry"])
        return env

    def command_create_tenant(self, migrator, positionals):
        from ..errors import describe_error
        from ..provisioning import create_tenant
        name = self._one_positional(positionals, "tenant name", True)
        databases = self.options.database
        if len(databases) > 1:
            raise UsageError("create-tenant takes one --database")
        env = self._bootstrap_app()
        try:
            schema = create_tenant(
                self.migrator, name, registry=env["registry"],
                request=env["request"],
                **({"database": databases[0]} if databases else {}))
            self.out(f"Created tenant schema {schema} at the tenant head")
            self._warn_if_unlisted(schema)
        except TenantMigrateError:
            raise
        except Exception as exc:
            # The app's own TenantCreated subscribers run in the same
            # transaction, which was rolled back.
            raise SubscriberFailed(
                f"creating tenant {name} failed in the app's code (a "
                f"TenantCreated subscriber?): {describe_error(exc)}; nothing "
                "was created") from None
        finally:
            env["closer"]()
        return 0

    def _warn_if_unlisted(self, schema):
        try:
            with self.migrator.connect() as connection:
                listed = schema in self.migrator.discover_tenants(connection)
        except Exception:
            return
        if not listed:
            self.err(f"tenant-migrate: note: the tenant source does not list "
                     f"{schema}; add it there (e.g. a row in your tenants "
                     "table) or later upgrades will not migrate it")

    def _two_names(self, positionals, first, second):
        if len(positionals) != 2:
            raise UsageError(f"{self.options.command} takes {first} and "
                             f"{second}, got " + (" ".join(positionals)
                                                  or "nothing"))
        return positionals

    def _provision(self, work, done):
        """Run ``work(registry, request)`` in the loaded app (its
        subscribers run in the same transaction); print ``done``."""
        from ..errors import describe_error
        env = self._bootstrap_app()
        try:
            work(env["registry"], env["request"])
        except TenantMigrateError:
            raise
        except Exception as exc:
            raise SubscriberFailed(
                f"{self.options.command} failed in the app's code (a "
                f"subscriber?): {describe_error(exc)}; nothing was "
                "changed") from None
        finally:
            env["closer"]()
        self.out(done)
        return 0

    def command_rename_tenant(self, migrator, positionals):
        from ..provisioning import rename_tenant
        old, new = self._two_names(positionals, "the tenant", "its new name")
        return self._provision(
            lambda registry, request: rename_tenant(
                self.migrator, old, new, registry=registry, request=request),
            f"Renamed tenant schema {old} to {new}")

    def command_clone_tenant(self, migrator, positionals):
        from ..provisioning import clone_tenant
        source, target = self._two_names(positionals, "the tenant to copy",
                                         "the new tenant's name")
        data = self.options.data
        return self._provision(
            lambda registry, request: clone_tenant(
                self.migrator, source, target, data=data, registry=registry,
                request=request),
            f"Made tenant schema {target} as a copy of {source}"
            + (" (tables and rows)" if data else " (tables, no rows)"))

    def command_drop_tenant(self, migrator, positionals):
        from ..provisioning import drop_tenant
        name = self._one_positional(positionals, "tenant name", True)
        if not self.options.yes:
            self.err(f"Drop tenant schema {name} and ALL its data? Type the "
                     "schema name to confirm:")
            answer = self.stdin.readline().strip()
            if answer != name:
                raise UsageError(
                    f"not confirmed, {name} was not dropped (type the schema "
                    "name, or pass --yes)")
        env = self._bootstrap_app()
        try:
            schema = drop_tenant(
                self.migrator, name, registry=env["registry"],
                request=env["request"])
            self.out(f"Dropped tenant schema {schema}; remove it from the "
                     "tenant source too")
        finally:
            env["closer"]()
        return 0

    def command_shell(self, migrator, positionals):
        from ..shell import TenantShellCommand
        name = self._one_positional(positionals, "tenant name", True)
        options = self.options
        argv = ["tenant-migrate shell"]  # pshell's own command line
        if options.python_shell:
            argv += ["--python-shell", options.python_shell]
        if options.setup:
            argv += ["--setup", options.setup]
        argv += [options.config_uri,
                 *[a for a in options.args if _CONFIG_VAR.match(a)]]
        command = TenantShellCommand(
            argv, name, load_app=self._bootstrap_app,
            warn=lambda message: self.err(
                f"tenant-migrate: warning: {message}"))
        return command.run(self.shell_runner) or 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main() or 0)
