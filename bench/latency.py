#!/usr/bin/python3
"""Close-to-acknowledgement latency, measured from outside the process.

    latency.py SESSIONIZER OUT_DIR [--seconds 8] [--rate 20000] [--commit-interval 1s]

A pacer feeds sessionizer's standard input at RATE visits per wall second
while an observer polls the SQLite sink's table; nothing inside sessionizer is
instrumented. The stream is built so that the moment each session must close
is known exactly:

  - visit i has event time T0 + i * STEP, STEP = SPEEDUP / RATE (1 ms at
    20000 visits/s), strictly increasing, so nothing is late and no two
    sessions tie; it belongs to user i // 5: every user makes one session of
    5 visits and never comes back;
  - the closing watermark is max event time - L and a session closes when it
    exceeds last + G, i.e. on the first visit whose time is more than
    last + G + L: visit last_index + (G + L) / STEP + 1. That visit is the
    one that makes the watermark pass the session's close.
  - sessions close in the order of their last visit, and a sink commit makes
    a prefix of that order visible, so "count(*) = k" at time T means the
    first k sessions had been acknowledged by T.

latency(session) = (first poll that sees it) - (wall time the pacer wrote the
visit that closed it). It includes the pipe and read delay (tens of
microseconds), the wait for the next commit, and the commit itself; the poll
adds up to one poll interval (2 ms). Event time runs SPEEDUP = 20x faster than
wall time so that sessions close a few seconds in rather than a minute.
"""
import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time

G_MS, L_MS, VISITS_PER_SESSION = 50000, 10000, 5


def line(i, step_ms):
    s, ms = divmod(i * step_ms, 1000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return (b'{"user_id": %d, "page": "page_%d.html", "event_time": "2023-02-20T%02d:%02d:%02d.%03d"}\n'
            % (i // VISITS_PER_SESSION, i % 200, h, m, s, ms))


def percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    k = (len(sorted_vals) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def measure(sessionizer, out_dir, seconds=8.0, rate=20000, commit_interval="1s", poll_s=0.002,
            speedup=20):
    n = int(seconds * rate)
    step_ms = speedup * 1000 // rate
    if step_ms < 1 or (G_MS + L_MS) % step_ms:
        raise ValueError(f"rate {rate}: the event-time step must be a divisor of {G_MS + L_MS} ms")
    data = [line(i, step_ms) for i in range(n)]
    db = os.path.join(out_dir, "latency.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    p = subprocess.Popen([sessionizer, "run", "--source", "-", "--sink", "sqlite:" + db,
                          "--commit-interval", commit_interval, "-q",
                          "--dlq", "jsonl:" + os.path.join(out_dir, "latency-dlq.jsonl")],
                         stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []  # (time, count)
    stop = threading.Event()

    def observe():
        con = None
        while not stop.is_set():
            try:
                if con is None:
                    con = sqlite3.connect(db, timeout=1)
                c = con.execute("SELECT count(*) FROM sessions").fetchone()[0]
                t = time.monotonic()
                if not seen or c != seen[-1][1]:
                    seen.append((t, c))
            except sqlite3.Error:
                if con is not None:
                    con.close()
                con = None
            time.sleep(poll_s)
        if con is not None:
            con.close()

    obs = threading.Thread(target=observe, daemon=True)
    obs.start()
    sent_at = [0.0] * n
    fd = p.stdin.fileno()
    t0 = time.monotonic()
    i = 0
    while i < n:
        now = time.monotonic()
        target = min(n, int((now - t0) * rate) + 1)
        if target > i:
            os.write(fd, b"".join(data[i:target]))
            t = time.monotonic()
            for j in range(i, target):
                sent_at[j] = t
            i = target
        time.sleep(0.001)
    # Let the last commit interval pass, then end the input.
    time.sleep(float(commit_interval.rstrip("ms")) / (1000 if commit_interval.endswith("ms") else 1)
               + 0.5)
    stop.set()
    obs.join()
    p.stdin.close()
    err = p.stderr.read().decode(errors="replace")
    rc = p.wait()
    if rc != 0:
        raise RuntimeError(f"sessionizer exited {rc}: {err[-1000:]}")
    lat = []
    k = 0  # session index (close order)
    for t, c in seen:
        while k < c:
            last = k * VISITS_PER_SESSION + VISITS_PER_SESSION - 1
            closer = last + (G_MS + L_MS) // step_ms + 1
            if closer >= n:
                raise RuntimeError(f"session {k} is visible but its closing visit was never sent")
            lat.append(t - sent_at[closer])
            k += 1
    lat.sort()
    ms = [x * 1000 for x in lat]
    return {"sessions": len(ms), "p50_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99),
            "max_ms": ms[-1] if ms else None, "min_ms": ms[0] if ms else None,
            "mean_ms": statistics.fmean(ms) if ms else None, "rate": rate,
            "commit_interval_ms": float(commit_interval.rstrip("ms")) *
            (1 if commit_interval.endswith("ms") else 1000)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sessionizer")
    ap.add_argument("out")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--commit-interval", default="1s")
    ap.add_argument("--speedup", type=int, default=20, help="event seconds per wall second")
    a = ap.parse_args()
    r = measure(a.sessionizer, a.out, a.seconds, a.rate, a.commit_interval, speedup=a.speedup)
    print(r)


if __name__ == "__main__":
    sys.exit(main())
