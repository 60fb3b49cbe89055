#!/usr/bin/env python
"""Time ``tenant-migrate <ini> doctor`` over many tenant schemas.

    python bench/doctor.py                      # N=1000, a minute or so
    python bench/doctor.py --tenants 10000      # setup takes minutes

See bench/README.rst ("doctor"). The tenants are made as bench/run.py makes
them (the history rendered once by the tool, replayed per schema, untimed),
but at the head. Each run times ``doctor`` over the clean fleet (exit 0),
then with ``--drift K`` tenants changed by hand (exit 1, checked against
the JSON report), and reports seconds beyond start-up (the median of
``tenant-migrate <ini> heads``: the interpreter, the libraries, the
settings and the scripts), with ``current`` timed in the same runs as a
yardstick (it reads every tenant's version, as doctor does first).
Nothing here asserts on time.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import dataset  # noqa: E402
import rawsql  # noqa: E402
from run import (  # noqa: E402
    RESULTS,
    admin,
    checkpoint,
    expect_current,
    git_commit,
    log,
    median,
    run_timed,
    server,
    startup_samples,
    tool_command,
)

#: What ``--drift`` does to a tenant, in turn: a hotfix table, a dropped
#: index, a changed default (three groups in the report).
DRIFTS = (
    "CREATE TABLE hotfix_tmp (id int PRIMARY KEY)",
    "DROP INDEX ix_orders_status",
    "ALTER TABLE orders ALTER COLUMN status SET DEFAULT 'old'",
)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tenants", "-n", type=int, default=1000,
                   help="number of tenant schemas (default 1000)")
    p.add_argument("--runs", type=int, default=3,
                   help="runs of each measure; medians are reported")
    p.add_argument("--drift", type=int, default=30, metavar="K",
                   help="tenants changed by hand for the second measure "
                        "(default 30)")
    p.add_argument("--history", choices=sorted(dataset.HISTORIES),
                   default="short",
                   help="tenant history: short (5 revisions, default) or "
                        "long (50)")
    p.add_argument("--url", help="a server's URL (role allowed to CREATE "
                   "DATABASE); default: an embedded server")
    p.add_argument("--workers", type=int, default=None, metavar="W",
                   help="tenantmigrate.workers for doctor and current "
                        "(default: the CPU count, as bench/run.py's "
                        "--workers)")
    p.add_argument("--setup-connections", type=int, default=2,
                   help="connections used to create the tenants")
    p.add_argument("--output", help="JSON file (default "
                   "bench/results/doctor-<timestamp>-N<n>.json)")
    p.add_argument("--keep", action="store_true",
                   help="keep the database (and print where it is)")
    p.add_argument("--server-setting", action="append", default=[],
                   type=server_setting, metavar="NAME=VALUE",
                   help="a setting of the embedded server, e.g. "
                        "shared_buffers=2GB (repeatable)")
    return p.parse_args(argv)


def server_setting(text):
    name, equals, value = text.partition("=")
    if not equals or not re.fullmatch(r"[a-z_.]+", name):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME=VALUE (shared_buffers=2GB)")
    return name, value


def drift(url, schemas):
    connection = rawsql.connect(url)
    try:
        with connection.cursor() as cursor:
            for index, schema in enumerate(schemas):
                cursor.execute(rawsql.search_path(schema) + "; "
                               + DRIFTS[index % len(DRIFTS)])
                connection.commit()
    finally:
        connection.close()


def doctor(tool, project, expected_exit):
    run = run_timed([*tool, project.ini, "doctor", "--json"],
                    cwd=project.root)
    if run.returncode != expected_exit:
        raise SystemExit(f"doctor exited {run.returncode}, expected "
                         f"{expected_exit}:\n{run.stderr[-3000:]}")
    return run, json.loads(run.stdout)


def bench(args, tool, url, workdir):
    n = args.tenants
    project = dataset.Project(workdir, args.history, url,
                              dataset.HISTORIES[args.history])
    schemas = dataset.tenant_names(n)
    workers = args.workers or os.cpu_count() or 1
    with open(project.ini, "a") as f:
        f.write(f"tenantmigrate.workers = {workers}\n")
    log("shared branch: tenant-migrate upgrade shared")
    run_timed([*tool, project.ini, "upgrade", "shared"],
              cwd=project.root).check("upgrade shared")
    setup_sql = rawsql.render(tool, project.ini, "upgrade",
                              f"base:{project.head}")
    log(f"creating {n} tenant schemas at {project.head}")
    started = time.perf_counter()
    rawsql.bulk_apply(url, setup_sql, schemas, args.setup_connections, 20,
                      create_schema=True)
    setup_seconds = time.perf_counter() - started
    admin(url, "VACUUM ANALYZE")
    log(f"created in {setup_seconds:.1f}s; checking with current --json")
    expect_current(tool, project, n, project.head)

    startup = startup_samples(tool, project.ini, args.runs, project.root)
    clean, drifting, current, rss = [], [], [], []
    for i in range(1, args.runs + 1):
        log(f"run {i}/{args.runs}: doctor, clean fleet; current")
        checkpoint(url)
        run, report = doctor(tool, project, 0)
        clean.append(run.seconds)
        rss.append(run.maxrss_mb)
        if report["counts"] != {"ok": n}:
            raise SystemExit(f"clean fleet: {report['counts']}")
        # The yardstick: reading every version, which doctor does too.
        current.append(run_timed([*tool, project.ini, "current"],
                                 cwd=project.root).check("current").seconds)
    # Every k-th tenant drifts, so drift is spread over the catalog.
    step = max(1, n // max(1, args.drift))
    changed = schemas[::step][:args.drift]
    log(f"changing {len(changed)} tenants by hand")
    drift(url, changed)
    for i in range(1, args.runs + 1):
        log(f"run {i}/{args.runs}: doctor, {len(changed)} drifting")
        checkpoint(url)
        run, report = doctor(tool, project, 1)
        drifting.append(run.seconds)
        rss.append(run.maxrss_mb)
        found = sorted(t["schema"] for t in report["tenants"]
                       if t["status"] == "drift")
        if found != sorted(changed):
            raise SystemExit(f"expected {len(changed)} drifting tenants, "
                             f"found {len(found)}")
    start = median(startup)
    return {
        "meta": {
            "tenants": n, "runs": args.runs, "drift": len(changed),
            "workers": workers,
            "history": args.history,
            "tenant_revisions": len(project.history),
            "postgresql": admin(url, "SHOW server_version")[0][0],
            "shared_buffers": admin(url, "SHOW shared_buffers")[0][0],
            "cpus": os.cpu_count(), "commit": git_commit(),
            "setup_seconds": round(setup_seconds, 2),
            "groups": len(report["groups"]),
        },
        "summary": {
            "startup_s": start,
            "clean_s": median(clean),
            "clean_minus_startup_s": median(clean) - start,
            "drift_s": median(drifting),
            "drift_minus_startup_s": median(drifting) - start,
            "current_s": median(current),
            "current_minus_startup_s": median(current) - start,
            "peak_rss_mb": max(rss),
        },
        "samples": {"startup": startup, "clean": clean,
                    "drift": drifting, "current": current},
    }


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    tool = tool_command()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = tempfile.mkdtemp(prefix="tmbench-doctor-")
    with server(args.url, args.server_setting) as server_url:
        name = f"tm_bench_doctor_{os.getpid()}"
        admin(server_url, f'CREATE DATABASE "{name}"')
        from sqlalchemy.engine import make_url
        url = make_url(server_url).set(database=name).render_as_string(
            hide_password=False)
        try:
            results = bench(args, tool, url, workdir)
        finally:
            if args.keep:
                log(f"kept database {name} ({url}) and {workdir}")
            else:
                admin(server_url, f'DROP DATABASE IF EXISTS "{name}" '
                      "WITH (FORCE)")
                shutil.rmtree(workdir, ignore_errors=True)
    output = args.output or os.path.join(
        RESULTS, f"doctor-{stamp}-N{args.tenants}.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(results, f, indent=2)
    meta, summary = results["meta"], results["summary"]
    print(json.dumps(results["summary"], indent=1))
    print(f"N={meta['tenants']} tenants ({meta['history']} history, "
          f"{meta['tenant_revisions']} revs), workers={meta['workers']}, "
          f"PostgreSQL "
          f"{meta['postgresql']} (shared_buffers "
          f"{meta['shared_buffers']}), median of {meta['runs']} runs, commit "
          f"{meta['commit']}\n"
          f"doctor, clean fleet          {summary['clean_s']:.3f} s, "
          f"{summary['clean_minus_startup_s']:.3f} s beyond start-up\n"
          f"doctor, {meta['drift']} drifting "
          f"({meta['groups']} groups) {summary['drift_s']:.3f} s, "
          f"{summary['drift_minus_startup_s']:.3f} s beyond start-up\n"
          f"current (yardstick)          {summary['current_s']:.3f} s, "
          f"{summary['current_minus_startup_s']:.3f} s beyond start-up\n"
          f"start-up (heads)             {summary['startup_s']:.3f} s; "
          f"peak RSS {summary['peak_rss_mb']:.0f} MB")
    log(f"wrote {output}")


if __name__ == "__main__":
    main()
