"""Shared helpers of the integration tests: run the binary, read tables,
report "N passed, N failed"."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
BIN = os.environ.get("SESSIONIZER", os.path.join(ROOT, "build", "sessionizer"))
GEN = os.path.join(HERE, "gen_visits.py")
PY = "/usr/bin/python3"


class Checks:
    def __init__(self, name):
        self.name, self.passed, self.failed = name, 0, 0

    def check(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAILED: {what}", file=sys.stderr)
        return cond

    def eq(self, got, want, what):
        ok = got == want
        if not ok:
            g, w = repr(got), repr(want)
            print(f"FAILED: {what}\n  got:  {g[:600]}\n  want: {w[:600]}", file=sys.stderr)
            self.failed += 1
        else:
            self.passed += 1
        return ok

    def done(self):
        print(f"{self.name}: {self.passed} passed, {self.failed} failed")
        sys.exit(1 if self.failed or not self.passed else 0)


def run_checks(name, fn):
    """Runs fn(Checks(name)) and exits with its verdict: an exception (a
    timeout, a crash) is a failure, reported with its traceback."""
    c = Checks(name)
    try:
        fn(c)
    except Exception:
        import traceback
        traceback.print_exc()
        c.failed += 1
    c.done()


def tmpdir():
    d = tempfile.mkdtemp(prefix="sessionizer-test-")
    import atexit
    atexit.register(shutil.rmtree, d, True)
    return d


def run(*args, stdin=None, check=True, timeout=300):
    p = subprocess.run([BIN, *args], input=stdin, capture_output=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"sessionizer {' '.join(args)} exited {p.returncode}:\n"
                             f"{p.stderr.decode(errors='replace')}")
    return p


def generate(path, n, *extra):
    subprocess.run([PY, GEN, str(n), "--out", path, *map(str, extra)], check=True)


def table(db):
    """{(session_id, user_id): (pages list, ingestion_time)}"""
    con = sqlite3.connect(db)
    try:
        return {(r[0], r[1]): (json.loads(r[2]), r[3])
                for r in con.execute("SELECT session_id, user_id, pages, ingestion_time FROM sessions")}
    finally:
        con.close()


def content(db):
    """The table without ingestion_time: what must not change across replays."""
    return {k: v[0] for k, v in table(db).items()}


def summary(stderr):
    """Parses the summary line into a dict of counts."""
    import re
    line = [l for l in stderr.decode().splitlines() if " records: " in l][-1]
    nums = [int(x) for x in re.findall(r"(\d+) (?:records|visits|closed|open|dead|invalid|late|over)", line)]
    keys = ["records", "closed_visits", "closed_sessions", "open_visits", "open_sessions",
            "dead", "invalid", "late", "capped"]
    return dict(zip(keys, nums))
