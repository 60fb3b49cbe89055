"""Every ``tenantmigrate.*`` setting, parsed and coerced in one place.

The table below is the whole list of knobs: name (without the prefix),
converter, default. :func:`parse_settings` turns an app's settings dict
into a :class:`MigrateSettings`; a bad value raises
:class:`~pyramid_tenantmigrate.errors.ConfigurationError` naming the
setting.
"""
import math
import os
import re
from dataclasses import dataclass, field

from pyramid.path import AssetResolver, DottedNameResolver
from pyramid.settings import asbool, aslist
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .embedded import is_embedded_url
from .errors import ConfigurationError
from .names import MAX_IDENTIFIER_BYTES, schema_name_problem
from .reserved import DRIVER, OWN_TABLES

PREFIX = "tenantmigrate."

#: The sources a tenant list can come from; exactly one may be set.
TENANT_SOURCE_SETTINGS = (
    "tenant_schemas_query",
    "tenant_schema_prefix",
    "tenant_schema_pattern",
    "tenant_source",
)


def _text(value):
    value = str(value).strip()
    return value or None


_FALSEY = frozenset(("f", "false", "n", "no", "off", "0"))


def _strict_bool(value):
    # asbool() reads any unknown word as False; a typo in a safety switch
    # should be an error instead.
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in _FALSEY:
        return False
    if asbool(value):
        return True
    raise ValueError("expected true or false")


_DURATION_UNITS = {"ms": 1, "s": 1000, "min": 60000, "h": 3600000}

#: The largest timeout PostgreSQL takes (an int of milliseconds), and the
#: longest wait in seconds that can be handed to it.
MAX_TIMEOUT_MS = 2**31 - 1
MAX_WAIT_SECONDS = MAX_TIMEOUT_MS // 1000


def _finite(text):
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _milliseconds(value):
    """A PostgreSQL-style duration ("3s", "500ms", "2min", "0") in ms."""
    text = str(value).strip().lower()
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number):].strip() or "ms"
    if unit not in _DURATION_UNITS or not number.strip():
        raise ValueError("expected a duration such as 500ms, 3s or 2min")
    result = int(_finite(number) * _DURATION_UNITS[unit])
    if result < 0:
        raise ValueError("must not be negative")
    if result > MAX_TIMEOUT_MS:
        raise ValueError(f"PostgreSQL takes at most {MAX_TIMEOUT_MS} ms "
                         "(about 24 days); 0 turns the timeout off")
    return result


def wait_seconds(value):
    """Seconds to wait for a lock: finite, 0 or more, within what
    PostgreSQL's lock_timeout can express."""
    seconds = _finite(value)
    if seconds < 0:
        raise ValueError("must be 0 or more seconds")
    if seconds > MAX_WAIT_SECONDS:
        raise ValueError(f"at most {MAX_WAIT_SECONDS} seconds")
    return seconds


def _non_negative_int(value):
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def _aslist_flat(value):
    return aslist(value, flatten=True)


def _regex(value):
    text = _text(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return text


def _version_table(value):
    name = _text(value)
    if name in OWN_TABLES:
        raise ValueError("that name is one of pyramid_tenantmigrate's own "
                         "tables")
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES or "\x00" in name:
        raise ValueError(f"a table name has at most "
                         f"{MAX_IDENTIFIER_BYTES} bytes and no NUL")
    return name


_QUOTED_OR_COMMENT = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/"
    r"|(\$[A-Za-z_]*\$).*?\1", re.S)


def _single_query(value):
    """One SQL query: a second statement after a ``;`` is refused (the
    tenant source runs on the deploy role's connection)."""
    text = _text(value)
    unquoted = _QUOTED_OR_COMMENT.sub(" ", text)
    if ";" in unquoted.strip().rstrip(";"):
        raise ValueError("holds more than one statement; give one query "
                         "returning schema names")
    return text


#: What the app does about migrations when it is created (``pserve``).
STARTUP_MODES = ("off", "check", "shared", "all")


def _one_of(choices):
    """A converter accepting one of ``choices`` (any case)."""
    def convert(value):
        choice = str(value).strip().lower()
        if choice not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return choice
    return convert


_startup_mode = _one_of(STARTUP_MODES)


