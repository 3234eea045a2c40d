#!/usr/bin/python3
"""bench/spill.py - state larger than memory (issue 12): --memory-limit below
the open state, beside the unlimited run in the same round.

  bench/spill.py [--rounds N] [--visits N] [--shapes long,users,short] [--fractions 0.5,0.25]
                 [--peer OTHER_SESSIONIZER]

Shapes (tests/integration/lib/gen_visits.py, as bench/durable.py's):
  long    100k users, 4400 visits/s of event time: sessions of ~9 visits,
          every open user visited every ~23 s (no idle users to spill)
  users   1M users, 20000 visits/s: ~690k sessions of 1-2 visits open at
          once, most of them idle until the watermark closes them
  short   100k users, 50 visits/s: sessions of one visit, a few thousand
          open at once (a state far smaller than the job's own memory)
For each shape and round: file -> null: with --checkpoint unlimited, then
with --memory-limit at base + f x (unlimited peak - base) for each fraction f
(base: the job's resident size on an empty input). Each run's own peak
resident size is its VmHWM (read from /proc until it exits: rusage's maxrss
would carry this Python's over exec). Prints wall and CPU seconds, ratios to
the unlimited run of the same round, peak RSS, spills per visit, visits
kept for cold users without loading them (cold appends), whether the run
completed or stopped at the limit, and the load average. With --peer (e.g.
main's binary), the peer runs the same runs at the same limits right after
each of this binary's, alternating, so that both see the same machine.
Figures: docs/performance.md.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

from shapes import data_file  # bench/shapes.py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def log(msg):
    print(f"[spill] {msg}", file=sys.stderr, flush=True)


def run(cmd):
    """(wall s, cpu s, own peak RSS MiB, returncode, stderr)"""
    t0 = time.time()
    errf = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"spill-bench-{os.getpid()}.err"), "w+b")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf)
    hwm = 0
    while True:
        try:
            for line in open(f"/proc/{p.pid}/status"):
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.01)
    wall = time.time() - t0
    errf.seek(0)
    err = errf.read().decode(errors="replace")
    errf.close()
    return wall, ru.ru_utime + ru.ru_stime, hwm / 1024, os.waitstatus_to_exitcode(status), err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--visits", type=int, default=2000000)
    ap.add_argument("--shapes", default="long,users,short")
    ap.add_argument("--fractions", default="0.5,0.25")
    ap.add_argument("--sessionizer", default=os.path.join(ROOT, "build", "sessionizer"))
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--peer", help="another sessionizer binary, run alternately at the same limits")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    sz = a.sessionizer
    cp = os.path.join(a.out, "spill-cp")
    empty = os.path.join(a.out, "spill-empty.jsonl")
    open(empty, "w").close()
    shutil.rmtree(cp, ignore_errors=True)
    _, _, base, _, _ = run([sz, "run", "--source", "file:" + empty, "--sink", "null:", "--checkpoint", cp])
    loads = []
    rows = []
    for s in a.shapes.split(","):
        path = data_file(s, a.visits, a.out, log)
        for r in range(a.rounds):
            limits = {}  # fraction -> bytes, from this binary's unlimited peak (the peer's too)
            for who, binary in [("this", sz)] + ([("peer", a.peer)] if a.peer else []):
                cmd = [binary, "run", "--source", "file:" + path, "--sink", "null:", "--checkpoint", cp]
                shutil.rmtree(cp, ignore_errors=True)
                log(f"round {r + 1}: {s} {who} unlimited")
                w0, c0, rss0, rc, err = run(cmd)
                if rc != 0:
                    sys.exit(f"unlimited {s} exited {rc}: {err[-500:]}")
                rows.append((who, s, r + 1, "unlimited", w0, c0, rss0, 1.0, 1.0, 0.0, 0.0, "completed"))
                for f in map(float, a.fractions.split(",")):
                    limit = limits.setdefault(f, int((base + f * (rss0 - base)) * 1048576))
                    shutil.rmtree(cp, ignore_errors=True)
                    log(f"round {r + 1}: {s} {who} --memory-limit {limit >> 20} MiB")
                    w, c, rss, rc, err = run(cmd + ["--memory-limit", str(limit)])
                    m = re.search(r"(\d+) times a user's sessions were spilled", err)
                    spills = int(m.group(1)) / a.visits if m else 0.0
                    m = re.search(r"(\d+) visits kept for users on disk", err)
                    kept = int(m.group(1)) / a.visits if m else 0.0
                    n = re.findall(r"sessionizer: (\d+) records:", err)
                    state = "completed" if rc == 0 else (
                        f"stopped at the limit after {n[-1] if n else '?'} records" if "--memory-limit" in err
                        else f"failed ({rc}): {err[-200:]}")
                    rows.append((who, s, r + 1, f"{f:g} ({limit >> 20} MiB)", w, c, rss, w / w0, c / c0, spills,
                                 kept, state))
                loads.append(open("/proc/loadavg").read().split()[0])
    shutil.rmtree(cp, ignore_errors=True)
    print(f"state larger than memory: {a.visits} visits per shape, file -> null: with --checkpoint; "
          f"base {base:.1f} MiB; load average during the rounds {', '.join(loads)}")
    if a.peer:
        print(f"this: {sz}; peer: {a.peer}")
    print(f"{'binary':6} {'shape':6} {'rnd':>3} {'limit (fraction of state)':26} {'wall s':>7} {'cpu s':>6} "
          f"{'peak MiB':>8} {'wall x':>6} {'cpu x':>6} {'spills/visit':>12} {'kept/visit':>10}  result")
    for who, s, r, lim, w, c, rss, wr, cr, sp, kept, state in rows:
        print(f"{who:6} {s:6} {r:3} {lim:26} {w:7.2f} {c:6.2f} {rss:8.1f} {wr:6.2f} {cr:6.2f} {sp:12.3f} "
              f"{kept:10.3f}  {state}")
        if lim != "unlimited" and who == "this":
            print("BENCH " + json.dumps({"section": "spill", "figure": f"{s}: --memory-limit {lim}: {state}",
                                         "value": c, "peer": "unlimited, same round", "unit": "CPU s",
                                         "ratio": cr, "peak_mib": rss}))


if __name__ == "__main__":
    main()
