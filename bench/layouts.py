#!/usr/bin/python3
"""bench/layouts.py - the cost of a record layout (--field, --time-format,
--user-type): the same visits, file -> null:, in the default layout and in
mapped ones, run interleaved; medians of records per CPU-second (user + sys:
steadier than wall time on a shared machine).

  bench/layouts.py [--sessionizer PATH] [--data FILE] [--visits N] [--rounds R]

Under bench/run it follows the BENCH-line contract of bench/bench.py (the
environment gives BENCH_SESSIONIZER, BENCH_DATA, BENCH_OUT). The target
(issue 13): a mapped layout within 1.3x of the default, i.e. at least 0.77
of its rate. Layouts:
  default  {"user_id": 1, "page": "...", "event_time": "2023-02-20T03:03:20"}
  flat     {"userId": 1, "url": "...", "ts": 1676862200000}  --time-format epoch_ms
  nested   {"v": 2, "event": {"kind": "view", "user": {"id": 1}}, "ctx": {"url": "...",
            "ref": "..."}, "ts": 1676862200000}  (pointers /event/user/id, /ctx/url, /ts)
  string   flat, with the user as a UUID string (--user-type string)
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration", "lib"))
import oracle  # noqa: E402

LAYOUTS = {
    "default": [],
    "flat": ["--field", "user=/userId", "--field", "page=/url", "--field", "time=/ts",
             "--time-format", "epoch_ms"],
    "nested": ["--field", "user=/event/user/id", "--field", "page=/ctx/url", "--field", "time=/ts",
               "--time-format", "epoch_ms"],
    "string": ["--field", "user=/userId", "--field", "page=/url", "--field", "time=/ts",
               "--time-format", "epoch_ms", "--user-type", "string"],
}


def convert(src, out_dir, n):
    paths = {name: os.path.join(out_dir, f"layout-{name}-{n}.jsonl") for name in LAYOUTS}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    files = {name: open(p + ".tmp", "w") for name, p in paths.items()}
    with open(src, "rb") as f:
        for i, raw in enumerate(f):
            if i >= n:
                break
            raw = raw.rstrip(b"\n")
            v = oracle.parse_line(raw)
            if v is None:
                continue
            u, t_us, page = v
            ms = t_us // 1000
            files["default"].write(raw.decode() + "\n")
            files["flat"].write(json.dumps({"userId": u, "url": page, "ts": ms}) + "\n")
            files["nested"].write(json.dumps({"v": 2, "event": {"kind": "view", "user": {"id": u}},
                                              "ctx": {"url": page, "ref": "https://example.com/"},
                                              "ts": ms}) + "\n")
            files["string"].write(json.dumps({"userId": str(uuid.UUID(int=u * 0x9E3779B97F4A7C15 % (1 << 128))),
                                              "url": page, "ts": ms}) + "\n")
    for name, f in files.items():
        f.close()
        os.rename(paths[name] + ".tmp", paths[name])
    return paths


def run_once(sz, path, args):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    p = subprocess.run([sz, "run", "--source", "file:" + path, "--sink", "null:", "--until-end",
                        "--dlq", "jsonl:/dev/null", "-q", *args], capture_output=True)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: exit {p.returncode}: {p.stderr.decode()[:300]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessionizer", default=os.environ.get("BENCH_SESSIONIZER",
                                                            os.path.join(ROOT, "build", "sessionizer")))
    ap.add_argument("--data", default=os.environ.get("BENCH_DATA"))
    ap.add_argument("--out", default=os.environ.get("BENCH_OUT", os.path.join(HERE, "out")))
    ap.add_argument("--visits", type=int, default=1000000)
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("LAYOUT_ROUNDS", "5")))
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help="which (default: all)")
    a = ap.parse_args()

    os.makedirs(a.out, exist_ok=True)
    if not a.data:
        a.data = os.path.join(a.out, f"layout-src-{a.visits}.jsonl")
        if not os.path.exists(a.data):
            subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tests/integration/lib/gen_visits.py"),
                            str(a.visits), "--users", "100000", "--seed", "1", "--out", a.data], check=True)
    paths = convert(a.data, a.out, a.visits)
    for name in set(LAYOUTS) - set(a.layouts.split(",")) - {"default"}:
        del LAYOUTS[name]
    n = sum(1 for _ in open(paths["default"], "rb"))
    cpu = {name: [] for name in LAYOUTS}
    wall = {name: [] for name in LAYOUTS}
    for _ in range(a.rounds):
        for name, args in LAYOUTS.items():
            c, w = run_once(a.sessionizer, paths[name], args)
            cpu[name].append(c)
            wall[name].append(w)
    base = n / statistics.median(cpu["default"])
    print(f"{n} visits, {a.rounds} rounds, medians; records per CPU-second (file -> null:)")
    for name in LAYOUTS:
        rate = n / statistics.median(cpu[name])
        print(f"  {name:8s} {rate / 1e6:6.2f} M/s  (wall {n / statistics.median(wall[name]) / 1e6:5.2f} M/s)"
              f"  {base / rate:4.2f}x the default's cost")
        if name != "default":
            print("BENCH " + json.dumps({
                "section": "layouts", "figure": f"file -> null:, {name} layout, visits per CPU-s",
                "value": round(rate), "peer": "default layout", "peer_value": round(base),
                "unit": "records/s", "target": ">= 0.77x (within 1.3x)", "target_ratio": 0.77}))


if __name__ == "__main__":
    main()