def _positive_int(value):
    number = int(value)
    if number < 1:
        raise ValueError("must be 1 or more")
    return number


#: Where a request's tenant comes from (``tenant_from``): a kind, and the
#: argument it takes (the header's or the matchdict key's name).
TENANT_FROM_KINDS = {"subdomain": False, "header": True, "matchdict": True}


def _tenant_from(value):
    """``subdomain``, ``header NAME``, ``matchdict KEY`` or the dotted
    name of a callable taking the request: ``(kind, argument)``."""
    kind, _, argument = str(value).strip().partition(" ")
    argument = argument.strip() or None
    if kind in TENANT_FROM_KINDS:
        if TENANT_FROM_KINDS[kind] != (argument is not None):
            raise ValueError(
                f"{kind} takes a name ({kind} X-Tenant)" if argument is None
                else f"{kind} takes no argument")
        return (kind, argument)
    if argument is not None or ("." not in kind and ":" not in kind):
        raise ValueError("expected subdomain, header NAME, matchdict KEY or "
                         "the dotted name of a callable taking the request")
    return ("callable", kind)


ISOLATION_MODES = ("none", "roles")


_isolation = _one_of(ISOLATION_MODES)


_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")


def _role_name(value):
    name = str(value).strip()
    if not name:
        return None
    if (not _ROLE_NAME.match(name)
            or len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES):
        raise ValueError("expected a role name of lower-case ASCII letters, "
                         "digits and underscores, at most 63 bytes")
    return name


def _role_prefix(value):
    prefix = _role_name(value)
    if prefix is None or len(prefix) > 20 or prefix.startswith("pg_"):
        raise ValueError("expected a prefix of 1 to 20 lower-case ASCII "
                         "letters, digits and underscores, not starting "
                         "with pg_")
    return prefix


def _wave_spec(value):
    from .waves import parse_waves
    text = _text(value)
    return None if text.lower() == "none" else parse_waves(text)


def _wave_order(value):
    text = _text(value)
    return text.lower() if text.lower() in ("smallest", "name") else (
        _single_query(text))


def _fraction(value):
    """``10%`` or ``0.1``: a fraction from 0 to 1."""
    text = str(value).strip()
    number = _finite(text[:-1]) / 100 if text.endswith("%") else _finite(
        text)
    if not 0 <= number <= 1:
        raise ValueError("expected a rate from 0 to 1, or a percentage")
    return number


