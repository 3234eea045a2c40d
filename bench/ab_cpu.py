#!/usr/bin/python3
"""bench/ab_cpu.py - two builds of sessionizer on the same input, run in
alternation (A B A B ...) so that both see the same load on a shared
machine: file -> null: with --checkpoint, CPU seconds (user + system) and
wall seconds, medians and the ratio B/A. For a change that must not cost
speed (the task layer's refactoring of job.c was measured so).

  bench/ab_cpu.py A_BINARY B_BINARY FILE.jsonl [--rounds N] [--plain] [-- extra run args]

With --plain, each binary also runs without --checkpoint in every round:
the ratio with / without of two builds, in the same minutes.

The input: tests/integration/lib/gen_visits.py, e.g. the shapes of
bench/durable.py (2000000 --users 100000 --seed 1; 2000000 --users 1000000
--seed 1 --rate 20000).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def run(cmd):
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed: {err.decode(errors='replace')[-500:]}")
    return time.time() - t0, ru.ru_utime + ru.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("file")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--plain", action="store_true",
                    help="also run each binary without --checkpoint in every round, and print "
                         "each one's ratio with / without (bench/durable.py's figure, for two builds)")
    # the run's own arguments after "--" (argparse would not take them after
    # the positional ones)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    o = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    o.extra = extra
    tmp = tempfile.mkdtemp(prefix="ab_cpu.")
    runs = [("A", o.a, True), ("B", o.b, True)]
    if o.plain:
        runs += [("A plain", o.a, False), ("B plain", o.b, False)]
    res = {name: [] for name, _, _ in runs}
    # without --checkpoint dead letters need a place (with it: the directory)
    dlq = [] if "--dlq" in o.extra else ["--dlq", "jsonl:" + os.path.join(tmp, "dl.jsonl")]
    try:
        for r in range(o.rounds):
            for name, binary, durable in runs if r % 2 == 0 else runs[::-1]:
                cp = os.path.join(tmp, "cp")
                shutil.rmtree(cp, ignore_errors=True)
                res[name].append(run([binary, "run", "--source", "file:" + o.file, "--sink", "null:",
                                      *(["--checkpoint", cp] if durable else dlq), *o.extra]))
                print(f"round {r} {name}: wall {res[name][-1][0]:.2f} s, cpu {res[name][-1][1]:.2f} s",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
           for k, v in res.items()}
    print(f"{os.path.basename(o.file)}: A cpu {med['A'][1]:.2f} s wall {med['A'][0]:.2f} s; "
          f"B cpu {med['B'][1]:.2f} s wall {med['B'][0]:.2f} s; B/A cpu {med['B'][1] / med['A'][1]:.3f} "
          f"(median of {o.rounds})")
    if o.plain:
        for k in ("A", "B"):
            p = med[k + " plain"]
            print(f"{k} without --checkpoint: cpu {p[1]:.2f} s wall {p[0]:.2f} s; with / without: "
                  f"cpu {med[k][1] / p[1]:.3f} wall {med[k][0] / p[0]:.3f}")
        print(f"load average {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
