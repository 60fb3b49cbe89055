"""Canary waves: the tenants of an upgrade in waves, with a gate between.

``tenantmigrate.waves = 1,5%,25%,rest`` (or ``upgrade --waves``) splits
the tenants an upgrade finds pending into waves: ``N`` tenants, ``P%`` of
the pending tenants (rounded up, at least 1), ``rest``. The last wave
always takes what is left. Tenants go into waves in a deterministic order
(:func:`order_tenants`): ``--canary`` names first, then the
``tenantmigrate.wave_order`` (smallest schemas first by default).

After each wave but the last, :class:`Gate` decides whether the run goes
on: too many failures, too high a failure rate, a median per-tenant time
too many times the first wave's, the ``tenantmigrate.wave_check``
callable's answer, or no from the person asked (``--wave-pause``) halt
it. A halted run starts no more tenants; the next ``upgrade`` computes
its waves over the tenants still pending, so it resumes where the halted
one stopped (its failed tenants first: they are the smallest pending).
"""
import math
import statistics
from dataclasses import dataclass, field

from sqlalchemy import text

from .report import DONE, count_statuses

#: ``tenantmigrate.wave_order`` values that are not a query.
ORDERS = ("smallest", "name")

REST = "rest"

#: Per-tenant times below this (seconds) are noise: the slowdown gate
#: compares with wave 1's median or this, whichever is more.
MIN_BASELINE = 0.1


def parse_waves(spec):
    """``"1,5%,25%,rest"`` -> ``(1, "5%", "25%", "rest")``: counts as
    ints, percentages as strings; ``rest`` is appended when missing.
    Raises ``ValueError`` saying what is wrong."""
    sizes = []
    parts = [part.strip() for part in str(spec).split(",")]
    if not any(parts):
        raise ValueError("expected sizes such as 1,5%,25%,rest")
    for position, part in enumerate(parts):
        if part == REST and position != len(parts) - 1:
            raise ValueError("'rest' can only be the last wave")
        sizes.append(_wave_size(part))
    if sizes[-1] != REST:
        sizes.append(REST)
    return tuple(sizes)


def _wave_size(part):
    if part == REST:
        return REST
    if part.endswith("%"):
        try:
            percent = float(part[:-1])
        except ValueError:
            raise ValueError(f"{part!r} is not a percentage") from None
        if not 0 < percent <= 100:
            raise ValueError(f"{part!r}: a percentage is more than 0 and "
                             "at most 100")
        return part
    try:
        count = int(part)
    except ValueError:
        raise ValueError(f"{part!r} is not a number of tenants, a "
                         "percentage or 'rest'") from None
    if count < 1:
        raise ValueError(f"{part!r}: a wave has 1 tenant or more")
    return count


def split_waves(sizes, tenants):
    """``tenants`` (in wave order) cut into lists by ``sizes``
    (:func:`parse_waves`); percentages are of ``len(tenants)``. Empty
    waves are left out."""
    waves, start = [], 0
    for size in sizes:
        if size == REST:
            count = len(tenants) - start
        elif isinstance(size, str):
            count = max(1, math.ceil(len(tenants) * float(size[:-1]) / 100))
        else:
            count = size
        wave = tenants[start:start + count]
        if wave:
            waves.append(wave)
        start += len(wave)
    return waves


_SIZES = """
SELECT n.nspname, coalesce(sum(pg_catalog.pg_total_relation_size(c.oid)), 0)
FROM pg_catalog.pg_namespace n
LEFT JOIN pg_catalog.pg_class c
  ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm', 'p')
WHERE n.nspname = ANY(:names)
GROUP BY n.nspname
"""


def schema_sizes(connection, schemas):
    """``{schema: bytes}`` of its tables with their indexes and TOAST,
    from one catalog query (schemas that do not exist weigh 0)."""
    sizes = dict.fromkeys(schemas, 0)
    sizes.update(connection.execute(text(_SIZES),
                                    {"names": list(schemas)}).all())
    return sizes


