"""The bridge between a project's ``env.py`` and this package.

The ``env.py`` that ``tenant-migrate init`` writes ends in
``run_env(context, **options)``. The loop over schemas is not in user code:
this package runs ``env.py`` once per migrator and mode (online, offline)
to learn the options given to ``run_env`` (:func:`read_env_options`), then
configures every Alembic context itself, one per schema and connection
(:class:`AlembicSession`), with this package's per-schema options first and
``env.py``'s after them. So ``env.py`` stays the place for Alembic hooks
such as ``include_object``, ``on_version_apply`` or ``compare_type``, and
they apply to every schema, on every path.

Alembic's ``op`` and ``context`` are module globals that point at the
operations object and environment installed last, in any thread: two
migrations in two threads of one process (two sign-ups served by waitress
threads, the workers of a run) would run in each other's context.
:func:`install_thread_proxies` (done on import) makes them point at what
the calling thread installed, so Alembic code runs in several threads at
once, each in its own context, as it runs in one.
"""
import copy
import threading

from alembic.operations import Operations
from alembic.runtime.environment import EnvironmentContext
from alembic.util import CommandError
from alembic.util.langhelpers import ModuleClsProxy

from .errors import ConfigurationError

_local = threading.local()
_env_lock = threading.Lock()


def _installed(cls):
    """The objects of ``cls`` this thread installed, innermost last."""
    stacks = getattr(_local, "stacks", None)
    if stacks is None:
        stacks = _local.stacks = {}
    return stacks.setdefault(cls, [])


class _ThreadProxy:
    """Stands in the ``alembic.op`` or ``alembic.context`` module for the
    object the calling thread installed."""

    def __init__(self, cls):
        self._cls = cls

    def __getattr__(self, name):
        installed = _installed(self._cls)
        if not installed:
            raise NameError(
                f"Can't invoke function {name!r}, as the proxy object has "
                "not yet been established for the Alembic "
                f"{self._cls.__name__!r} class in this thread.")
        return getattr(installed[-1], name)


def _install_proxy(self):
    _installed(type(self)).append(self)


def _remove_proxy(self):
    installed = _installed(type(self))
    if self in installed:
        del installed[len(installed) - 1 - installed[::-1].index(self)]


def _module_getattr(cls, attributes):
    def __getattr__(name):
        installed = _installed(cls)
        if name in attributes and installed:
            return getattr(installed[-1], name)
        raise AttributeError(name)
    return __getattr__


def install_thread_proxies():
    """Make ``alembic.op`` and ``alembic.context`` per thread (see the
    module docstring). Idempotent; for one thread, nothing changes."""
    if getattr(ModuleClsProxy, "_tenantmigrate_per_thread", False):
        return
    for cls in (Operations, EnvironmentContext):
        attributes, modules = ModuleClsProxy._setups[cls]
        for globals_, _ in modules:
            globals_["_proxy"] = _ThreadProxy(cls)
            # Plain attributes (context.config) are read from the thread's
            # object too, through the module's __getattr__.
            for name in attributes:
                globals_.pop(name, None)
            globals_["__getattr__"] = _module_getattr(cls, set(attributes))
    ModuleClsProxy._install_proxy = _install_proxy
    ModuleClsProxy._remove_proxy = _remove_proxy
    ModuleClsProxy._tenantmigrate_per_thread = True


install_thread_proxies()

#: Key under which the running job sits in ``Config.attributes``.
JOB_KEY = "tenantmigrate.job"

#: Options this package sets per schema; passing them to run_env would
#: break the one-version-table-per-schema rule or the per-tenant transaction.
RESERVED_OPTIONS = frozenset({
    "connection", "url", "dialect_name", "as_sql", "version_table",
    "version_table_schema", "transaction_per_migration", "starting_rev",
    "output_buffer",
})


