"""Seeding tenants: the app's seed function (``tenantmigrate.seed``), in
every tenant (``tenant-migrate <ini> seed``, :func:`seed_tenants`) and in
each new one (:func:`seed_new_tenant`, a ``TenantCreated`` subscriber).

A seed is a function taking a :class:`~.tasks.TenantTask`, as ``run``'s
are, and ``seed`` is ``run`` with the function the settings name: the
same selection, workers, report and exit codes (:func:`.run_in_tenants`).
It runs again over tenants seeded before (their sign-up's subscriber, an
earlier ``seed``), so a seed must be idempotent: ``INSERT ... ON CONFLICT
DO NOTHING``.
"""
from .errors import ConfigurationError
from .settings import PREFIX
from .tasks import run_in_new_tenant, run_in_tenants


def seed_function(migrator):
    """The app's seed function; :class:`~.errors.ConfigurationError` when
    ``tenantmigrate.seed`` is not set."""
    seed = migrator.settings.seed
    if seed is None:
        raise ConfigurationError(
            f"no seed function: set {PREFIX}seed to the dotted name of a "
            "function taking a TenantTask (e.g. myapp.seeds:seed_tenant)")
    return seed


def seed_tenants(migrator, **options):
    """Run the seed in each selected tenant, one transaction each;
    ``options`` are :func:`.run_in_tenants`'s. Returns the report."""
    report = run_in_tenants(migrator, seed_function(migrator), **options)
    # Its advice to re-run names this command, not 'run'.
    report.command = "seed"
    return report


def seed_new_tenant(event):
    """``TenantCreated`` subscriber: run the seed in the new tenant, in the
    transaction creating it (:func:`.run_in_new_tenant`)::

        config.add_subscriber("pyramid_tenantmigrate.seeds.seed_new_tenant",
                              "pyramid_tenantmigrate.TenantCreated")
    """
    run_in_new_tenant(event, seed_function(event.migrator))
