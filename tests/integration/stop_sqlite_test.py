#!/usr/bin/python3
"""stop_sqlite_test.py - SIGTERM while the SQLite sink waits for a lock that
another process holds on its database ends the job at once: the flush
gives up, the job exits 1 with its last checkpoint, and a run after the
lock is released ends with the table of an undisturbed run.

Before the common retry helper the wait was SQLite's busy_timeout (10 s per
statement, ignoring the stop), then up to 5 more COMMIT attempts.
"""
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import BIN, Checks, content, generate, run, tmpdir  # noqa: E402


def main():
    c = Checks("stop_sqlite")
    d = tmpdir()
    log = f"{d}/visits.jsonl"
    generate(log, 20000, "--users", 500, "--seed", 31)
    run("run", "--source", f"file:{log}", "--sink", f"sqlite:{d}/ref.db", "--until-end", "-q",
        "--dlq", f"jsonl:{d}/ref.dlq")
    lines = open(log, "rb").read().splitlines(keepends=True)
    fifo = f"{d}/in"
    os.mkfifo(fifo)
    args = ["run", "--source", f"file:{fifo}", "--sink", f"sqlite:{d}/s.db", "--checkpoint",
            f"{d}/cp", "--commit-every", "500", "--commit-interval", "200ms", "-q"]
    p = subprocess.Popen([BIN, *args], stderr=subprocess.PIPE)
    w = open(fifo, "wb")
    w.writelines(lines[:10000])
    w.flush()
    db = f"{d}/s.db"
    deadline = time.time() + 30
    rows = 0
    while time.time() < deadline and not rows:
        time.sleep(0.1)
        try:
            rows = sqlite3.connect(db, timeout=5).execute("SELECT count(*) FROM sessions").fetchone()[0]
        except sqlite3.Error:
            pass
    c.check(rows > 0, "the first sessions reached the table")
    holder = sqlite3.connect(db, isolation_level=None, timeout=5)
    holder.execute("BEGIN EXCLUSIVE")  # the job's next flush must wait for it
    def rest():  # the job stops reading while it waits: write from aside
        try:
            w.writelines(lines[10000:])
            w.close()
        except BrokenPipeError:
            pass
    threading.Thread(target=rest, daemon=True).start()
    time.sleep(2)
    if not c.check(p.poll() is None, "the job waits for the lock"):
        print(p.stderr.read().decode(errors="replace")[-2000:])
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    took = time.monotonic() - t0
    err = p.stderr.read().decode(errors="replace")
    print(f"SIGTERM while a flush waits for a lock: exit {p.returncode} after {took:.2f} s")
    c.check(took < 3, f"the job stops within 3 s of SIGTERM ({took:.1f} s)")
    c.eq(p.returncode, 1, "exit 1: the final commit could not be made")
    c.check("asked to stop" in err, f"the message says why: {err.strip()[-300:]}")
    holder.execute("ROLLBACK")
    holder.close()
    os.unlink(fifo)
    shutil.copy(log, fifo)  # the same bytes at the same path: the checkpoint resumes
    run(*args, "--until-end")
    c.eq(content(db), content(f"{d}/ref.db"), "the resumed run completes the undisturbed table")
    c.done()


if __name__ == "__main__":
    main()
