#!/usr/bin/python3
"""The benchmark driver behind bench/run (which builds and generates first).

Runs every figure and its peer side by side, ROUNDS times round-robin (so that
a burst of load on the machine hits peers alike), takes the median of each
figure, checks that the peers computed the same thing, and prints one table.
Results also go to OUT/results.json and OUT/table.md (pasted into
docs/performance.md).

Only the Python standard library; /usr/bin/time for wall time and peak RSS.
"""
import argparse
import glob
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIG_MOD = 2305843009213693951  # 2^61 - 1, as in duckdb_sessions.mjs

SUMMARY = re.compile(
    r"sessionizer: (\d+) records: (\d+) visits in (\d+) closed sessions, (\d+) visits in (\d+) "
    r"open sessions, (\d+) dead-lettered \((\d+) invalid, (\d+) late, (\d+) over the session "
    r"cap\); ([\d.]+)s")


class BenchError(Exception):
    pass


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def timed(cmd, out_dir, tag, stdin=None, env=None, cwd=None):
    """Runs cmd under /usr/bin/time. Returns dict: wall, user, sys, rss_kb, stdout, stderr."""
    tfile = os.path.join(out_dir, f"time-{tag}.txt")
    full = ["/usr/bin/time", "-o", tfile, "-f", "%e %U %S %M"] + cmd
    p = subprocess.run(full, stdin=stdin, capture_output=True, env=env, cwd=cwd)
    if p.returncode != 0:
        raise BenchError(f"{tag}: {' '.join(cmd)} exited {p.returncode}:\n"
                         f"{p.stderr.decode(errors='replace')[-2000:]}")
    with open(tfile) as f:
        last = f.read().strip().splitlines()[-1]
    wall, user, sys_, rss = last.split()
    return {"wall": float(wall), "user": float(user), "sys": float(sys_), "rss_kb": int(rss),
            "stdout": p.stdout.decode(errors="replace"), "stderr": p.stderr.decode(errors="replace")}


def summary_of(stderr):
    m = None
    for m in SUMMARY.finditer(stderr):
        pass
    if not m:
        raise BenchError(f"no summary line in sessionizer's output:\n{stderr[-2000:]}")
    g = [int(x) for x in m.groups()[:9]]
    return {"records": g[0], "visits_closed": g[1], "sessions_closed": g[2], "visits_open": g[3],
            "sessions_open": g[4], "dead": g[5], "invalid": g[6], "late": g[7], "cap": g[8],
            "seconds": float(m.group(10)), "resumed": "resumed from checkpoint" in stderr}


def sqlite_stats(path):
    con = sqlite3.connect(path)
    try:
        row = con.execute(
            "SELECT count(*), sum(json_array_length(pages)), max(json_array_length(pages)), "
            f"sum(user_id * json_array_length(pages)) % {SIG_MOD} FROM sessions").fetchone()
    finally:
        con.close()
    return {"sessions": row[0], "pages": row[1], "max_pages": row[2], "signature": str(row[3])}


