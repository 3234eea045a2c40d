#!/usr/bin/python3
"""A live Kafka -> PostgreSQL job watched as an operator would: its metrics
endpoint scraped every second by a real Prometheus server (Debian's
prometheus package, started here on loopback with a temporary configuration
and data directory), through a broker outage and a PostgreSQL restart.

At each step the test asserts what /readyz, /healthz and the metrics say,
both on the endpoint and through Prometheus' query API:

  1. running, caught up: ready; Prometheus has the records read;
  2. every broker down (the mock cluster's SIGUSR1): not ready, "source
     kafka unreachable", still healthy, sessionizer_up{role="source"} 0 in
     Prometheus; brokers back (SIGUSR2): ready again, the new records read;
  3. PostgreSQL stopped while sessions close: not ready, "sink postgresql
     unreachable", still healthy (the job beats while it retries), retries
     and connection errors counted, sessionizer_up{role="sink"} 0 in
     Prometheus; started again: ready, the sessions written;
  4. at rest, Prometheus' figures equal the job's own summary line after
     SIGTERM, and the table holds exactly the sessions it says it closed.

Environment: SESSIONIZER, KAFKA_MOCK (set by CTest).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import run_checks, summary  # noqa: E402
from metrics_http import http_get, scrape, served_port  # noqa: E402

BIN = os.environ["SESSIONIZER"]
MOCK = os.environ["KAFKA_MOCK"]
PG = os.path.join(HERE, "lib", "pg_server.sh")
FAST = ["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000"]
T0 = 1676851200  # 2023-02-20T00:00:00Z
PROCS = []


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(what, fn, timeout):
    """Polls fn() every 0.2 s until it returns a true value; returns it, or
    raises naming what did not happen."""
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


class Prom:
    def __init__(self, work, target_port):
        self.port = free_port()
        cfg = os.path.join(work, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
                    "scrape_configs:\n  - job_name: sessionizer\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{target_port}']\n")
        self.p = subprocess.Popen(["prometheus", f"--config.file={cfg}",
                                   f"--storage.tsdb.path={work}/prom-data",
                                   f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                                  stdout=subprocess.DEVNULL, stderr=open(f"{work}/prometheus.err", "wb"))
        PROCS.append(self.p)
        wait_for("Prometheus to start", lambda: http_get(f"http://127.0.0.1:{self.port}/-/ready")[0] == 200, 30)

    def query(self, q):
        """{labels-as-tuple: value} of an instant query."""
        st, body = http_get(f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": q}))
        if st != 200:
            return {}
        res = json.loads(body)["data"]["result"]
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("instance", "job"))):
                float(r["value"][1]) for r in res}

    def scalar(self, q):
        r = self.query(q)
        return next(iter(r.values())) if len(r) == 1 else None


def visits(partition, start_s, n, users, step_s, bad_every=0):
    """n records for one partition from event time T0+start_s, step_s apart."""
    lines = []
    for i in range(n):
        if bad_every and i % bad_every == bad_every - 1:
            lines.append(f"not json {partition}-{i}")
            continue
        t = T0 + start_s + i * step_s
        lines.append(json.dumps({"user_id": 1 + (i * 7 + partition) % users, "page": f"p{i % 13}.html",
                                 "event_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))}))
    return lines


def main(c):
    work = tempfile.mkdtemp(prefix="sz-monitoring.")
    os.chmod(work, 0o755)  # the PostgreSQL server runs as another user (pg_server.sh)
    pg_dir = os.path.join(work, "pg")
    try:
        run(c, work, pg_dir)
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run([PG, "destroy", pg_dir], capture_output=True)
        if c.failed and os.environ.get("KEEP"):
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, True)


def run(c, work, pg_dir):
    t_start = time.time()
    r = subprocess.run([PG, "start", pg_dir], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError("pg_server.sh start failed: " + r.stderr[-500:])
    env = r.stdout
    uri = re.search(r"^export PG_URI='([^']*)'$", env, re.M).group(1)  # no quote inside: ours
    mock = subprocess.Popen([MOCK, "--partitions", "2", "--topic", "visits"], stdout=subprocess.PIPE,
                            stderr=open(f"{work}/mock.err", "wb"), stdin=subprocess.DEVNULL)
    PROCS.append(mock)
    brokers = mock.stdout.readline().decode().strip()

    def produce(partition, lines):
        subprocess.run(["kcat", "-P", "-b", brokers, "-t", "visits", "-p", str(partition)],
                       input=("\n".join(lines) + "\n").encode(), check=True, timeout=30)

    # 1. the job, live, scraped ----------------------------------------------
    sent = 0
    for p in (0, 1):
        lines = visits(p, 0, 200, 30, 2, bad_every=50)
        produce(p, lines)
        sent += len(lines)
    err = f"{work}/job.err"
    job = subprocess.Popen([BIN, "run", "--source", f"kafka://{brokers}/visits", "--sink", uri,
                            "--checkpoint", f"{work}/ckpt", "--metrics-listen", "127.0.0.1:0",
                            "--commit-interval", "500ms", "--sink-opt", "retry_backoff_max=500ms",
                            *FAST], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=open(err, "wb"))
    PROCS.append(job)
    port = int(wait_for("the metrics address in the log",
                        lambda: served_port(open(err).read()), 20))
    ep = f"http://127.0.0.1:{port}"
    prom = Prom(work, port)

    def read_total():
        m = scrape(port)
        return sum(v for k, v in m.items() if k.startswith("sessionizer_records_read_total"))

    wait_for(f"the job to read the first {sent} records", lambda: read_total() == sent, 40)
    c.eq(wait_for("/readyz 200", lambda: http_get(ep + "/readyz")[0] == 200 and http_get(ep + "/readyz"), 15),
         (200, "ready\n"), "1: running and caught up: /readyz says ready")
    c.eq(http_get(ep + "/healthz"), (200, "ok\n"), "1: /healthz ok")
    got = wait_for("Prometheus to scrape the records read",
                   lambda: prom.scalar("sum(sessionizer_records_read_total)") == sent and sent, 15)
    c.eq(got, sent, f"1: Prometheus: sum(sessionizer_records_read_total) = {sent} records produced")
    by_part = prom.query("sessionizer_records_read_total")
    c.eq(sorted(by_part.values()), [200.0, 200.0], f"1: 200 per partition: {by_part}")
    log(f"step 1: {sent} records read, ready ({time.time() - t_start:.1f} s)")

    # 2. every broker down, then back ------------------------------------------
    mock.send_signal(signal.SIGUSR1)
    st, body = wait_for("/readyz to report the source down",
                        lambda: (lambda r: r if r[0] == 503 and "source kafka unreachable" in r[1] else None)(
                            http_get(ep + "/readyz")), 20)
    c.check("source kafka unreachable for" in body and "sink" not in body,
            f"2: brokers down: /readyz 503 naming the source alone: {body.strip()}")
    c.eq(http_get(ep + "/healthz")[0], 200, "2: /healthz still ok (the job is waiting, not stuck)")
    c.eq(scrape(port).get('sessionizer_up{role="source",component="kafka"}'), 0.0,
         "2: sessionizer_up{role=source} 0 on the endpoint")
    c.check(wait_for("Prometheus to see the source down",
                     lambda: prom.scalar('sessionizer_up{role="source"}') == 0.0, 10),
            "2: and in Prometheus")
    c.check(scrape(port).get('sessionizer_errors_total{component="kafka",kind="connection"}', 0) > 0,
            "2: Kafka connection errors counted")
    log(f"step 2: brokers down, not ready: {body.strip()}")
    time.sleep(1)
    mock.send_signal(signal.SIGUSR2)
    more = 0
    for p in (0, 1):
        lines = visits(p, 400, 50, 30, 2)
        produce(p, lines)
        more += len(lines)
    sent += more
    wait_for(f"the job to read the {more} records produced after the outage", lambda: read_total() == sent, 40)
    c.eq(wait_for("/readyz 200 after the outage", lambda: http_get(ep + "/readyz")[0] == 200 and http_get(ep + "/readyz"), 20),
         (200, "ready\n"), "2: brokers back: ready again")
    c.check(wait_for("Prometheus to see the source up", lambda: prom.scalar('sessionizer_up{role="source"}') == 1.0, 10),
            "2: Prometheus: source up again")
    log(f"step 2: brokers back, {sent} records read, ready ({time.time() - t_start:.1f} s)")

    # 3. PostgreSQL stopped while sessions close ---------------------------------
    closed_before = scrape(port)["sessionizer_sink_sessions_written_total"]
    subprocess.run([PG, "stop", pg_dir], check=True, capture_output=True)
    for p in (0, 1):  # an hour later: every open session closes and must be written
        lines = visits(p, 4000, 20, 30, 2)
        produce(p, lines)
        sent += len(lines)
    st, body = wait_for("/readyz to report the sink down",
                        lambda: (lambda r: r if r[0] == 503 and "sink postgresql unreachable" in r[1] else None)(
                            http_get(ep + "/readyz")), 30)
    c.check("sink postgresql unreachable for" in body, f"3: PostgreSQL down: /readyz 503 naming the sink: {body.strip()}")
    time.sleep(2)  # a few retries
    c.eq(http_get(ep + "/healthz")[0], 200, "3: /healthz still ok while the sink retries")
    m = scrape(port)
    c.eq(m.get('sessionizer_up{role="sink",component="postgresql"}'), 0.0, "3: sessionizer_up{role=sink} 0")
    retries = m.get('sessionizer_retries_total{component="postgresql"}', 0)
    c.check(retries >= 2 and m.get('sessionizer_errors_total{component="postgresql",kind="connection"}', 0) >= 2,
            f"3: retries and connection errors counted while it is down: {retries} retries")
    c.check(wait_for("Prometheus to see the sink down", lambda: prom.scalar('sessionizer_up{role="sink"}') == 0.0, 10),
            "3: Prometheus: sink down")
    c.check((prom.scalar('sessionizer_retries_total{component="postgresql"}') or 0) > 0,
            "3: Prometheus: retries")
    log(f"step 3: PostgreSQL down, not ready: {body.strip()}")
    subprocess.run([PG, "start-again", pg_dir], check=True, capture_output=True)
    c.eq(wait_for("/readyz 200 after the restart", lambda: http_get(ep + "/readyz")[0] == 200 and http_get(ep + "/readyz"), 30),
         (200, "ready\n"), "3: PostgreSQL back: ready again")
    wait_for("the closed sessions to be written",
             lambda: scrape(port)["sessionizer_sink_sessions_written_total"] > closed_before, 20)
    log(f"step 3: PostgreSQL back, ready ({time.time() - t_start:.1f} s)")

    # 4. at rest: Prometheus = the job's own summary -------------------------------
    wait_for("every record read", lambda: read_total() == sent, 20)
    time.sleep(1.5)  # a snapshot after the last commit
    final = scrape(port)
    names = ["sessionizer_records_read_total", "sessionizer_dead_letters_total",
             "sessionizer_sessions_closed_total", "sessionizer_sessions_open", "sessionizer_pages_held",
             "sessionizer_visits_accepted_total"]

    def from_prom():
        return tuple(prom.scalar(f"sum({n})") for n in names)

    def from_endpoint():
        return tuple(sum(v for k, v in final.items() if k == n or k.startswith(n + "{")) for n in names)

    want = from_endpoint()
    wait_for("Prometheus to scrape the final figures", lambda: from_prom() == want, 10)
    in_prom = from_prom()
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=30)
    c.eq(job.returncode, 0, "4: SIGTERM: exit 0")
    s = summary(open(err, "rb").read())
    c.eq(in_prom, (s["records"], s["dead"], s["closed_sessions"], s["open_sessions"], s["open_visits"],
                   s["closed_visits"] + s["open_visits"]),
         "4: Prometheus' records, dead letters, sessions closed and open, pages held, visits = the summary's")
    c.eq(s["records"], sent, f"4: the summary counts the {sent} records produced")
    rows = subprocess.run([PG, "psql", pg_dir, "-tAc", "SELECT count(*) FROM sessions"], capture_output=True,
                          text=True, check=True).stdout.strip()
    c.eq(int(rows), s["closed_sessions"], "4: the table holds exactly the sessions closed (no duplicate)")
    c.check(all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info|warn|error) [a-z]+: ", line)
                for line in open(err).read().splitlines()), "4: every line of the job's stderr is a log line")
    log(f"step 4: summary = Prometheus: {dict(zip(names, in_prom))}; {time.time() - t_start:.1f} s in all")


if __name__ == "__main__":
    run_checks("monitoring", main)
