"""bench/shapes.py - the data shapes of issue 12's benchmarks (bench/durable.py,
bench/spill.py): 2M visits each, generated once into bench/out by
tests/integration/lib/gen_visits.py and shared by both scripts.

    short   100k users, sessions of ~1 visit, a few thousand open
    long    100k users, ~9 visits per session, sessions spanning commits
    users   1M users, ~690k sessions of 1-2 visits open at the end
"""
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GEN = os.path.join(ROOT, "tests", "integration", "lib", "gen_visits.py")
PY = "/usr/bin/python3"
SHAPES = {
    "short": ["--users", "100000", "--seed", "1"],
    "long": ["--users", "100000", "--seed", "1", "--rate", "4400"],
    "users": ["--users", "1000000", "--seed", "1", "--rate", "20000"],
}
DESCR = {"short": "short sessions (~1 visit)", "long": "long sessions (~9 visits over commits)",
         "users": "1M users (~1M open)"}


def data_file(shape, visits, out, log):
    """The shape's file of `visits` visits in out, generated when missing."""
    path = os.path.join(out, f"durable-{shape}-{visits}.jsonl")
    if not os.path.exists(path):
        log(f"generating {path}")
        subprocess.run([PY, GEN, str(visits), *SHAPES[shape], "--out", path + ".tmp"], check=True)
        os.rename(path + ".tmp", path)
    return path
