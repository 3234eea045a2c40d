#!/usr/bin/python3
"""bench/durable.py - the durable mode (--checkpoint) beside the same run
without it, on three shapes of data, each pair in the same round.

  bench/durable.py [--rounds N] [--visits N] [--build DIR]
  (or from bench/run, which sets BENCH_SESSIONIZER, BENCH_OUT, BENCH_ROUNDS)

Shapes (tests/integration/lib/gen_visits.py, 2M visits by default):
  short   100k users, 50 visits/s of event time: sessions of ~1 visit
          (bench/run's main file)
  long    100k users, 4400 visits/s: sessions of ~9 visits, each spanning
          several commits (the shape of issue 12: what format 1 rewrote at
          every commit)
  users   1M users, 20000 visits/s: ~1M sessions open at once
For each: file -> null: without and with --checkpoint (default commit
settings: every 100k records or 1 s), wall and CPU seconds, the ratio, and
the bytes the checkpoint wrote per visit (--stats). Then --memory-limit at a
quarter of the "users" shape's open state: where the job stops and its peak
resident size. Prints a table of medians and BENCH lines for bench/run.
Figures: docs/performance.md. The machine is shared: compare ratios within a
round, not absolute times across runs.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from shapes import DESCR, data_file  # bench/shapes.py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def log(msg):
    print(f"[durable] {msg}", file=sys.stderr, flush=True)


def run(cmd):
    """Runs cmd; returns (wall s, cpu s, peak RSS MiB, returncode, stderr)."""
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.time() - t0
    return (wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, os.waitstatus_to_exitcode(status),
            err.decode(errors="replace"))


def records(stderr):
    m = re.findall(r"sessionizer: (\d+) records: .*? (\d+) visits in (\d+) open sessions", stderr)
    return [int(x) for x in m[-1]] if m else [0, 0, 0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")))
    ap.add_argument("--visits", type=int, default=2000000)
    ap.add_argument("--sessionizer", default=os.environ.get("BENCH_SESSIONIZER",
                                                            os.path.join(ROOT, "build", "sessionizer")))
    ap.add_argument("--out", default=os.environ.get("BENCH_OUT", os.path.join(HERE, "out")))
    ap.add_argument("--shapes", default="short,long,users")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    sz = a.sessionizer
    shapes = a.shapes.split(",")
    data = {}
    for s in shapes:
        data[s] = data_file(s, a.visits, a.out, log)
    cp = os.path.join(a.out, "durable-cp")
    dlq = os.path.join(a.out, "durable-dlq.jsonl")
    res = {}

    def add(key, v):
        res.setdefault(key, []).append(v)

    load_start = open("/proc/loadavg").read().split()[0]
    for r in range(a.rounds):
        for s in shapes:
            base = [sz, "run", "--source", "file:" + data[s], "--sink", "null:", "--stats"]
            # alternate which goes first, so that neither always meets a warm cache
            order = ["plain", "durable"] if r % 2 == 0 else ["durable", "plain"]
            for mode in order:
                shutil.rmtree(cp, ignore_errors=True)
                extra = ["--checkpoint", cp] if mode == "durable" else ["--dlq", "jsonl:" + dlq]
                log(f"round {r + 1}: {s} {mode}")
                wall, cpu, rss, rc, err = run(base + extra)
                if rc != 0:
                    sys.exit(f"{s} {mode} exited {rc}: {err[-1000:]}")
                add(f"{s}.{mode}.wall", wall)
                add(f"{s}.{mode}.cpu", cpu)
                add(f"{s}.{mode}.rss", rss)
                if mode == "durable":
                    m = re.search(r"checkpoint: (\d+) bytes written in (\d+) commits", err)
                    add(f"{s}.written_per_visit", int(m.group(1)) / a.visits)
                    add(f"{s}.commits", int(m.group(2)))
                    # recovery: the same file again, nothing new to read
                    wall2, cpu2, rss2, rc, err2 = run(base + extra)
                    n, vo, so = records(err2)
                    add(f"{s}.restore.wall", wall2)
                    add(f"{s}.restore.open", so)
                    add(f"{s}.restore.rss", rss2)
        if "users" in shapes:
            # --memory-limit at a quarter of the users shape's open state
            med_rss = res["users.plain.rss"][-1]
            base_rss = 8.0
            limit = int((base_rss + (med_rss - base_rss) / 4) * 1048576)
            shutil.rmtree(cp, ignore_errors=True)
            log(f"round {r + 1}: users with --memory-limit {limit >> 20} MiB")
            wall, cpu, rss, rc, err = run([sz, "run", "--source", "file:" + data["users"], "--sink",
                                           "null:", "--checkpoint", cp, "--memory-limit", str(limit)])
            n, vo, so = records(err)
            add("memlimit.limit_mb", limit / 1048576)
            add("memlimit.rss", rss)
            add("memlimit.records", n)
            add("memlimit.stopped", 1 if rc == 1 and "--memory-limit" in err else 0)
    shutil.rmtree(cp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"durable mode, {a.visits} visits per shape, {a.rounds} round(s), medians; "
          f"load average {load_start} at the start, {open('/proc/loadavg').read().split()[0]} "
          f"at the end")
    print(f"{'shape':40} {'plain s':>8} {'durable s':>9} {'ratio':>6} {'plain cpu':>9} "
          f"{'dur. cpu':>8} {'ratio':>6} {'B/visit':>8} {'restore s':>9} {'open':>8}")
    for s in shapes:
        pw, dw = med[f"{s}.plain.wall"], med[f"{s}.durable.wall"]
        pc, dc = med[f"{s}.plain.cpu"], med[f"{s}.durable.cpu"]
        print(f"{DESCR[s]:40} {pw:8.2f} {dw:9.2f} {dw / pw:6.2f} {pc:9.2f} {dc:8.2f} {dc / pc:6.2f} "
              f"{med[f'{s}.written_per_visit']:8.1f} {med[f'{s}.restore.wall']:9.2f} "
              f"{med[f'{s}.restore.open']:8.0f}")
        bench = {"section": "durable", "figure": f"file -> null: with --checkpoint, {DESCR[s]}",
                 "value": a.visits / dw, "peer": "the same without --checkpoint",
                 "peer_value": a.visits / pw, "unit": "visits/s", "target": ">= 0.8x (<= 1.25x time)",
                 "target_ratio": 0.8}
        print("BENCH " + json.dumps(bench))
        print("BENCH " + json.dumps({"section": "durable", "figure": f"file -> null: with "
                                     f"--checkpoint, {DESCR[s]}: CPU seconds", "value": dc,
                                     "peer": "the same without --checkpoint", "peer_value": pc,
                                     "unit": "CPU s"}))
        print("BENCH " + json.dumps({"section": "durable", "figure": f"checkpoint bytes per visit, {DESCR[s]}",
                                     "value": med[f"{s}.written_per_visit"], "unit": "B"}))
        print("BENCH " + json.dumps({"section": "durable", "figure": f"restore, {DESCR[s]}, "
                                     f"{med[f'{s}.restore.open']:.0f} open sessions",
                                     "value": med[f"{s}.restore.wall"], "unit": "s"}))
    if "memlimit.rss" in med:
        print(f"--memory-limit {med['memlimit.limit_mb']:.0f} MiB on the users shape: stopped "
              f"cleanly in {sum(res['memlimit.stopped'])}/{len(res['memlimit.stopped'])} rounds after "
              f"{med['memlimit.records']:.0f} records, peak RSS {med['memlimit.rss']:.0f} MiB "
              f"(unlimited: {med['users.plain.rss']:.0f} MiB)")
        print("BENCH " + json.dumps({"section": "durable", "figure": "--memory-limit at 1/4 of the "
                                     "open state: peak RSS (the job stops, checkpoint intact)",
                                     "value": med["memlimit.rss"], "peer": "the limit",
                                     "peer_value": med["memlimit.limit_mb"], "unit": "MiB"}))


if __name__ == "__main__":
    main()
