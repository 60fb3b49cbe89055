"""The bridge between a project's ``env.py`` and this package.

The ``env.py`` that ``tenant-migrate init`` writes is a few lines ending in
``run_env(context)``. The loop over schemas is not in user code: ``run_env``
hands Alembic's ``context`` to the job the running command put in the
Alembic config (see :mod:`.execute`). Keyword arguments are passed on to
``context.configure`` for every schema, so ``env.py`` stays the place for
Alembic hooks such as ``include_object``, ``process_revision_directives``
or ``compare_type``.
"""
from alembic.util import CommandError

from .execute import JOB_KEY

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
    job.run(context, configure_options)
