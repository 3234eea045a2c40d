#!/usr/bin/python3
"""The metrics endpoint and systemd notifications of a running job:

  metrics_test.py endpoint | notify

endpoint: a job on standard input with --metrics-listen 127.0.0.1:0; its
/metrics passes `promtool check metrics` (Debian's prometheus package) and
its figures equal what the job's own summary line says at the end; /healthz
and /readyz answer 200 while it runs; a bad address is refused.

notify: NOTIFY_SOCKET and WATCHDOG_USEC set as systemd sets them for a
Type=notify service with WatchdogSec: the job sends READY=1 once running,
WATCHDOG=1 at half the interval (1 s here) while it runs (idle included), and
STOPPING=1 on SIGTERM, then exits 0.
"""
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import BIN, generate, run_checks, summary, tmpdir  # noqa: E402
from metrics_http import get, parse_metrics, scrape, served_port  # noqa: E402


def wait_port(err_path, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        port = served_port(open(err_path).read())
        if port:
            return port
        time.sleep(0.05)
    raise AssertionError("the job did not say where it serves metrics: " + open(err_path).read())


def t_endpoint(c):
    d = tmpdir()
    log = f"{d}/visits.jsonl"
    generate(log, 5000, "--users", 200, "--bad", 0.03, "--disorder", 30, "--seed", 21)
    n = sum(1 for _ in open(log, "rb"))
    err = f"{d}/job.err"
    p = subprocess.Popen([BIN, "run", "--source", "-", "--sink", f"sqlite:{d}/s.db", "--checkpoint",
                          f"{d}/cp", "--metrics-listen", "127.0.0.1:0", "--commit-interval", "200ms"],
                         stdin=subprocess.PIPE, stderr=open(err, "wb"))
    try:
        port = wait_port(err)
        p.stdin.write(open(log, "rb").read())
        p.stdin.flush()
        # the figures arrive with the next publication (each commit, every second)
        deadline, m = time.time() + 20, {}
        while time.time() < deadline:
            m = scrape(port)
            if m.get('sessionizer_records_read_total{partition="0"}') == n:
                break
            time.sleep(0.1)
        c.eq(m.get('sessionizer_records_read_total{partition="0"}'), n, "records read reach the input's")
        time.sleep(1.2)  # a publication after the last commit: the figures at rest
        status, text = get(port, "/metrics")
        c.eq(status, 200, "/metrics answers 200")
        open(f"{d}/metrics.txt", "w").write(text)
        pc = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)
        c.check(pc.returncode == 0, "promtool check metrics accepts it: "
                + (pc.stdout + pc.stderr).decode()[:500])
        m = parse_metrics(text)
        c.eq(get(port, "/healthz"), (200, "ok\n"), "/healthz: ok")
        c.eq(get(port, "/readyz"), (200, "ready\n"), "/readyz: ready")
        c.eq(get(port, "/nope")[0], 404, "another path: 404")
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    c.eq(p.returncode, 0, "the job exits 0 at the end of its input")
    s = summary(open(err, "rb").read())
    dead = sum(v for k, v in m.items() if k.startswith("sessionizer_dead_letters_total"))
    c.eq((m['sessionizer_records_read_total{partition="0"}'], dead,
          m.get('sessionizer_dead_letters_total{reason="late"}', 0),
          m["sessionizer_sessions_closed_total"], m["sessionizer_sessions_open"],
          m["sessionizer_pages_held"]),
         (s["records"], s["dead"], s["late"], s["closed_sessions"], s["open_sessions"], s["open_visits"]),
         "records, dead letters (all, late), sessions closed and open, pages held = the summary's")
    c.eq(dead - m.get('sessionizer_dead_letters_total{reason="late"}', 0)
         - m.get('sessionizer_dead_letters_total{reason="session_cap"}', 0), s["invalid"],
         "the other reasons add up to the summary's invalid records")
    c.eq(m["sessionizer_visits_accepted_total"], s["closed_visits"] + s["open_visits"],
         "visits accepted = visits in closed and open sessions (no cap here)")
    c.eq(m["sessionizer_sessions_opened_total"],
         m["sessionizer_sessions_closed_total"] + m["sessionizer_sessions_merged_total"]
         + m["sessionizer_sessions_open"], "sessions opened = closed + merged + open")
    c.eq(m["sessionizer_sink_sessions_written_total"], s["closed_sessions"],
         "sessions written to the sink = sessions closed")
    c.check(m["sessionizer_commits_total"] >= 2 and
            m['sessionizer_commit_duration_seconds_bucket{le="+Inf"}'] == m["sessionizer_commits_total"],
            "commits counted, each in the histogram")
    c.check(m["sessionizer_checkpoint_bytes"] > 0 and m["process_resident_memory_bytes"] > 1e6,
            "checkpoint bytes and resident memory")
    c.eq(m['sessionizer_up{role="source",component="stdin"}'], 1, "source up")
    c.eq(m['sessionizer_up{role="sink",component="sqlite"}'], 1, "sink up")

    p = subprocess.run([BIN, "run", "--source", "-", "--sink", "null:", "--dlq", f"jsonl:{d}/x",
                        "--metrics-listen", "256.0.0.1:9464"], input=b"", capture_output=True)
    c.check(p.returncode == 1 and b"256.0.0.1:9464" in p.stderr, "a bad address is refused: "
            + p.stderr.decode()[:200])
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    p = subprocess.run([BIN, "run", "--source", "-", "--sink", "null:", "--dlq", f"jsonl:{d}/x",
                        "--metrics-listen", f"127.0.0.1:{busy.getsockname()[1]}"], input=b"",
                       capture_output=True)
    c.check(p.returncode == 1 and b"cannot serve metrics" in p.stderr, "a port in use is refused: "
            + p.stderr.decode()[:200])
    busy.close()
    # --scale-out serves its own figures: scaleout_test.py metrics


