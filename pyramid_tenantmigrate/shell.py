"""A Pyramid shell in one tenant (``tenant-migrate <ini> shell TENANT``).

It is Pyramid's ``pshell`` (:class:`pyramid.scripts.pshell.PShellCommand`):
the ``[pshell]`` section of the ini file and its ``setup`` hook, IPython
or bpython when installed, ``app``, ``root``, ``registry``, ``settings``
and ``request``. Only the app is loaded otherwise: as ``tenant-migrate``
loads it (startup hook off), then put in the tenant by :func:`scope_env`
the way a request naming the tenant is, before the ``setup`` hook runs,
so a session the hook takes from the request is the tenant's.

A tenant behind the tenant head still opens, with a warning: a shell is
where one looks at such a tenant, and the app's models may not match its
tables there (:func:`version_warning`). The shell also has ``settings``
(the registry's), which ``pshell`` leaves out.
"""
from pyramid.scripts.pshell import PShellCommand

from .directives import get_migrator
from .errors import UsageError
from .plan import branch_heads
from .resolution import set_request_tenant
from .versions import read_schema_versions


def scope_env(env, name, migrator=None):
    """Put the request of a bootstrapped app's ``env`` (what
    :func:`pyramid.paster.bootstrap` returns) in the tenant ``name``:
    ``request.tenant``, the request's session scoped to it, and
    ``env["tenant"]``. Returns ``env``.

    ``name`` is checked against the tenant source first
    (:class:`~.errors.UnknownTenant` for the shared schema, a spare, any
    other schema, a name no schema could have). ``migrator`` defaults to
    the app's.
    """
    migrator = migrator or get_migrator(env["registry"])
    schema = migrator.tenant_directory.check(name)
    set_request_tenant(env["request"], schema, migrator)
    env["tenant"] = schema
    return env


def version_warning(migrator, schema):
    """Why the app's models may not match ``schema``'s tables (it is not
    at the tenant head), or ``None``."""
    head = branch_heads(migrator.script, "tenant")
    with migrator.connect() as connection:
        heads = read_schema_versions(
            connection, [schema], migrator.settings.version_table)[
                schema].heads
    if heads == head:
        return None
    return (f"tenant {schema} is at {','.join(heads) or 'base'}, the tenant "
            f"head is {','.join(head) or 'base'}: its tables may not be what "
            f"the app's models say (tenant-migrate <ini> upgrade --tenant "
            f"{schema})")


class TenantShellCommand(PShellCommand):
    """``pshell`` whose app is ``load_app()`` (a bootstrapped env), its
    request in ``tenant``; ``warn(message)`` says when the tenant is behind.
    """

    script_name = "tenant-migrate"

    def __init__(self, argv, tenant, load_app, warn):
        super().__init__(argv)
        self.tenant = tenant
        self.load_app = load_app
        self.warn = warn

    def bootstrap(self, config_uri, options=None):
        """pshell's ``bootstrap``: the app from ``load_app``, its request
        in the tenant. pshell calls it before it opens anything: a name
        that is no tenant stops here, the app closed again."""
        env = self.load_app()
        try:
            scope_env(env, self.tenant)
            warning = version_warning(get_migrator(env["registry"]),
                                      env["tenant"])
        except BaseException:
            env["closer"]()
            raise
        # pshell has no 'settings'. As one of the [pshell] section's
        # variables, its help line names it instead of printing every
        # setting (a database password included).
        self.loaded_objects = {"settings": env["registry"].settings,
                               **self.loaded_objects}
        self.object_help = {"settings": "registry.settings",
                            **self.object_help}
        if warning:
            self.warn(warning)
        return env

    def make_shell(self):
        try:
            return super().make_shell()
        except ValueError as exc:  # a -p naming no installed shell
            raise UsageError(f"{exc} (pshell --list-shells lists them)") \
                from None
