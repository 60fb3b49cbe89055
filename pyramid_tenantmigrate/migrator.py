"""The migrator: one object holding what every command needs.

A :class:`TenantMigrator` is built from an app's settings. It owns the
database engine, the Alembic configuration and the script directory (loaded
once, so the revision map is read once per run, not once per tenant), and
knows where tenants come from. Commands in :mod:`.commands` take it as their
first argument, the way Alembic's commands take a ``Config``.
"""
import io
import os
import socket
import traceback

from alembic.config import Config
from alembic.script import ScriptDirectory
from pyramid.decorator import reify
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from .embedded import resolve_url
from .engine.program import Programs
from .environment import read_env_options
from .errors import ConfigurationError, DatabaseUnavailable
from .reserved import DRIVER
from .settings import PREFIX, parse_settings, shown_url
from .tenants import discover_tenant_schemas
from .versions import read_schema_versions


def _alembic_understands_path_separator():
    from importlib.metadata import version
    major, minor = (int(part) for part in version("alembic").split(".")[:2])
    return (major, minor) >= (1, 16)


#: The Alembic option saying how version_locations is split.
_PATH_SEPARATOR_OPTION = ("path_separator" if
                          _alembic_understands_path_separator()
                          else "version_path_separator")


def _revision_files(folder):
    try:
        return sorted(name for name in os.listdir(folder)
                      if name.endswith(".py") and not name.startswith("_"))
    except OSError:
        return []


def engine_url(url):
    """Return ``url`` (a settings string, checked by
    :func:`.settings.parse_settings`) as the URL the migrator's engine
    connects to: the embedded server started if named, and the psycopg2
    driver made explicit, because SQLAlchemy 2.1 reads a bare
    ``postgresql://`` as psycopg 3, which is not a dependency of ours."""
    return make_url(resolve_url(url)).set(drivername=f"postgresql+{DRIVER}")


