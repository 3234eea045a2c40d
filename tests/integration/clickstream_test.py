#!/usr/bin/python3
"""clickstream_test.py SESSIONIZER - a realistic clickstream, as a new user
would bring it, into SQLite, PostgreSQL and the CQL test server with every
session column (issue 13):

  {"eventId": "...", "user": {"id": "<UUID>", "plan": "pro"},
   "context": {"page": {"url": "/pricing", "title": "..."}, "userAgent": "..."},
   "ts": 1676862200123, "props": {...}}

with nested fields, UUID users, epoch-millisecond times (numbers, some as
strings), fields the job ignores, and a few bad records (no user, a number
for the user, an unreadable time, not JSON). Each table is compared with the
independent Python oracle (lib/oracle.py): the same session ids (the string
form of docs/semantics.md), users, pages, first and last event times, visit
counts (over the page cap too) and durations, in each store's native types;
the CQL table is read back through the DataStax driver (python3-cassandra).
The PostgreSQL table already exists with an extra column that has a default
(loaded_at timestamptz default now()), as a user's table would.
"""
import datetime
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(ROOT, "tests", "cql"))
import oracle  # noqa: E402
from harness import Checks  # noqa: E402

BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "sessionizer")
PG = os.path.join(HERE, "lib", "pg_server.sh")
LAYOUT = {"user": "/user/id", "page": "/context/page/url", "time": "/ts", "user_type": "string",
          "time_format": "epoch_ms"}
ARGS = ["--field", "user=/user/id", "--field", "page=/context/page/url", "--field", "time=/ts",
        "--time-format", "epoch_ms", "--user-type", "string",
        "--columns", "session_start,session_end,visit_count,duration", "--max-pages", "20"]
UTC = datetime.timezone.utc


def clickstream(path, n, seed):
    rnd = random.Random(seed)
    users = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(150)]
    pages = ["/", "/pricing", "/docs/start", "/docs/api", "/blog/é-2023", "/signup", "/cart?id=7"]
    t = 1676862200000
    lines = []
    for i in range(n):
        t += rnd.randint(0, 900)
        u = rnd.choice(users[:3]) if rnd.random() < 0.15 else rnd.choice(users)  # a few heavy users
        ts = t - rnd.randint(0, 8000)  # a little out of order
        rec = {"eventId": str(uuid.UUID(int=rnd.getrandbits(128))), "type": "page_view",
               "user": {"id": u, "plan": rnd.choice(["free", "pro"]), "tags": ["a", 1, None]},
               "context": {"page": {"url": rnd.choice(pages), "title": "T"},
                           "userAgent": "Mozilla/5.0", "ip": "10.0.0.%d" % rnd.randint(1, 254)},
               "ts": str(ts) if rnd.random() < 0.1 else ts, "props": {"x": rnd.random()}}
        lines.append(json.dumps(rec, ensure_ascii=rnd.random() < 0.5))
    lines[10] = json.dumps({"eventId": "no-user", "context": {"page": {"url": "/"}}, "ts": t})
    lines[20] = json.dumps({"user": {"id": 42}, "context": {"page": {"url": "/"}}, "ts": t})
    lines[30] = json.dumps({"user": {"id": users[0]}, "context": {"page": {"url": "/"}}, "ts": "soon"})
    lines[40] = '{"user": {"id": "cut short'
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def expected(path):
    extra = {}
    rows, counts = oracle.sessions(open(path, "rb").read(), max_pages=20, layout=LAYOUT, extra=extra)
    return rows, counts, extra


def us_to_dt(us):
    return datetime.datetime(1970, 1, 1, tzinfo=UTC) + datetime.timedelta(microseconds=us)


def run(c, src, sink, work, *extra):
    p = subprocess.run([BIN, "run", "--source", f"file:{src}", "--sink", sink, "--until-end",
                        "--checkpoint", os.path.join(work, "cp-" + sink.split(":")[0]),
                        "--dlq", f"jsonl:{work}/dlq-{sink.split(':')[0]}.jsonl", *ARGS, *extra],
                       capture_output=True, text=True, timeout=300)
    c.check(p.returncode == 0, f"{sink.split(':')[0]} run succeeds: {p.stderr.strip()[-400:]}")
    return p