def t_notify(c):
    d = tmpdir()
    path = f"{d}/notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
    env.pop("WATCHDOG_PID", None)
    p = subprocess.Popen([BIN, "run", "--source", "-", "--sink", f"sqlite:{d}/s.db", "--checkpoint",
                          f"{d}/cp"], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    got = []  # (time, message)

    def drain(seconds):
        end = time.time() + seconds
        while time.time() < end:
            try:
                got.append((time.time(), sock.recv(4096).decode()))
            except socket.timeout:
                pass

    try:
        deadline = time.time() + 20  # start-up (slower under ASan and load) ends with READY=1
        while time.time() < deadline and "READY=1" not in [m for _, m in got]:
            drain(0.1)
        drain(2.5)  # then idle: no input at all
        p.send_signal(signal.SIGTERM)
        drain(1.0)
        p.wait(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    msgs = [m for _, m in got]
    c.eq(p.returncode, 0, "SIGTERM: exit 0")
    c.check("READY=1" in msgs, f"READY=1 sent: {msgs[:5]}")
    ready_at = next((t for t, m in got if m == "READY=1"), None)
    dogs = [t for t, m in got if m == "WATCHDOG=1"]
    c.check(len(dogs) >= 4, f"WATCHDOG=1 every ~500 ms while idle ({len(dogs)} in the 2.5 s after READY=1)")
    gaps = [b - a for a, b in zip(dogs, dogs[1:])]
    c.check(gaps and max(gaps) < 1.0, f"never 1 s (WATCHDOG_USEC) without one: max gap {max(gaps or [0]):.3f} s")
    c.check("STOPPING=1" in msgs and msgs.index("STOPPING=1") > msgs.index("READY=1"),
            "STOPPING=1 after READY=1 on SIGTERM")
    c.check(ready_at is not None and all(t >= ready_at for t in dogs[1:]), "watchdog pings from the running job")
    # without NOTIFY_SOCKET nothing is sent and nothing breaks: every other test


TESTS = {"endpoint": t_endpoint, "notify": t_notify}

if __name__ == "__main__":
    run_checks(f"metrics.{sys.argv[1]}", TESTS[sys.argv[1]])