class TenantMigrator:
    """Migrates the shared schema and every tenant schema of one database.

    ``settings`` is a :class:`~pyramid_tenantmigrate.settings.MigrateSettings`;
    ``engine`` may be given to share the app's engine, otherwise one is
    created from the settings' URL on first use.
    """

    def __init__(self, settings, engine=None):
        self.settings = settings
        if engine is not None:
            if engine.dialect.driver != DRIVER:
                raise ConfigurationError(
                    f"the engine given to the migrator uses the "
                    f"{engine.dialect.driver} driver; the migrator runs on "
                    f"{DRIVER}: let it create its own engine from "
                    f"{PREFIX}url")
            self.engine = engine

    @classmethod
    def from_settings(cls, app_settings, engine=None, **options):
        """Build a migrator from an app's settings dict (``options`` go to
        :func:`~.settings.parse_settings`)."""
        return cls(parse_settings(app_settings, **options), engine=engine)

    @property
    def shared_schema(self):
        return self.settings.shared_schema

    @property
    def script_location(self):
        return self.settings.script_location

    def version_path(self, branch):
        """The folder holding ``branch``'s revision files."""
        return os.path.join(self.script_location, "versions", branch)

    @reify
    def engine(self):
        if self.settings.url is None:
            raise ConfigurationError(
                f"no usable database URL: set {PREFIX}url or sqlalchemy.url")
        url = engine_url(self.settings.url)
        try:
            # pre_ping: a pooled connection the server closed meanwhile
            # (idle_session_timeout, a restart) is replaced, not used.
            return create_engine(url, pool_pre_ping=True)
        except Exception as exc:
            raise ConfigurationError(
                f"database URL {shown_url(url)} (from {PREFIX}url or "
                f"sqlalchemy.url) is not usable: {exc}"
            ) from None

    @reify
    def alembic_config(self):
        if not os.path.isdir(self.script_location):
            raise ConfigurationError(
                f"migrations folder {self.script_location} does not exist "
                f"({PREFIX}script_location): create it with "
                "'tenant-migrate <ini> init'"
            )
        config = Config()
        config.set_main_option("script_location", self.script_location)
        # The two folders joined with os.pathsep; Alembic 1.16 renamed the
        # option saying so (older ones split on spaces without it).
        config.set_main_option(_PATH_SEPARATOR_OPTION, "os")
        config.set_main_option("version_locations", os.pathsep.join(
            self.version_path(branch) for branch in ("shared", "tenant")))
        return config

    @reify
    def script(self):
        script = ScriptDirectory.from_config(self.alembic_config)
        try:
            # Load every revision file now, once, so that a broken file is
            # a clear error before anything runs, not a branch that seems
            # to have no revisions.
            heads = script.revision_map.heads
        except Exception as exc:
            raise ConfigurationError(
                f"cannot load the revision file {self._culprit(exc)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not heads:
            files = [name for branch in ("shared", "tenant")
                     for name in _revision_files(self.version_path(branch))]
            if files:
                raise ConfigurationError(
                    f"Alembic found no revision in {self.script_location}/"
                    f"versions although it holds {len(files)} revision "
                    f"file(s) ({', '.join(files[:3])}): is each a revision "
                    "(revision = '...', down_revision = ...)?")
        return script

    def _culprit(self, exc):
        """The revision file an exception raised while loading came from."""
        filename = getattr(exc, "filename", None)  # SyntaxError
        if filename and filename.startswith(self.script_location):
            return filename
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if frame.filename.startswith(self.script_location):
                return f"{frame.filename}, line {frame.lineno}"
        return f"in {self.script_location}"

    @reify
    def programs(self):
        """What each group of schemas runs (:class:`~.program.Programs`),
        kept for this migrator's life: capture runs once per group."""
        return Programs(self, replay=self.settings.replay)

    @reify
    def citus(self):
        """Whether the database runs Citus, found out once
        (:class:`~.citus.CitusState`)."""
        from .citus import CitusState
        return CitusState(self)

    @reify
    def _env_options(self):
        return {}

    def env_options(self, as_sql=False):
        """The options ``env.py`` gives ``run_env``, read once per mode."""
        if as_sql not in self._env_options:
            self._env_options[as_sql] = read_env_options(self, as_sql)
        return self._env_options[as_sql]

    def version_table_ddl(self):
        """Alembic's own ``CREATE TABLE IF NOT EXISTS`` for a version
        table, with env.py's options (``version_table_pk``), unqualified:
        run it with the schema on ``search_path``."""
        from alembic.runtime.migration import MigrationContext
        from sqlalchemy.dialects.postgresql import psycopg2 as dialect
        from sqlalchemy.schema import CreateTable

        options = self.env_options()
        context = MigrationContext.configure(
            dialect=dialect.dialect(), opts={
                "as_sql": True, "output_buffer": io.StringIO(),
                "version_table": self.settings.version_table,
                "version_table_pk": options.get("version_table_pk", True)})
        ddl = str(CreateTable(context._version).compile(
            dialect=context.dialect)).strip()
        return ddl.replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", 1)

    @reify
    def run_engine(self):
        """The engine of a run's own connections (lock, workers, reads):
        no pool, so a run opens exactly what its workers need and never
        waits for the app's pool."""
        return create_engine(self.engine.url, poolclass=NullPool)

    def connect(self, engine=None):
        """Open a connection, or raise DatabaseUnavailable saying why not."""
        try:
            return (engine or self.engine).connect()
        except DBAPIError as exc:
            message = " ".join(str(exc.orig or exc).split())
            raise DatabaseUnavailable(
                f"cannot connect to the database: {message}; check "
                f"sqlalchemy.url / {PREFIX}url and that the server is running"
            ) from None

    def run_connection(self, purpose="worker"):
        """A connection of a run's own, in autocommit mode, named in
        ``pg_stat_activity`` (``application_name``)."""
        connection = self.connect(self.run_engine)
        try:
            connection = connection.execution_options(
                isolation_level="AUTOCOMMIT")
            connection.exec_driver_sql(
                "SELECT set_config('application_name', %(name)s, false)",
                {"name": f"tenant-migrate {purpose} pid={os.getpid()} "
                         f"host={socket.gethostname()}"[:63]})
        except BaseException:
            connection.close()
            raise
        return connection

    def worker_connection(self):
        """A run worker's connection (see :meth:`run_connection`)."""
        return self.run_connection("worker")

    def read_versions(self, connection, schemas, workers=None):
        """Return ``{schema: SchemaVersion}`` for ``schemas``, read over up
        to ``workers`` connections (default: the ``workers`` setting)."""
        return read_schema_versions(
            connection, schemas, self.settings.version_table,
            connect=lambda: self.connect(self.run_engine),
            workers=workers or self.settings.workers)

    #: The database's name in a fleet; ``None`` for the migrator built
    #: from the settings (:mod:`.fleet`).
    database_name = None

    @reify
    def fleet(self):
        """The :class:`~.fleet.Fleet` when ``tenantmigrate.databases`` is
        set, else ``None``."""
        if self.settings.databases is None:
            return None
        from .fleet import Fleet
        return Fleet(self)

    @property
    def runs_fleet(self):
        """Whether commands given this migrator run over every database of
        a fleet (it is the fleet's, not one member's)."""
        return self.fleet is not None and self.database_name is None

    def discover_tenants(self, connection):
        """Return the tenant schema names the configured source lists (in
        a fleet: every database's)."""
        if self.runs_fleet:
            return list(self.fleet.all_tenants()[0])
        return discover_tenant_schemas(connection, self.settings)

    def provisioning_lock_engines(self):
        """Where a run's last pass takes the provisioning lock."""
        return [self.run_engine]

    def moved_away(self, schemas):
        """Of ``schemas`` (tenants a run's pass failed), those no longer
        here because a move took them to another database of a fleet:
        ``{schema: database}`` (none outside a fleet)."""
        return {}

    @reify
    def tenant_directory(self):
        """The tenant source's list, cached for the app's requests and
        :func:`.set_tenant` (:class:`~.directory.TenantDirectory`)."""
        from .directory import TenantDirectory
        return TenantDirectory(self)

    def close(self):
        """Release the engines' pooled connections."""
        for name in ("engine", "run_engine"):
            if name in self.__dict__:
                self.__dict__[name].dispose()
        if self.runs_fleet:
            self.fleet.close()