def main():
    c = Checks("clickstream")
    work = tempfile.mkdtemp(prefix="clickstream-")
    pgdir = tempfile.mkdtemp(prefix="clickstream-pg-")  # the server's account must reach it
    os.chmod(pgdir, 0o755)
    try:
        src = os.path.join(work, "clicks.jsonl")
        clickstream(src, 6000, 13)
        rows, counts, extra = expected(src)
        c.check(len(rows) > 200 and counts["invalid"] == 4 and counts["capped"] > 0,
                f"a realistic workload: {len(rows)} sessions, {counts['invalid']} bad, {counts['capped']} capped")
        want = {k: (rows[k], f, l, n, l - f) for k, (f, l, n) in extra.items()}

        # SQLite: TEXT times to the microsecond, INTEGER visit_count and duration (ms)
        db = os.path.join(work, "s.db")
        run(c, src, f"sqlite:{db}", work)
        con = sqlite3.connect(db)
        got = {(r[0], r[1]): (json.loads(r[2]), r[3], r[4], r[5], r[6]) for r in con.execute(
            "SELECT session_id, user_id, pages, session_start, session_end, visit_count, duration FROM sessions")}
        con.close()
        iso = lambda us: us_to_dt(us).strftime("%Y-%m-%dT%H:%M:%S") + (f".{us % 10**6:06d}" if us % 10**6 else "") + "Z"
        c.eq(got, {k: (p, iso(f), iso(l), n, d // 1000) for k, (p, f, l, n, d) in want.items()},
             "SQLite table = oracle (ids, users, pages, start, end, visit_count, duration ms)")
        dl = [json.loads(x) for x in open(f"{work}/dlq-sqlite.jsonl")]
        c.eq(sorted(x["reason"] for x in dl if x["reason"] not in ("late", "session_cap")),
             ["bad_event_time", "invalid_json", "missing_field", "mistyped_field"],
             "the bad records dead-lettered with their reasons")

        # PostgreSQL: an existing table with an extra defaulted column; timestamptz, bigint, interval
        env = subprocess.run(["bash", PG, "start", pgdir], capture_output=True, text=True, timeout=120)
        if not c.check(env.returncode == 0, "PostgreSQL starts: " + env.stderr[-300:]):
            c.done()
        for line in env.stdout.splitlines():
            if line.startswith("export "):
                k, v = line[7:].split("=", 1)
                os.environ[k] = v.strip("'\"")
        psql = lambda sql: subprocess.run(["bash", PG, "psql", pgdir, "-At", "-F", "\t", "-c", sql],
                                          capture_output=True, text=True, timeout=60)
        psql("CREATE TABLE sessions (session_id bigint, user_id text, pages text[], ingestion_time "
             "timestamptz, session_start timestamptz, session_end timestamptz, visit_count bigint, "
             "duration interval, loaded_at timestamptz DEFAULT now(), PRIMARY KEY (session_id, user_id))")
        run(c, src, os.environ["PG_URI"], work, "--no-create-schema")
        out = psql("SELECT session_id, user_id, array_to_json(pages), "
                   "(extract(epoch from session_start) * 1000000)::bigint, "
                   "(extract(epoch from session_end) * 1000000)::bigint, visit_count, "
                   "(extract(epoch from duration) * 1000000)::bigint, loaded_at IS NOT NULL FROM sessions")
        got = {}
        for line in out.stdout.splitlines():
            sid, uid, pages, f, l, n, d, loaded = line.split("\t")
            got[(int(sid), uid)] = (json.loads(pages), int(f), int(l), int(n), int(d), loaded)
        c.eq(got, {k: (*v, "t") for k, v in want.items()},
             "PostgreSQL table = oracle (timestamptz and interval to the microsecond; loaded_at filled by its default)")

        # CQL test server, read back with the DataStax driver: timestamps and duration in ms
        from cqltest import TestServer
        import logging
        import warnings
        logging.basicConfig(level=logging.CRITICAL)
        warnings.simplefilter("ignore", DeprecationWarning)
        from cassandra.cluster import Cluster
        from cassandra.policies import RoundRobinPolicy
        with TestServer() as srv:
            run(c, src, f"cql://127.0.0.1:{srv.port}/clicks", work)
            cl = Cluster(["127.0.0.1"], port=srv.port, protocol_version=4, connect_timeout=5,
                         load_balancing_policy=RoundRobinPolicy())
            sess = cl.connect()
            got = {}
            for r in sess.execute("SELECT session_id, user_id, pages, session_start, session_end, "
                                  "visit_count, duration FROM clicks.sessions"):
                ms = lambda d: round(d.replace(tzinfo=UTC).timestamp() * 1000)
                got[(r.session_id, r.user_id)] = (list(r.pages), ms(r.session_start), ms(r.session_end),
                                                  r.visit_count, r.duration)
            cl.shutdown()
        c.eq(got, {k: (p, f // 1000, l // 1000, n, d // 1000) for k, (p, f, l, n, d) in want.items()},
             "CQL table (read by the DataStax driver) = oracle (timestamps and duration in ms)")
    finally:
        subprocess.run(["bash", PG, "destroy", pgdir], capture_output=True, timeout=60)
        shutil.rmtree(work, True)
        shutil.rmtree(pgdir, True)
    c.done()


if __name__ == "__main__":
    main()