def order_tenants(connection, schemas, order="smallest", canaries=()):
    """``schemas`` in wave order: ``canaries`` first, as given; then, by
    ``order``, ``name`` order, or smallest first (ties by name), or the
    order of the schema names an SQL query returns (first column), the
    tenants it does not list after them, smallest first."""
    first = [name for name in canaries if name in schemas]
    others = [name for name in schemas if name not in set(first)]
    if order == "name":
        return first + sorted(others)
    listed = []
    if order not in ORDERS:
        returned = connection.execute(text(order)).scalars().all()
        chosen = set(others)
        listed = list(dict.fromkeys(n for n in returned if n in chosen))
        others = [name for name in others if name not in set(listed)]
    sizes = schema_sizes(connection, others)
    return first + listed + sorted(others, key=lambda n: (sizes[n], n))


@dataclass
class Wave:
    """One wave of a run: its tenants and, once run, their results."""

    index: int
    schemas: list
    results: list = field(default_factory=list)
    #: ``done``, ``halted`` (the gate stopped the run after it), or
    #: ``not-started``.
    status: str = "not-started"

    @property
    def failures(self):
        return [r for r in self.results if not r.ok]

    @property
    def failure_rate(self):
        return len(self.failures) / len(self.results) if self.results else 0

    @property
    def median_duration(self):
        """Median seconds of the tenants it migrated, ``None`` if none."""
        durations = [r.duration for r in self.results if r.status == DONE]
        return statistics.median(durations) if durations else None

    def counts(self):
        return count_statuses(self.results)

    def to_dict(self):
        median = self.median_duration
        return {"index": self.index, "size": len(self.schemas),
                "status": self.status, "schemas": list(self.schemas),
                "counts": self.counts(), "failures": len(self.failures),
                "median_duration_ms": (None if median is None
                                       else round(median * 1000, 3))}


class Gate:
    """Whether a run goes on after a wave: :meth:`verdict` returns the
    reason to halt, or ``None``.

    ``settings`` gives the thresholds (``wave_max_failures``,
    ``wave_max_failure_rate``, ``wave_slowdown``) and ``wave_check``,
    called as ``wave_check(migrator, wave)``; ``confirm(wave)``, when
    given, asks a person last (true: go on).
    """

    def __init__(self, migrator, confirm=None):
        self.migrator = migrator
        self.settings = migrator.settings
        self.confirm = confirm

    def verdict(self, wave, first):
        settings = self.settings
        failed = len(wave.failures)
        if failed > settings.wave_max_failures:
            return (f"{failed} of its {len(wave.results)} tenant(s) failed "
                    f"(tenantmigrate.wave_max_failures = "
                    f"{settings.wave_max_failures})")
        rate = settings.wave_max_failure_rate
        if rate is not None and wave.failure_rate > rate:
            return (f"{wave.failure_rate:.0%} of its tenants failed "
                    f"(tenantmigrate.wave_max_failure_rate = {rate:.0%})")
        slower = self._slowdown(wave, first)
        if slower:
            return slower
        check = settings.wave_check
        if check is not None:
            try:
                reason = check(self.migrator, wave)
            except Exception as exc:
                return (f"tenantmigrate.wave_check raised "
                        f"{type(exc).__name__}: {exc}")
            if reason:
                return f"tenantmigrate.wave_check: {reason}"
        if self.confirm is not None and not self.confirm(wave):
            return "not confirmed (--wave-pause)"
        return None

    def _slowdown(self, wave, first):
        factor = self.settings.wave_slowdown
        if wave is first or not factor:
            return None
        median, baseline = wave.median_duration, first.median_duration
        if median is None or baseline is None:
            return None
        baseline = max(baseline, MIN_BASELINE)
        if median <= factor * baseline:
            return None
        return (f"its median time per tenant, {median:.3f}s, is "
                f"{median / baseline:.1f} times wave 1's ({baseline:.3f}s, "
                f"{MIN_BASELINE:g}s at least; tenantmigrate.wave_slowdown = "
                f"{factor:g})")