def _non_negative_float(value):
    number = _finite(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def _role_names(value):
    return tuple(_role_name(name) for name in _aslist_flat(value))


def _domain(value):
    return str(value).strip().strip(".").lower() or None


_DATABASE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")


def _database_name(value):
    name = _text(value)
    if name is not None and not _DATABASE_NAME.match(name):
        raise ValueError("a database name is 1 to 32 lower-case ASCII "
                         "letters, digits and underscores, starting with a "
                         "letter")
    return name


def _databases(value):
    """``name = url`` lines: ``((name, url), ...)`` in the order given."""
    databases = []
    for line in str(value).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, url = line.partition("=")
        if not equals or not url.strip():
            raise ValueError("write one 'name = url' per line")
        name = _database_name(name)
        if name in dict(databases):
            raise ValueError(f"database {name!r} is listed twice")
        databases.append((name, url.strip()))
    if not databases:
        raise ValueError("lists no database; write one 'name = url' per line")
    return tuple(databases)


def _placement_policy(value):
    """``fewest``, ``weights a=3 b=1`` or a dotted name: ``(kind, arg)``."""
    kind, _, rest = str(value).strip().partition(" ")
    if kind == "fewest" and not rest.strip():
        return ("fewest", None)
    if kind == "weights":
        weights = {}
        for pair in rest.split():
            name, _, weight = pair.partition("=")
            weights[_database_name(name)] = _finite(weight)
            if weights[name] < 0:
                raise ValueError(f"weight of {name} must be 0 or more")
        if not weights or not any(weights.values()):
            raise ValueError("weights NAME=W ...: give at least one weight "
                             "above 0")
        return ("weights", weights)
    if rest.strip() or ("." not in kind and ":" not in kind):
        raise ValueError("expected fewest, weights NAME=W ..., or the "
                         "dotted name of a callable")
    return ("callable", kind)


#: Every setting under ``tenantmigrate.``: (name, converter, default, what
#: it means). The documentation's settings reference is made from it.
SETTINGS = (
    ("script_location", _text, None,
     "The migrations folder (env.py, versions/): a path, relative to the "
     "ini file, or an asset spec such as ``myapp:migrations``. Required."),
    ("url", _text, None,
     "The database URL the tool uses; defaults to ``sqlalchemy.url``. The "
     "tool runs on psycopg2: ``postgresql://`` and "
     "``postgresql+psycopg2://`` both mean it."),
    ("shared_schema", _text, "public",
     "The schema of the shared tables and of the shared branch's version "
     "table."),
    ("version_table", _version_table, "alembic_version",
     "The version table's name, in the shared schema and in every tenant."),
    ("tenant_schemas_query", _single_query, None,
     "Tenant source: one SQL query whose first column is the tenant schema "
     "names (it runs as a subquery)."),
    ("tenant_schema_prefix", _text, None,
     "Tenant source: every schema whose name starts with this."),
    ("tenant_schema_pattern", _regex, None,
     "Tenant source: every schema whose name matches this (PostgreSQL) "
     "regular expression."),
    ("tenant_source", _text, None,
     "Tenant source: the dotted name of a callable taking a connection and "
     "returning the tenant schema names."),
    ("extra_search_path", _aslist_flat, (),
     "Schemas searched after the tenant's own while its revisions run, "
     "e.g. the schema holding extensions (citext, uuid-ossp)."),
    ("shared_metadata", _text, None,
     "The dotted name of the shared models' ``MetaData`` (autogenerate, "
     "check)."),
    ("tenant_metadata", _text, None,
     "The dotted name of the tenant models' ``MetaData`` (autogenerate, "
     "check)."),
    ("fail_fast", _strict_bool, False,
     "Stop a run at the first failing tenant instead of going on."),
    ("lock_wait", wait_seconds, 0.0,
     "Seconds a run waits for another run's lock; 0 exits at once naming "
     "the holder."),
    ("workers", _positive_int, 4,
     "Connections migrating tenants side by side."),
    ("waves", _wave_spec, None,
     "``upgrade`` migrates the tenants in waves with a gate between "
     "(:doc:`waves`): sizes such as ``1,5%,25%,rest`` (a number of "
     "tenants, a percentage of those pending, ``rest``); ``upgrade "
     "--waves`` overrides it. Unset: no waves."),
    ("wave_order", _wave_order, "smallest",
     "The order tenants go into waves: ``smallest`` (schemas by total "
     "size), ``name``, or an SQL query returning schema names (those it "
     "returns first, in its order; the others smallest first)."),
    ("wave_max_failures", _non_negative_int, 0,
     "A wave with more failed tenants than this halts the run."),
    ("wave_max_failure_rate", _fraction, None,
     "A wave whose share of failed tenants is more than this (``10%`` or "
     "``0.1``) halts the run. Unset: only ``wave_max_failures`` counts."),
    ("wave_slowdown", _non_negative_float, 5.0,
     "A wave whose median time per migrated tenant is more than this many "
     "times wave 1's (0.1 s at least) halts the run; 0 is off."),
    ("wave_check", _text, None,
     "The dotted name of a callable taking the migrator and the wave "
     "(:class:`~pyramid_tenantmigrate.waves.Wave`), called after each wave "
     "but the last: ``None`` to go on, or a reason to halt (replication "
     "lag, error rates)."),
    ("replay", _strict_bool, True,
     "Capture each revision once and replay its SQL in every tenant where "
     "that is proven to be what Alembic does; false runs every revision "
     "through Alembic in each tenant."),
    ("citus", _one_of(("auto", "on", "off")), "auto",
     "Citus schema-based sharding (:doc:`citus`): tenant schemas are made "
     "distributed schemas, timeouts reach the workers, and revisions Citus "
     "would refuse stop an upgrade before it runs. ``auto``: when the "
     "database has the citus extension, 12.0 or later; ``on``: required "
     "(exit 2 without it); ``off``."),
    ("lint_before_upgrade", _strict_bool, False,
     "``upgrade`` (the command, ``commands.upgrade``, the startup hook) "
     "lints the revisions it will run first (:doc:`lint`) and refuses, "
     "exit 1, when one has an error-level finding; ``upgrade --force`` "
     "(``force=True``) runs them all the same."),
    ("lint_errors", _aslist_flat, ("tenant-locks-shared-table",
                                   "require-concurrent-index-creation",
                                   "changing-column-type"),
     "The lint rules whose findings are errors (squawk's rule names, and "
     "``tenant-locks-shared-table``: its long locks only, see :doc:`lint`); "
     "the others are warnings. squawk "
     "reports every rule as a warning."),
    ("lock_timeout", _milliseconds, 3000,
     "``SET LOCAL lock_timeout`` in each tenant's transaction: a duration "
     "such as ``500ms``, ``3s`` or ``2min`` (default 3s, in ms above); 0 "
     "is off."),
    ("statement_timeout", _milliseconds, 0,
     "``SET LOCAL statement_timeout`` in each tenant's transaction, as "
     "``lock_timeout``; off by default (a data migration may take long)."),
    ("lock_retries", _non_negative_int, 3,
     "How many times a tenant that hit a lock timeout is tried again, with "
     "back-off, before it is reported failed."),
    ("spare_schemas", _non_negative_int, 0,
     "Tenant schemas kept ready at the tenant head, so that creating a "
     "tenant is a rename."),
    ("startup", _startup_mode, "off",
     "What the app does when a server creates it: ``off``, ``check`` "
     "(refuse to start while a schema is behind), ``shared`` (upgrade the "
     "shared branch), ``all`` (the shared branch, then every tenant)."),
    ("startup_lock_wait", wait_seconds, 300.0,
     "Seconds a starting process waits for another process's run before "
     "refusing to start."),
    ("tenant_from", _tenant_from, None,
     "Where a request's tenant comes from: ``subdomain`` (of "
     "``tenant_domain``), ``header NAME``, ``matchdict KEY`` (a route's "
     "``{KEY}``) or the dotted name of a callable taking the request and "
     "returning a schema name or ``None``. Sets ``request.tenant``, checked "
     "against the tenant source (404 for anything else), and scopes "
     "``request_session`` to it. Unset: no tenant from requests."),
    ("tenant_domain", _domain, None,
     "The domain whose subdomains are tenants, for ``tenant_from = "
     "subdomain``: ``acme.example.com`` is the tenant ``acme`` of "
     "``example.com``; ``example.com`` itself is no tenant."),
    ("request_session", _text, "dbsession",
     "The request attribute holding the request's SQLAlchemy session, "
     "scoped to ``request.tenant`` on every request (the cookiecutter's "
     "``request.dbsession``); ``off`` scopes nothing."),
    ("tenant_cache", wait_seconds, 30.0,
     "Seconds the tenant source's list is trusted for ``request.tenant`` "
     "and ``set_tenant`` before it is read again (a name not in it is "
     "looked up at once, at most once a second)."),
    ("isolation", _isolation, "none",
     "``roles``: each tenant gets a role of its own that may use only its "
     "schema, and a session scoped to a tenant runs ``SET LOCAL ROLE`` to "
     "it, so SQL in one tenant's request cannot read another's "
     "(:doc:`isolation`). ``none``: one role for everything."),
    ("app_role", _role_name, None,
     "The role the web app connects as. With ``isolation = roles`` it may "
     "switch to each tenant's role but holds none of their privileges; "
     "spares are claimed through a function it may execute, without the "
     "deploy role's powers."),
    ("tenant_role_prefix", _role_prefix, "tm_",
     "Tenant roles are named this prefix and the schema (cut, with a hash, "
     "to 63 bytes)."),
    ("tenant_role_member_of", _role_names, (),
     "Roles every tenant role is a member of: grant the shared objects a "
     "tenant's requests use (``public.plans``) to one of these."),
    ("databases", _databases, None,
     "A fleet (:doc:`fleet`): the databases holding tenants, one ``name = "
     "url`` per line (names: lower-case letters, digits, ``_``). Every "
     "command then runs over all of them; ``url`` is the control "
     "database's. Unset: one database."),
    ("control_database", _database_name, None,
     "The fleet's control database: where tenants' placements are kept and "
     "the tenant source's query runs. Default: the first of ``databases``."),
    ("placement_query", _single_query, None,
     "Where each tenant of a fleet is placed: an SQL query on the control "
     "database returning ``(schema, database)`` rows, e.g. from a "
     "``database`` column of the app's tenants table. Default: the "
     "package's own table ``tenantmigrate_placements`` there, which "
     "provisioning keeps."),
    ("placement_source", _text, None,
     "Where each tenant of a fleet is placed, from code: the dotted name of "
     "a callable taking a connection to the control database and returning "
     "``(schema, database)`` pairs (instead of ``placement_query``)."),
    ("placement_policy", _placement_policy, ("fewest", None),
     "The database a new tenant of a fleet goes to: ``fewest`` (tenants), "
     "``weights a=3 b=1`` (fewest relative to the weight; 0 takes no new "
     "tenant), or the dotted name of a callable taking the fleet and the "
     "schema and returning a database name."),
    ("total_workers", _positive_int, None,
     "A fleet's run uses ``workers`` connections per database, and at most "
     "this many in all (shared out evenly). Unset: no cap."),
    ("seed", _text, None,
     "The dotted name of the app's seed function (``myapp.seeds:"
     "seed_tenant``), taking a :class:`~pyramid_tenantmigrate.tasks."
     "TenantTask` as ``run``'s functions do: ``tenant-migrate <ini> seed`` "
     "runs it in every tenant, and the ``TenantCreated`` subscriber "
     "``pyramid_tenantmigrate.seeds.seed_new_tenant`` in each new one. It "
     "must be idempotent (``INSERT ... ON CONFLICT DO NOTHING``)."),
)


@dataclass(frozen=True)
class MigrateSettings:
    """The parsed settings; see :data:`SETTINGS` for what each one means."""

    script_location: str
    url: str
    shared_schema: str = "public"
    version_table: str = "alembic_version"
    tenant_schemas_query: str = None
    tenant_schema_prefix: str = None
    tenant_schema_pattern: str = None
    tenant_source: object = None
    extra_search_path: tuple = ()
    shared_metadata: object = None
    tenant_metadata: object = None
    fail_fast: bool = False
    lock_wait: float = 0.0
    workers: int = 4
    waves: tuple = None
    wave_order: str = "smallest"
    wave_max_failures: int = 0
    wave_max_failure_rate: float = None
    wave_slowdown: float = 5.0
    wave_check: object = None
    replay: bool = True
    citus: str = "auto"
    lint_before_upgrade: bool = False
    lint_errors: tuple = ("tenant-locks-shared-table",
                          "require-concurrent-index-creation",
                          "changing-column-type")
    lock_timeout: int = 3000
    statement_timeout: int = 0
    lock_retries: int = 3
    spare_schemas: int = 0
    startup: str = "off"
    startup_lock_wait: float = 300.0
    tenant_from: tuple = None
    tenant_domain: str = None
    request_session: str = "dbsession"
    tenant_cache: float = 30.0
    isolation: str = "none"
    app_role: str = None
    tenant_role_prefix: str = "tm_"
    tenant_role_member_of: tuple = ()
    seed: object = None
    databases: tuple = None
    control_database: str = None
    placement_query: str = None
    placement_source: object = None
    placement_policy: tuple = ("fewest", None)
    total_workers: int = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def app_keeps_placements(self):
        """A fleet whose placements the app keeps (``placement_query`` or
        ``placement_source``), not the package's table."""
        return (self.placement_query is not None
                or self.placement_source is not None)

    @property
    def tenant_source_setting(self):
        """The name of the tenant source setting in use, or ``None``."""
        for name in TENANT_SOURCE_SETTINGS:
            if getattr(self, name) is not None:
                return name
        return None


_HOLDS_URLS = frozenset({"url", "databases"})


def _coerce(settings):
    values = {}
    for name, convert, default, _ in SETTINGS:
        raw = settings.get(PREFIX + name)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            values[name] = default
            continue
        try:
            values[name] = convert(raw)
        except (TypeError, ValueError, OverflowError) as exc:
            # URLs may hold passwords: not echoed.
            shown = "" if name in _HOLDS_URLS else f" = {raw!r}"
            raise ConfigurationError(
                f"setting {PREFIX}{name}{shown} is not valid: {exc}"
            ) from None
    return values


def resolve_script_location(location, here=None):
    """Turn a path or an asset spec into an absolute directory path."""
    if os.path.isabs(location):
        return location
    if ":" in location and not os.path.splitdrive(location)[0]:
        return AssetResolver().resolve(location).abspath()
    return os.path.abspath(os.path.join(here or os.getcwd(), location))


def _resolve_dotted(name, value):
    if value is None or not isinstance(value, str):
        return value
    try:
        return DottedNameResolver().resolve(value)
    except (ImportError, ValueError) as exc:
        raise ConfigurationError(
            f"setting {PREFIX}{name} = {value!r} cannot be imported: {exc}"
        ) from None


def shown_url(url):
    """``url`` (a SQLAlchemy URL) as an error message may show it: no
    password, neither in the authority nor in the query string."""
    return url.difference_update_query(["password"]).render_as_string(
        hide_password=True)


def _check_url(url, setting):
    """Refuse a database URL the tool cannot run on, naming ``setting``.

    ``postgresql://`` is fine: the migrator's engine makes psycopg2
    explicit (:func:`.migrator.engine_url`).
    """
    if is_embedded_url(url):
        return
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # Not echoed: what failed to parse may still hold a password.
        raise ConfigurationError(
            f"setting {setting} is not a database URL: expected "
            "postgresql://user:password@host/dbname"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in ("postgresql", "postgres"):
        raise ConfigurationError(
            f"setting {setting} = {shown_url(parsed)} is not PostgreSQL: "
            "tenant schemas need a PostgreSQL server"
        )
    if driver not in ("", DRIVER):
        advice = (
            f"set {PREFIX}url = postgresql+{DRIVER}://... for the tool and "
            "keep your app's driver" if setting == "sqlalchemy.url" else
            f"write postgresql:// or postgresql+{DRIVER}://")
        raise ConfigurationError(
            f"setting {setting} = {shown_url(parsed)} asks for the {driver} "
            f"driver; tenant-migrate runs on {DRIVER}: {advice}"
        )


def _script_location(values, here, required):
    if values["script_location"] is not None:
        values["script_location"] = resolve_script_location(
            values["script_location"], here)
    elif required:
        raise ConfigurationError(
            f"setting {PREFIX}script_location is missing: set it to the "
            "migrations folder (a path, or an asset spec such as "
            "'myapp:migrations'), then run 'tenant-migrate <ini> init' "
            "if the folder does not exist yet")


def _database_url(values, settings, required):
    """``tenantmigrate.url``, else ``sqlalchemy.url``, checked; ``None``
    when not ``required`` and not usable."""
    url_setting = PREFIX + "url"
    if values["url"] is None:
        url_setting = "sqlalchemy.url"
        values["url"] = _text(settings.get("sqlalchemy.url") or "")
    if values["url"] is None:
        if required:
            raise ConfigurationError(
                f"no database URL: set {PREFIX}url or sqlalchemy.url")
        return
    try:
        _check_url(values["url"], url_setting)
    except ConfigurationError:
        if required:
            raise
        values["url"] = None


def parse_settings(settings, require_script_location=True,
                   require_url=True):
    """Build :class:`MigrateSettings` from an app's settings dict.

    ``settings`` is what Pyramid hands an app (``get_appsettings`` or
    ``config.get_settings()``): ``tenantmigrate.*`` keys, plus
    ``sqlalchemy.url`` as the default database URL and ``here`` as the
    base of relative paths. ``require_url`` false lets a command that
    never connects (``init``) go without a usable URL.
    """
    values = _coerce(settings)
    _script_location(values, settings.get("here"), require_script_location)
    _fleet(values)
    _database_url(values, settings, require_url)
    shared = values["shared_schema"]
    problem = schema_name_problem(shared, shared_schema=None)
    if problem is not None and shared != "public":
        raise ConfigurationError(
            f"setting {PREFIX}shared_schema = {shared!r} is not valid: "
            f"{problem}"
        )

    sources = [n for n in TENANT_SOURCE_SETTINGS if values[n] is not None]
    if len(sources) > 1:
        raise ConfigurationError(
            "contradictory settings: "
            + ", ".join(PREFIX + n for n in sources)
            + " are all set; set exactly one tenant source"
        )

    for name in ("tenant_source", "shared_metadata", "tenant_metadata",
                 "seed", "wave_check"):
        values[name] = _resolve_dotted(name, values[name])
    for name, takes in (("tenant_source", "takes a connection and returns "
                                          "schema names"),
                        ("seed", "takes a TenantTask"),
                        ("wave_check", "takes the migrator and a wave")):
        if values[name] is not None and not callable(values[name]):
            raise ConfigurationError(
                f"setting {PREFIX}{name} must name a callable that {takes}")
    values["extra_search_path"] = tuple(values["extra_search_path"])
    values["lint_errors"] = tuple(values["lint_errors"])
    _tenant_resolution(values)
    if values["isolation"] == "roles" and values["app_role"] is None:
        raise ConfigurationError(
            f"setting {PREFIX}isolation = roles needs {PREFIX}app_role: the "
            "role the web app connects as, which switches to each tenant's "
            "role")
    return MigrateSettings(raw=dict(settings), **values)


def _fleet(values):
    """A fleet's databases checked, and ``url`` made the control
    database's."""
    databases = values["databases"]
    if databases is None:
        for name in ("control_database", "placement_query",
                     "placement_source", "total_workers"):
            if values[name] is not None:
                raise ConfigurationError(
                    f"setting {PREFIX}{name} is for a fleet: it needs "
                    f"{PREFIX}databases")
        return
    names = dict(databases)
    for name, url in databases:
        _check_url(url, f"{PREFIX}databases ({name})")
    control = values["control_database"] or databases[0][0]
    if control not in names:
        raise ConfigurationError(
            f"setting {PREFIX}control_database = {control!r} is not one of "
            f"{PREFIX}databases ({', '.join(names)})")
    values["control_database"] = control
    if values["url"] is not None and values["url"] != names[control]:
        raise ConfigurationError(
            f"contradictory settings: {PREFIX}url and {PREFIX}databases "
            f"({control}, the control database) name different databases; "
            f"leave {PREFIX}url out with {PREFIX}databases")
    values["url"] = names[control]
    if values["placement_source"] is not None:
        if values["placement_query"] is not None:
            raise ConfigurationError(
                f"contradictory settings: {PREFIX}placement_query and "
                f"{PREFIX}placement_source are both set; set one")
        values["placement_source"] = _resolve_callable(
            "placement_source", values["placement_source"],
            "takes a connection and returns (schema, database) pairs")
    _check_placement_policy(values, names)


def _check_placement_policy(values, names):
    kind, argument = values["placement_policy"]
    if kind == "weights":
        unknown = sorted(set(argument) - set(names))
        if unknown:
            raise ConfigurationError(
                f"setting {PREFIX}placement_policy weighs "
                f"{', '.join(unknown)}, not in {PREFIX}databases")
    elif kind == "callable":
        values["placement_policy"] = (kind, _resolve_callable(
            "placement_policy", argument, "takes the fleet and the schema"))


def _resolve_callable(name, dotted, takes):
    """The callable a ``kind argument`` setting names, or an error."""
    resolved = _resolve_dotted(name, dotted)
    if not callable(resolved):
        raise ConfigurationError(
            f"setting {PREFIX}{name} = {dotted!r} must name a callable that "
            f"{takes}")
    return resolved


def _tenant_resolution(values):
    tenant_from = values["tenant_from"]
    if tenant_from is None:
        return
    kind, argument = tenant_from
    if kind == "subdomain" and values["tenant_domain"] is None:
        raise ConfigurationError(
            f"setting {PREFIX}tenant_from = subdomain needs "
            f"{PREFIX}tenant_domain (e.g. example.com, whose subdomains are "
            "the tenants)")
    if kind == "callable":
        values["tenant_from"] = (kind, _resolve_callable(
            "tenant_from", argument, "takes the request"))
    if (values["request_session"] or "").lower() in _FALSEY:
        values["request_session"] = None
