#!/usr/bin/python3
"""bench/sqlite_duckdb.py - file -> sqlite: with --checkpoint beside DuckDB
(2 threads) sessionizing the same file, alternating, in the same minutes.

  bench/sqlite_duckdb.py [--rounds N] [--sessionizer BIN] [--base BIN]
                         [--shapes short,long]

Per round and shape, in this order: sessionizer (fresh database and
checkpoint directory, default commit settings), DuckDB --mode store
(CREATE TABLE AS, no key), DuckDB --mode keyed (INSERT OR REPLACE on a key),
and with --base a second sessionizer binary (an A/B run: e.g. main before a
change). Shapes (tests/integration/lib/gen_visits.py, 2M visits, 100k
users, kept in bench/out/): short = bench/run's main file (~1 visit per
session), long = --rate 4400 (~9 visits per session, spanning commits).

Wall: sessionizer's whole process; DuckDB's own timing of connect + query +
CHECKPOINT, without node's start-up (the peer gets the benefit of the
doubt). Also run by bench/run (BENCH_SESSIONIZER, BENCH_ROUNDS; BENCH lines
for its table). CPU: user + system of each whole process. The machine may be
shared: read the CPU seconds and the ratios of the same round. Prints one
line per run and a table of medians. Figures: docs/performance.md ("The
SQLite sink: SQLite's own limit").
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
GEN = os.path.join(ROOT, "tests", "integration", "lib", "gen_visits.py")
SHAPES = {"short": ("visits-2000000-100000.jsonl", []),
          "long": ("visits-2000000-100000-long.jsonl", ["--rate", "4400"])}


VISITS = 2000000


def timed(cmd):
    """Runs cmd under its own rusage: (wall, cpu, rss MiB, stdout)."""
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.time() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed: {err.decode(errors='replace')[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, out.decode()


def clean(*paths):
    for p in paths:
        for q in (p, p + "-wal", p + "-shm", p + ".wal"):
            if os.path.isdir(q):
                shutil.rmtree(q)
            elif os.path.exists(q):
                os.remove(q)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")))
    ap.add_argument("--sessionizer", default=os.environ.get(
        "BENCH_SESSIONIZER", os.path.join(ROOT, "build", "sessionizer")))
    ap.add_argument("--base", help="a second sessionizer binary, run in the same rounds")
    ap.add_argument("--shapes", default="short,long")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    shapes = a.shapes.split(",")
    for s in shapes:
        path = os.path.join(OUT, SHAPES[s][0])
        if not os.path.exists(path):
            print(f"[sqlite_duckdb] generating {path}", file=sys.stderr, flush=True)
            subprocess.run(["/usr/bin/python3", GEN, str(VISITS), "--users", "100000", "--seed", "1",
                            *SHAPES[s][1], "--out", path + ".tmp"], check=True)
            os.rename(path + ".tmp", path)
    db, cp, duck = (os.path.join(OUT, n) for n in ("sd-sqlite.db", "sd-checkpoint", "sd-duck.db"))
    bins = {"sessionizer": a.sessionizer}
    if a.base:
        bins["base"] = a.base
    res = {}
    load = []
    for r in range(a.rounds):
        for s in shapes:
            data = os.path.join(OUT, SHAPES[s][0])
            load.append(os.getloadavg()[0])
            for name, b in bins.items():
                clean(db, cp)
                wall, cpu, rss, _ = timed([b, "run", "--source", "file:" + data, "--sink",
                                           "sqlite:" + db, "--checkpoint", cp, "--until-end"])
                res.setdefault((s, name), []).append((wall, cpu, rss))
                print(f"round {r + 1} {s} {name}: {wall:.2f} s wall, {cpu:.2f} CPU s, {rss:.0f} MiB",
                      file=sys.stderr, flush=True)
            for mode in ("store", "keyed"):
                clean(duck)
                _, cpu, rss, out = timed(["node", os.path.join(HERE, "duckdb_sessions.mjs"), data,
                                          "--threads", "2", "--mode", mode, "--out", duck])
                wall = json.loads(out.strip().splitlines()[-1])["seconds"]
                res.setdefault((s, "duckdb " + mode), []).append((wall, cpu, rss))
                print(f"round {r + 1} {s} duckdb {mode}: {wall:.2f} s wall (query), {cpu:.2f} CPU s,"
                      f" {rss:.0f} MiB", file=sys.stderr, flush=True)
    clean(db, cp, duck)
    print(f"load average (1 min) at the rounds' starts: {min(load):.1f}-{max(load):.1f}")
    print(f"{'shape':6} {'run':18} {'wall s (median)':>16} {'CPU s':>8} {'MiB':>6}"
          f" {'wall ratio: DuckDB / this':>26}")
    for s in shapes:
        med = {k[1]: [statistics.median(x[i] for x in v) for i in range(3)]
               for k, v in res.items() if k[0] == s}
        for name, (wall, cpu, rss) in med.items():
            ratios = ""
            if not name.startswith("duckdb"):
                ratios = (f"store {med['duckdb store'][0] / wall:.2f}x,"
                          f" keyed {med['duckdb keyed'][0] / wall:.2f}x")
            print(f"{s:6} {name:18} {wall:16.2f} {cpu:8.2f} {rss:6.0f} {ratios:>26}")
        # for bench/run's table
        print("BENCH " + json.dumps({
            "section": "durable", "figure": f"file -> sqlite: with --checkpoint, {s} sessions",
            "value": VISITS / med["sessionizer"][0], "peer": "DuckDB CREATE TABLE AS, 2 threads",
            "peer_value": VISITS / med["duckdb store"][0], "unit": "visits/s",
            "target": "> 1x DuckDB", "target_ratio": 1.0}))


if __name__ == "__main__":
    main()