def run_env(context, **configure_options):
    """Run the current ``tenant-migrate`` command from ``env.py``.

    ``context`` is ``alembic.context``. Any ``configure_options`` are given to
    ``context.configure`` for each schema, after this package's own.
    """
    job = context.config.attributes.get(JOB_KEY)
    if job is None:
        raise CommandError(
            "this env.py belongs to pyramid_tenantmigrate: run it with "
            "'tenant-migrate <ini> <command>', not with the alembic command"
        )
    reserved = RESERVED_OPTIONS.intersection(configure_options)
    if reserved:
        raise CommandError(
            "run_env() sets these options per schema itself: "
            + ", ".join(sorted(reserved))
        )
    job.options = dict(configure_options)


class _OptionsJob:
    """What ``run_env`` fills in when env.py runs."""

    options = None


def read_env_options(migrator, as_sql=False):
    """Run ``env.py`` and return the options it gives ``run_env`` (the
    migrator keeps them: :meth:`.TenantMigrator.env_options`)."""
    config, script = migrator.alembic_config, migrator.script
    job = _OptionsJob()
    # The job sits in the migrator's config: one reader at a time.
    with _env_lock:
        config.attributes[JOB_KEY] = job
        try:
            with EnvironmentContext(config, script, as_sql=as_sql,
                                    fn=lambda heads, context: []):
                script.run_env()
        finally:
            config.attributes.pop(JOB_KEY, None)
    if job.options is None:
        raise ConfigurationError(
            f"{script.dir}/env.py did not call "
            "pyramid_tenantmigrate.environment.run_env(context): nothing was "
            "migrated; see the env.py written by 'tenant-migrate <ini> init'")
    return job.options


def configure_options(migrator, schema, branch, user_options, **extra):
    """This package's options for ``schema``, then env.py's, then
    ``extra`` (which may add ``on_version_apply`` callbacks to env.py's)."""
    settings = migrator.settings
    options = {
        "version_table": settings.version_table,
        "version_table_schema": schema,
        "target_metadata": (settings.shared_metadata if branch == "shared"
                            else settings.tenant_metadata),
    }
    options.update(user_options)
    callbacks = list(user_options.get("on_version_apply", ()))
    callbacks.extend(extra.pop("on_version_apply", ()))
    options.update(extra)
    if callbacks:
        options["on_version_apply"] = callbacks
    return options


class AlembicSession:
    """Alembic's migration context for one schema on one connection.

    Configured once, with env.py's options; :meth:`run` runs steps chosen
    by the caller (Alembic reads and writes the version table as usual).
    Kept for a schema's whole program, so what Alembic remembers between
    the revisions of one run (enum types created, in ``impl.memo``) is
    remembered as it would be in one ``alembic upgrade``.

    ``autocommit_block``, when given, replaces the context's
    ``autocommit_block()`` (a callable returning a context manager): the
    caller owns the transaction, so it decides what leaving it means.
    ``fn``, when given, is Alembic's step function instead of the steps
    handed to :meth:`run` (autogenerate passes its own).
    """

    def __init__(self, migrator, connection, schema, branch, *,
                 autocommit_block=None, fn=None, configure_extra=None):
        self.applied = []
        self._queued = []
        self.env = EnvironmentContext(
            migrator.alembic_config, migrator.script,
            fn=fn or self._next_steps)
        extra = dict(configure_extra or {})
        extra.setdefault("on_version_apply", []).append(self._count)
        # Read before entering this context: reading runs env.py in one.
        options = configure_options(migrator, schema, branch,
                                    migrator.env_options(), **extra)
        with self.env:
            self.env.configure(connection=connection, **options)
        self.context = self.env.get_context()
        if autocommit_block is not None:
            self.context.autocommit_block = autocommit_block

    def _next_steps(self, heads, context):
        steps, self._queued = self._queued, []
        return steps

    def _count(self, ctx, step, heads, run_args):
        self.applied.append(tuple(sorted(heads)))

    @property
    def memo(self):
        """What Alembic remembers between revisions of this run."""
        return self.context.impl.memo

    def run(self, steps=(), memo=None):
        """Run ``steps`` (Alembic reads the version first and writes it
        after each step). ``memo``, when given, is what Alembic remembers
        from the revisions before these (replayed, not run here)."""
        if memo is not None:
            self.context.impl.memo = copy.deepcopy(memo)
        self._queued = list(steps)
        with self.env:
            self.env.run_migrations()