def rm(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        for suffix in ("", "-wal", "-shm", ".wal"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


# ---- the figures ------------------------------------------------------------

class Bench:
    def __init__(self, a):
        self.a = a
        self.out = a.out
        self.sz = a.sessionizer
        self.rounds = []  # list of dict name -> value
        self.checks = []  # (description, ok, detail)
        self.notes = []

    def check(self, what, ok, detail=""):
        self.checks.append((what, bool(ok), detail))
        if not ok:
            log(f"CHECK FAILED: {what} {detail}")

    # engine: file -> null / sqlite, I/O limit, DuckDB
    def io_limit(self, r):
        res = timed([self.a.linesplit, self.a.data], self.out, "linesplit")
        lines, nbytes, secs = res["stdout"].split()[:3]
        r["io.lines"] = int(lines)
        r["io.seconds"] = float(secs)
        r["io.rate"] = int(lines) / float(secs)
        r["io.mb_s"] = int(nbytes) / float(secs) / 1e6

    def sz_file(self, r, sink, tag, extra=()):
        args = [self.sz, "run", "--source", "file:" + self.a.data, "--sink", sink, "--until-end",
                "--dlq", "jsonl:" + os.path.join(self.out, f"dlq-{tag}.jsonl"), *extra]
        res = timed(args, self.out, tag)
        s = summary_of(res["stderr"])
        r[f"{tag}.wall"] = res["wall"]
        r[f"{tag}.cpu"] = res["user"] + res["sys"]
        r[f"{tag}.rss_mb"] = res["rss_kb"] / 1024
        r[f"{tag}.rate"] = s["records"] / res["wall"]
        r[f"{tag}.sessions_rate"] = s["sessions_closed"] / res["wall"]
        return s

    def tool(self, name):
        """A benchmark program built beside the sessionizer binary, or None."""
        path = os.path.join(os.path.dirname(self.sz), name)
        if os.access(path, os.X_OK):
            return path
        note = f"{name} is not built beside {self.sz}: its figures are skipped"
        if note not in self.notes:
            self.notes.append(note)
        return None

    def sqlite_limit(self, r, db):
        """SQLite alone writing the rows the sink wrote, in the same transactions."""
        tool = self.tool("sqlite-limit")
        if not tool:
            return
        res = timed([tool, db, os.path.join(self.out, "sqlite-limit.db")], self.out,
                    "sqlite_limit")
        mt = re.search(r"(\d+) rows in (\d+) transactions in ([0-9.]+) s", res["stdout"])
        r["sqlite_limit.seconds"] = float(mt.group(3))
        r["sqlite_limit.transactions"] = int(mt.group(2))
        r["sqlite_limit.rate"] = self.n_visits / float(mt.group(3))
        rm(os.path.join(self.out, "sqlite-limit.db"))

    def engine_order(self, r):
        """The engine alone on Kafka's delivery order (bench/engine_order.c)."""
        tool = self.tool("engine-order")
        if not tool:
            return
        res = timed([tool], self.out, "engine_order")
        b = re.search(r"batched by \d+ per partition: +(\d+) ns/visit", res["stdout"])
        i = re.search(r"interleaved: +(\d+) ns/visit", res["stdout"])
        r["kafka.engine.value"] = 1e9 / int(b.group(1))
        r["kafka.engine.peer_value"] = 1e9 / int(i.group(1))
        self.meta(r, "kafka.engine", section="kafka", unit="/s",
                  peer="the same, interleaved",
                  figure="engine alone, Kafka's order (bench/engine_order.c): visits/s")

    def duckdb(self, r, mode):
        tag = "duck_" + mode
        db = os.path.join(self.out, "duck.db")
        args = ["node", os.path.join(HERE, "duckdb_sessions.mjs"), self.a.data, "--threads",
                str(self.a.duckdb_threads), "--mode", mode, "--out", db]
        res = timed(args, self.out, tag)
        j = json.loads(res["stdout"].strip().splitlines()[-1])
        r[f"{tag}.wall"] = j["seconds"]          # connect + query (+ CHECKPOINT): no node startup
        r[f"{tag}.process_wall"] = res["wall"]
        r[f"{tag}.cpu"] = res["user"] + res["sys"]
        r[f"{tag}.rss_mb"] = res["rss_kb"] / 1024
        r[f"{tag}.rate"] = self.n_visits / j["seconds"]
        r[f"{tag}.sessions_rate"] = j["sessions"] / j["seconds"]
        rm(db)
        return j

    # memory: bytes per open session, via stdin so that the process can be
    # inspected (VmRSS) after it has applied everything and before it exits.
    def rss_after(self, path):
        size = os.path.getsize(path)
        # Dead letters to a file: a full stderr pipe must not block the run.
        p = subprocess.Popen([self.sz, "run", "--source", "-", "--sink", "null:", "--dlq",
                              "jsonl:" + os.path.join(self.out, "dlq-memory.jsonl")],
                             stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            with open(path, "rb") as f:
                shutil.copyfileobj(f, p.stdin, 1 << 20)
            p.stdin.flush()
            deadline = time.time() + 120
            while True:  # everything read, and blocked in read() again
                with open(f"/proc/{p.pid}/io") as f:
                    rchar = int(next(l for l in f if l.startswith("rchar")).split()[1])
                with open(f"/proc/{p.pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                if rchar >= size and state == "S":
                    break
                if time.time() > deadline:
                    raise BenchError("memory probe: sessionizer did not finish reading")
                time.sleep(0.02)
            time.sleep(0.05)
            st = {}
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    k, v = line.split(":", 1)
                    st[k] = v.strip()
        finally:
            p.stdin.close()
            err = p.stderr.read().decode(errors="replace")
            p.wait()
        s = summary_of(err)
        return int(st["VmRSS"].split()[0]), int(st["VmHWM"].split()[0]), s

    def memory(self, r):
        one = os.path.join(self.out, "one.jsonl")
        with open(self.a.open_data, "rb") as f, open(one, "wb") as g:
            g.write(f.readline())
        base_rss, _, _ = self.rss_after(one)
        rss, hwm, s = self.rss_after(self.a.open_data)
        n = s["sessions_open"]
        self.check("memory run: every session stays open", n == self.a.open_n,
                   f"{n} open of {self.a.open_n}")
        r["mem.open_sessions"] = n
        r["mem.base_rss_mb"] = base_rss / 1024
        r["mem.rss_mb"] = rss / 1024
        r["mem.hwm_mb"] = hwm / 1024
        r["mem.bytes_per_session"] = (rss - base_rss) * 1024 / n
        r["mem.page_bytes"] = self.open_page_bytes / n
        r["mem.beyond_pages"] = r["mem.bytes_per_session"] - r["mem.page_bytes"]

    # checkpoint size and recovery time from 1M open sessions
    def recovery(self, r):
        cp = os.path.join(self.out, "checkpoint-1m")
        rm(cp)
        args = [self.sz, "run", "--source", "file:" + self.a.open_data, "--sink", "null:",
                "--checkpoint", cp]
        res = timed(args, self.out, "cp_write")
        s = summary_of(res["stderr"])
        self.check("checkpoint run: every session stays open", s["sessions_open"] == self.a.open_n)
        r["cp.write_wall"] = res["wall"]
        r["cp.bytes"] = dir_bytes(cp)
        r["cp.bytes_per_session"] = r["cp.bytes"] / s["sessions_open"]
        # The same file again: nothing new to read, so the run is the restore.
        res = timed(args, self.out, "cp_restore")
        s2 = summary_of(res["stderr"])
        self.check("recovery run: resumed with every session",
                   s2["resumed"] and s2["sessions_open"] == self.a.open_n and s2["records"] ==
                   self.a.open_n, f"resumed={s2['resumed']} open={s2['sessions_open']}")
        r["cp.restore_wall"] = res["wall"]
        r["cp.restore_rss_mb"] = res["rss_kb"] / 1024
        r["cp.restore_rate"] = s2["sessions_open"] / res["wall"]
        rm(cp)

    def latency(self, r):
        import latency  # bench/latency.py
        secs = self.a.latency_seconds
        for tag, interval, rate, seconds in (("lat", "1s", 20000, secs),
                                             ("lat100", "100ms", 20000, secs),
                                             ("latslow", "1s", 200, secs * 1.5)):
            res = latency.measure(self.sz, self.out, seconds=seconds, rate=rate,
                                  commit_interval=interval)
            for k, v in res.items():
                r[f"{tag}.{k}"] = v

    # ---- scripts written by the engineers of other parts ----------------
    # Scripts with their own output format get an adapter here (they are run
    # as their authors wrote them); any other executable bench/kafka*,
    # bench/pg_* or bench/*cql* must follow the BENCH-line contract
    # (docs/performance.md).
    def adapters(self):
        return {"pg_sink.sh": self.peer_pg, "bench_cql.py": self.peer_cql,
                "kafka.sh": self.peer_kafka}

    def peer_scripts(self):
        found = []
        for pat in ("kafka*", "pg_*", "*cql*", "layouts*", "durable*", "sqlite_duckdb*"):
            for p in sorted(glob.glob(os.path.join(HERE, pat))):
                name = os.path.basename(p)
                if name in self.adapters() or p in found or not os.path.isfile(p):
                    continue
                if os.access(p, os.X_OK):
                    found.append(p)
        return found

    def meta(self, r, key, **info):
        r.setdefault("_peer_meta", {})[key] = info

    def peer_kafka(self, r):
        """bench/kafka.sh: records/s from the mock cluster (16 partitions, two
        topics: long and short sessions) end to end into null:, with
        --checkpoint (the headline) and without, against a bare librdkafka
        consumer on the same topic, start-up excluded from both; CPU seconds
        beside. REPEAT=1: the rounds here repeat it."""
        b = self.a.build_dir
        if not b or not all(os.path.exists(os.path.join(b, t)) for t in ("kafka-mock",
                                                                       "kafka-bare")):
            self.notes.append("kafka.sh: skipped (kafka-mock or kafka-bare not built)")
            return
        self.run_peer_script(os.path.join(HERE, "kafka.sh"), r, args=[b], env={"REPEAT": "1"})

    def peer_pg(self, r):
        """bench/pg_sink.sh (PostgreSQL engineer): upserts/s of the sink's batches
        against one row per statement and COPY into a staging table + merge, on a
        private server with fsync on."""
        core = os.path.join(self.a.build_dir or "", "libsessionizer_core.a")
        if not self.a.build_dir or not os.path.exists(core):
            self.notes.append("pg_sink.sh: skipped (no build directory with libsessionizer_core.a)")
            return
        env = dict(os.environ, N=str(self.a.pg_sessions), SINGLE_N=str(self.a.pg_sessions // 10))
        p = subprocess.run([os.path.join(HERE, "pg_sink.sh"), self.a.build_dir], cwd=ROOT,
                           env=env, capture_output=True, timeout=self.a.peer_timeout)
        out = p.stdout.decode(errors="replace")
        if p.returncode != 0:
            self.notes.append(f"pg_sink.sh: exit {p.returncode}: "
                              + p.stderr.decode(errors="replace").strip()[-300:])
            return
        unix, got = True, {}
        for line in out.splitlines():
            if line.startswith("# the same over TCP"):
                unix = False
            f = line.split()
            if len(f) == 6 and f[0] in ("single", "values", "sink", "copy", "copyraw") and unix:
                got[(f[0], f[1], f[2])] = float(f[5])
        sink = [k for k in got if k[0] == "sink" and k[1] == "2000"]
        if not sink:
            self.notes.append("pg_sink.sh: no 'sink 2000' line in its output")
            return
        for phase, what in (("insert", "new rows"), ("update", "replay, same rows")):
            k = f"pg.{phase}"
            r[k + ".value"] = got.get(("sink", "2000", phase))
            r[k + ".peer_value"] = got.get(("copy", "0", phase))
            self.meta(r, k, section="sinks", unit="/s", peer="COPY + merge (the limit)",
                      figure=f"PostgreSQL sink upserts/s, {what}")
        r["pg.single.value"] = got.get(("sink", "2000", "insert"))
        r["pg.single.peer_value"] = got.get(("single", "0", "insert"))
        self.meta(r, "pg.single", section="sinks", unit="/s", peer="one row per statement",
                  figure="PostgreSQL sink upserts/s vs row at a time")

    def peer_cql(self, r):
        """bench/bench_cql.py (CQL engineer): sessions/s written by the cql sink into
        the CQL test server (a Python program, usually the bottleneck)."""
        tool = os.path.join(self.a.build_dir or "", "tests", "cql", "cql_sink_tool")
        if not os.path.exists(tool):
            self.notes.append("bench_cql.py: skipped (no cql_sink_tool in the build directory)")
            return
        p = subprocess.run(["/usr/bin/python3", os.path.join(HERE, "bench_cql.py"),
                            self.a.build_dir, str(self.a.cql_sessions)], cwd=ROOT,
                           capture_output=True, timeout=self.a.peer_timeout)
        out = p.stdout.decode(errors="replace")
        rows = {}
        for line in out.splitlines():
            f = [x.strip() for x in line.strip().strip("|").split("|")]
            if len(f) == 7 and f[4].isdigit():
                rows[(f[0], f[1], f[2])] = float(f[4])
        if p.returncode != 0 or not rows:
            self.notes.append(f"bench_cql.py: exit {p.returncode}, {len(rows)} rows")
            return
        one = "one at a time (max_in_flight=1)"
        for name, lat, nodes, label in (
                ("in flight (max_in_flight=512)", "none", "1", "1 node"),
                ("in flight (max_in_flight=512)", "none", "3", "3 nodes"),
                ("in flight (max_in_flight=512)", "1 ms", "1", "1 node, +1 ms per write"),
                ("in flight, batch=unlogged (16/node)", "none", "1", "1 node, unlogged batches")):
            k = f"cql.{label}"
            r[k + ".value"] = rows.get((name, lat, nodes))
            r[k + ".peer_value"] = rows.get((one, lat, nodes))
            self.meta(r, k, section="sinks", unit="/s", peer="one write at a time",
                      figure=f"CQL sink sessions/s (test server), {label}")

    def run_peer_script(self, path, r, args=(), env=None):
        name = os.path.basename(path)
        env = dict(os.environ, BENCH_SESSIONIZER=self.sz, BENCH_OUT=self.out,
                   BENCH_DATA=self.a.data, BENCH_ROOT=ROOT, BENCH_ROUNDS="1", **(env or {}))
        t0 = time.time()
        p = subprocess.run([path, *args], capture_output=True, env=env, cwd=ROOT,
                           timeout=self.a.peer_timeout)
        r[f"peer.{name}.wall"] = time.time() - t0
        out = p.stdout.decode(errors="replace")
        got = 0
        for line in out.splitlines():
            if line.startswith("BENCH "):
                try:
                    j = json.loads(line[6:])
                except ValueError:
                    continue
                key = f"peer.{name}.{j.get('key') or j.get('figure')}"
                for field in ("value", "peer_value"):
                    if isinstance(j.get(field), (int, float)):
                        r[f"{key}.{field}"] = j[field]
                r.setdefault("_peer_meta", {})[key] = {k: v for k, v in j.items()
                                                       if k not in ("value", "peer_value")}
                got += 1
        if p.returncode != 0 or got == 0:
            self.notes.append(f"{name}: exit {p.returncode}, {got} BENCH lines; last output: "
                              + (out.strip().splitlines() or ["(none)"])[-1][:200])

    # ---- one round
    def round(self, i, verify):
        r = {}
        log(f"round {i + 1}/{self.a.rounds}: I/O limit")
        self.io_limit(r)
        log(f"round {i + 1}: sessionizer file -> null:")
        s_null = self.sz_file(r, "null:", "null")
        log(f"round {i + 1}: DuckDB, sessions discarded")
        d_disc = self.duckdb(r, "discard")
        db = os.path.join(self.out, "sessions.db")
        rm(db)
        log(f"round {i + 1}: sessionizer file -> sqlite:")
        s_sql = self.sz_file(r, "sqlite:" + db, "sqlite")
        # the durable mode, what users run: the same with --checkpoint
        db_cp = os.path.join(self.out, "sessions-cp.db")
        cp = os.path.join(self.out, "checkpoint-sqlite")
        rm(db_cp)
        rm(cp)
        log(f"round {i + 1}: sessionizer file -> sqlite: with --checkpoint")
        self.sz_file(r, "sqlite:" + db_cp, "sqlite_cp", ["--checkpoint", cp])
        rm(db_cp)
        rm(cp)
        log(f"round {i + 1}: SQLite alone, the same rows in the same transactions")
        self.sqlite_limit(r, db)
        log(f"round {i + 1}: DuckDB, sessions stored in a database file")
        d_store = self.duckdb(r, "store")
        log(f"round {i + 1}: DuckDB, sessions upserted into a keyed table")
        d_keyed = self.duckdb(r, "keyed")
        if verify:
            st = sqlite_stats(db)
            self.check("no visit was late or invalid (file within the lateness)",
                       s_null["late"] == 0 and s_null["invalid"] == 0 and s_sql["late"] == 0,
                       f"late={s_null['late']} invalid={s_null['invalid']}")
            self.check("null: and sqlite: closed the same sessions",
                       s_null["sessions_closed"] == s_sql["sessions_closed"] == st["sessions"])
            for d in (d_disc, d_store, d_keyed):
                self.check(f"DuckDB ({d['mode']}) finds the same number of sessions",
                           d["sessions"] == s_null["sessions_closed"],
                           f"duckdb {d['sessions']} vs sessionizer {s_null['sessions_closed']}")
            self.check("SQLite table = DuckDB: sessions, pages, max pages, signature",
                       (st["sessions"], st["pages"], st["max_pages"], st["signature"]) ==
                       (d_store["sessions"], d_store["pages"], d_store["max_pages"],
                        d_store["signature"]), f"sqlite {st} duckdb {d_store}")
            r["sessions"] = st["sessions"]
            r["sqlite.db_mb"] = os.path.getsize(db) / 1e6
        rm(db)
        log(f"round {i + 1}: memory per open session")
        self.memory(r)
        log(f"round {i + 1}: checkpoint and recovery")
        self.recovery(r)
        if self.a.latency_seconds > 0:
            log(f"round {i + 1}: latency while visits flow")
            self.latency(r)
        if self.a.kafka and os.path.exists(os.path.join(HERE, "kafka.sh")):
            log(f"round {i + 1}: Kafka source (bench/kafka.sh)")
            self.peer_kafka(r)
            log(f"round {i + 1}: the engine alone on Kafka's delivery order")
            self.engine_order(r)
        if self.a.pg_sessions > 0 and os.path.exists(os.path.join(HERE, "pg_sink.sh")):
            log(f"round {i + 1}: PostgreSQL sink (bench/pg_sink.sh)")
            self.peer_pg(r)
        if self.a.cql_sessions > 0 and os.path.exists(os.path.join(HERE, "bench_cql.py")):
            log(f"round {i + 1}: CQL sink (bench/bench_cql.py)")
            self.peer_cql(r)
        if i == 0 or self.a.peers_every_round:
            for p in self.peer_scripts():
                log(f"round {i + 1}: {os.path.basename(p)}")
                try:
                    self.run_peer_script(p, r)
                except subprocess.TimeoutExpired:
                    self.notes.append(f"{os.path.basename(p)}: timed out")
        return r

    def run(self):
        self.n_visits = sum(1 for _ in open(self.a.data, "rb"))
        self.open_page_bytes = 0
        with open(self.a.open_data, "rb") as f:
            for line in f:
                j = json.loads(line)
                self.open_page_bytes += len(j["page"].encode())
        for i in range(self.a.rounds):
            self.rounds.append(self.round(i, verify=(i == 0)))
        return self.report()

    # ---- the table
    def med(self, key):
        vals = [r[key] for r in self.rounds if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def report(self):
        m = self.med
        rows = []  # (section, figure, sessionizer, peer name, peer value, ratio, target, met)

        def add(section, figure, ours, peer_name="", peer="", ratio=None, target="", met=None):
            rows.append((section, figure, ours, peer_name, peer,
                         "" if ratio is None else f"{ratio:.2f}x", target,
                         "" if met is None else ("yes" if met else "NO")))

        def rate(v):
            if v is None:
                return "n/a"
            return f"{v / 1e6:.2f} M/s" if v >= 1e6 else f"{v / 1e3:.1f} k/s"

        n_null, n_sql = m("null.rate"), m("sqlite.rate")
        dd, ds, io = m("duck_discard.rate"), m("duck_store.rate"), m("io.rate")
        add("engine", "file -> null: visits/s (wall)", rate(n_null), "DuckDB, discarded",
            rate(dd), n_null / dd, ">= 2x DuckDB", n_null / dd >= 2)
        n_cpu = self.n_visits / m("null.cpu")
        add("engine", "file -> null: visits per CPU-second", rate(n_cpu), "DuckDB, discarded",
            rate(self.n_visits / m("duck_discard.cpu")), m("duck_discard.cpu") / m("null.cpu"),
            "", None)
        add("engine", "file -> null: one core (visits per CPU-s)", rate(n_cpu), "target",
            "3.00 M/s", n_cpu / 3e6, ">= 3 M/s", n_cpu >= 3e6)
        add("engine", "file -> null: vs the I/O limit", rate(n_null), "read+split lines",
            rate(io), n_null / io, "", None)
        n_sql_cp = m("sqlite_cp.rate")
        add("engine", "file -> sqlite: with --checkpoint, visits/s (wall)", rate(n_sql_cp),
            "DuckDB, stored", rate(ds), n_sql_cp / ds, "> 1x DuckDB", n_sql_cp > ds)
        add("engine", "file -> sqlite: visits/s (wall), without --checkpoint", rate(n_sql),
            "DuckDB, stored", rate(ds), n_sql / ds, "> 1x DuckDB", n_sql > ds)
        dk = m("duck_keyed.rate")
        add("engine", "file -> sqlite: vs a keyed DuckDB table", rate(n_sql),
            "DuckDB, keyed upsert", rate(dk), n_sql / dk, "", None)
        add("engine", "file -> sqlite: vs DuckDB discarded", rate(n_sql), "DuckDB, discarded",
            rate(dd), n_sql / dd, "", None)
        sl = m("sqlite_limit.rate")
        if sl:
            add("engine", "file -> sqlite: vs SQLite alone (same rows, same transactions)",
                rate(n_sql), "SQLite's upserts only", rate(sl), n_sql / sl, "", None)
        add("engine", "peak RSS, null: / DuckDB discarded", f"{m('null.rss_mb'):.0f} MB",
            "DuckDB process", f"{m('duck_discard.rss_mb'):.0f} MB",
            m("duck_discard.rss_mb") / m("null.rss_mb"), "", None)
        add("engine", "peak RSS, sqlite: / DuckDB stored", f"{m('sqlite.rss_mb'):.0f} MB",
            "DuckDB process", f"{m('duck_store.rss_mb'):.0f} MB",
            m("duck_store.rss_mb") / m("sqlite.rss_mb"), "", None)
        add("sinks", "SQLite sessions/s (end to end)", rate(m("sqlite.sessions_rate")),
            "DuckDB, stored", rate(m("duck_store.sessions_rate")),
            m("sqlite.sessions_rate") / m("duck_store.sessions_rate"), "", None)
        b = m("mem.bytes_per_session")
        add("memory", f"bytes per open session ({m('mem.open_sessions'):.0f} open)",
            f"{b:.0f} B", "of which page strings", f"{m('mem.page_bytes'):.1f} B", None,
            "", None)
        add("memory", "bytes per open session beyond its pages",
            f"{m('mem.beyond_pages'):.0f} B", "target", "256 B", 256 / m("mem.beyond_pages"),
            "<= 256 B", m("mem.beyond_pages") <= 256)
        add("memory", "checkpoint size (1M open sessions)", f"{m('cp.bytes') / 1e6:.1f} MB",
            "per session", f"{m('cp.bytes_per_session'):.0f} B", None, "", None)
        add("memory", "recovery from 1M open sessions", f"{m('cp.restore_wall'):.2f} s",
            "target", "2.00 s", 2 / m("cp.restore_wall"), "< 2 s", m("cp.restore_wall") < 2)
        for tag in ("lat", "lat100", "latslow"):
            if m(f"{tag}.p50_ms") is None:
                continue
            cfg = (f"{m(f'{tag}.rate'):.0f} visits/s, --commit-interval "
                   f"{m(f'{tag}.commit_interval_ms') / 1000:g}s")
            add("latency", f"close->ack p50 / p99 (sqlite:), {cfg}",
                f"{m(f'{tag}.p50_ms'):.0f} / {m(f'{tag}.p99_ms'):.0f} ms", "sessions measured",
                f"{m(f'{tag}.sessions'):.0f}", None, "", None)
        # peer scripts
        meta = {}
        for r in self.rounds:
            meta.update(r.get("_peer_meta", {}))
        for key, info in meta.items():
            v, pv = m(key + ".value"), m(key + ".peer_value")
            unit = info.get("unit", "")
            fmt = (lambda x: rate(x) if unit in ("/s", "visits/s", "records/s", "sessions/s")
                   else f"{x:.4g} {unit}".strip())
            ratio = v / pv if (v is not None and pv) else None
            target = info.get("target", "")
            met = None
            if "target_ratio" in info and ratio is not None:
                met = ratio >= info["target_ratio"]
            add(info.get("section", "peers"), info.get("figure", key), fmt(v) if v is not None
                else "n/a", info.get("peer", ""), fmt(pv) if pv is not None else "", ratio,
                target, met)
        order = ["durable", "engine", "kafka", "sinks", "memory", "latency"]
        rows.sort(key=lambda row: order.index(row[0]) if row[0] in order else len(order))
        self.rows = rows
        return rows

    def render(self):
        hdr = ("", "figure", "sessionizer", "peer", "peer value", "ratio", "target", "met")
        widths = [max(len(str(x[i])) for x in [hdr] + self.rows) for i in range(len(hdr))]
        lines = []
        fmt = "  ".join("{:<%d}" % w for w in widths)
        lines.append(fmt.format(*hdr))
        lines.append(fmt.format(*("-" * w for w in widths)))
        last = None
        for row in self.rows:
            row = list(row)
            if row[0] == last:
                row[0] = ""
            else:
                last = row[0]
            lines.append(fmt.format(*row))
        md = ["| | figure | sessionizer | peer | peer value | ratio | target | met |",
              "|---|---|---|---|---|---|---|---|"]
        for row in self.rows:
            md.append("| " + " | ".join(str(x) for x in row) + " |")
        return "\n".join(lines), "\n".join(md)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessionizer", required=True)
    ap.add_argument("--linesplit", required=True)
    ap.add_argument("--data", required=True, help="the 2M-visit file")
    ap.add_argument("--open-data", required=True, help="visits leaving --open-n sessions open")
    ap.add_argument("--open-n", type=int, default=1000000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duckdb-threads", type=int, default=2)
    ap.add_argument("--latency-seconds", type=float, default=8)
    ap.add_argument("--peer-timeout", type=float, default=600)
    ap.add_argument("--peers-every-round", action="store_true")
    ap.add_argument("--machine", default="")
    ap.add_argument("--build-dir", help="build directory (for the PostgreSQL and CQL scripts)")
    ap.add_argument("--pg-sessions", type=int, default=50000, help="0 skips bench/pg_sink.sh")
    ap.add_argument("--no-kafka", dest="kafka", action="store_false",
                    help="skip bench/kafka.sh")
    ap.add_argument("--cql-sessions", type=int, default=10000,
                    help="0 skips bench/bench_cql.py")
    ap.add_argument("--from-json", help="re-render the table of a previous results.json")
    a = ap.parse_args()
    sys.path.insert(0, HERE)
    b = Bench(a)
    t0 = time.time()
    if a.from_json:  # re-render a previous run's table
        with open(a.from_json) as f:
            prev = json.load(f)
        b.rounds, b.checks, b.notes = prev["rounds"], prev["checks"], prev["notes"]
        b.n_visits = prev.get("n_visits") or b.rounds[0]["io.lines"]
        b.report()
    else:
        try:
            b.run()
        except BenchError as e:
            print(f"bench: {e}", file=sys.stderr)
            return 1
    text, md = b.render()
    header = (f"sessionizer benchmark: {b.n_visits} visits "
              f"({os.path.getsize(a.data) / 1e6:.1f} MB), median of {a.rounds} round(s), "
              f"{time.time() - t0:.0f} s")
    print()
    print(header)
    if a.machine:
        print(a.machine)
    print()
    print(text)
    print("ratio: how many times better sessionizer does than the peer or target (> 1: better;"
          " for RSS, CPU, bytes and seconds: peer / sessionizer)")
    print()
    bad = [c for c in b.checks if not c[1]]
    print(f"checks: {len(b.checks) - len(bad)}/{len(b.checks)} passed")
    done = {}
    for what, ok, detail in b.checks:
        d = done.setdefault(what, [0, 0, []])
        d[0 if ok else 1] += 1
        if not ok and detail:
            d[2].append(detail)
    for what, (n_ok, n_bad, details) in done.items():
        print(f"  [{'ok' if not n_bad else 'FAILED'}] {what}"
              + (f" ({n_ok + n_bad} rounds)" if n_ok + n_bad > 1 else "")
              + (f": {'; '.join(details)}" if details else ""))
    for n in b.notes:
        print(f"  note: {n}")
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"header": header, "machine": a.machine, "n_visits": b.n_visits,
                   "rounds": b.rounds,
                   "checks": b.checks, "notes": b.notes,
                   "rows": b.rows}, f, indent=1, default=str)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(header + "\n\n" + md + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
