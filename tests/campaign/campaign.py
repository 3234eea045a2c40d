#!/usr/bin/python3
"""Randomized fault campaign: tries hard to break the promise that the table
is a function of the input log alone.

    tests/campaign/campaign.py [--trials N] [--seed S] [--targets LIST] [--minutes M]

For every trial it generates an input log (disorder, duplicates, malformed
records, a few very active users) and adds hostile records (visits from a
broken clock, years 2100-9999, one of them first; a record nested
100,000 deep; one user's session of 100 KB pages past --max-session-bytes,
1 MiB here), draws session settings, computes the
expected table twice — with a clean, fault-free run of the job and with the
independent batch oracle (tests/integration/lib/oracle.py) — and then runs
the job against a target through random faults until a run completes:

  kill        SIGKILL at a random instant
  term        SIGTERM (clean stop after the commit in flight)
  lose        the checkpoint directory is deleted between two runs (a replay
              from the beginning over the rows already written)
  diskfull    the checkpoint lives on a tiny tmpfs that fills up; the run
              resumes from the last good checkpoint copied to a roomy disk
  batch       every run draws another --commit-every
  (and half the runs snapshot their checkpoint every 4 or 64 KB of log, so
  that faults also land in compactions; half keep at most 16 or 256 KB of
  sessions in memory and spill the rest to disk, as --memory-limit does, so
  that faults land in evictions and loads: "spill" in the summary)
  + the target's own faults (see the Target classes)

Targets: sqlite, jsonl, postgresql, cql (sinks, reading the log from a file)
and kafka (the log produced into a fresh multi-partition topic of a local
mock cluster, read with --source kafka://... --until-end into SQLite; its
own fault: broker_down, one or all brokers down for 1-8 s mid-run). A Kafka
source's ids hash Kafka coordinates, so that target's expected table is a
clean, fault-free run from the same topic, itself checked against
tests/integration/kafka_oracle.py, and the final table is compared with
both (see KafkaTarget). Environment: SESSIONIZER (the binary), KAFKA_MOCK
(build/kafka-mock); kcat must be installed.

It then compares the target's final table with the clean run's:
  lost        sessions of the clean run missing from the table
  duplicates  rows that the clean run does not have (a session written
              under another key)
  changed     same key, other pages
all of which must be 0, and prints a summary line per trial and in total.
Exit status 1 if any of them is not 0, an oracle disagrees, or a run failed
unexpectedly (for kafka, that includes any exit 1 under a broker outage, and
a run that hangs for 3 minutes).
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration", "lib"))
import oracle  # noqa: E402
from harness import BIN, GEN, PY, content  # noqa: E402


class Trial:
    """One generated log and its expected table."""

    def __init__(self, rnd, workdir, index):
        self.dir = os.path.join(workdir, f"trial{index}")
        os.makedirs(self.dir)
        self.log = os.path.join(self.dir, "visits.jsonl")
        self.n = rnd.randrange(5000, 40000)
        users = rnd.choice([20, 300, 3000])
        subprocess.run([PY, GEN, str(self.n), "--out", self.log, "--users", str(users),
                        "--seed", str(rnd.randrange(1 << 30)),
                        "--disorder", str(rnd.choice([0, 5, 15, 40])),
                        "--bad", str(rnd.choice([0, 0.01, 0.05])),
                        "--dup", str(rnd.choice([0, 0.02])),
                        "--bots", str(rnd.choice([0, 1, 3])),
                        "--rate", str(rnd.choice([5, 50, 500]))], check=True)
        add_hostile(self.log, rnd)
        gap = rnd.choice([5, 20, 50, 120])
        late = rnd.choice([0, 3, 10, 60])
        self.max_pages = rnd.choice([3, 50, 10000])
        self.settings = ["--gap", f"{gap}s", "--lateness", f"{late}s",
                         "--max-pages", str(self.max_pages), "--max-session-bytes", "1MiB"]
        self.gap_us, self.late_us = gap * 1000000, late * 1000000
        # the clean, fault-free run
        clean_db = os.path.join(self.dir, "clean.db")
        t0 = time.time()
        p = subprocess.run([BIN, "run", "--source", f"file:{self.log}", "--sink", f"sqlite:{clean_db}",
                            "--until-end", "-q", "--dlq", f"jsonl:{self.dir}/clean.dlq", *self.settings],
                           capture_output=True)
        if p.returncode != 0:
            raise RuntimeError(f"clean run failed: {p.stderr.decode()}")
        self.clean_seconds = time.time() - t0
        self.expected = content(clean_db)
        rows, _ = oracle.sessions(open(self.log, "rb").read(), self.gap_us, self.late_us,
                                  self.max_pages, max_session_bytes=1 << 20)
        self.oracle_mismatch = compare(rows, self.expected)


def add_hostile(log, rnd):
    """Inserts hostile records among the generated ones: visits from a broken
    clock (years 2100 to 9999; the first line is one of them, which in a file
    only the next visit can refute), a
    record nested 100,000 deep, and one user's session of 30 pages of 100 KB
    (3 MB, past the trials' 1 MiB --max-session-bytes) at the highest event
    time so far where it lands, so that it is neither late nor ahead."""
    lines = open(log, "rb").read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    import datetime
    best, highest = None, []  # the highest event time of the visits up to each line
    for line in lines:
        v = oracle.parse_line(line)
        if v is not None and (best is None or v[1] > best):
            best = v[1]
        highest.append(best)

    def latest(upto):
        us = highest[upto - 1] if upto > 0 and highest[upto - 1] is not None else 1676851200 * 10**6
        t = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=us)
        return t.strftime("%Y-%m-%dT%H:%M:%S.%f")

    def visit(user, page, when, extra=b""):
        return (b'{"user_id": %d, "page": "%s", "event_time": "%s"%s}'
                % (user, page.encode(), when.encode(), extra))

    def ahead(when):  # years later: past a Kafka record's append time too (it is now)
        return "%04d%s" % (rnd.randrange(2100, 10000), when[4:])

    first = visit(rnd.randrange(10**6), "first-future", ahead(latest(len(lines))))
    inserts = []
    for i in range(rnd.randrange(1, 4)):
        at = rnd.randrange(1, len(lines) + 1)
        when = "9999-12-31T23:59:59" if i % 2 else ahead(latest(at))
        inserts.append((at, [visit(rnd.randrange(10**6), "future%d" % i, when)]))
    at = rnd.randrange(1, len(lines) + 1)
    inserts.append((at, [visit(7, "deep", latest(at), b', "e": ' + b"[" * 100000)]))
    at = rnd.randrange(1, len(lines) + 1)
    when = latest(at)
    inserts.append((at, [visit(424242, "big%02d" % i + "x" * 100000, when) for i in range(30)]))
    for at, recs in sorted(inserts, key=lambda x: -x[0]):  # from the end: positions hold
        lines[at:at] = recs
    open(log, "wb").write(b"\n".join([first] + lines) + b"\n")


def compare(expected, got):
    lost = sum(1 for k in expected if k not in got)
    dup = sum(1 for k in got if k not in expected)
    changed = sum(1 for k in expected if k in got and got[k] != expected[k])
    return dict(lost=lost, duplicates=dup, changed=changed)


class SqliteTarget:
    name = "sqlite"
    faults = []

    def __init__(self, workdir):
        self.workdir = workdir

    def start(self):
        pass

    def stop(self):
        pass

    def sink(self, trial):
        return f"sqlite:{trial.dir}/{self.name}.db"  # one table per target

    def table(self, trial):
        return content(f"{trial.dir}/{self.name}.db")

    def inject(self, fault, rnd):
        pass

    def sink_opts(self, trial):
        return []

    # The source side. File-source targets read the trial's log; the Kafka
    # target overrides these.
    run_timeout = 600

    def prepare(self, trial, rnd):
        """Per-trial set-up before the faulty runs; returns the disagreements
        between the expected table and an independent oracle, or None."""
        return None

    def expected(self, trial):
        return trial.expected

    def oracle_diff(self, trial, got):
        """The final table against this target's own oracle, or None."""
        return None

    def source_args(self, trial, rnd, fault):
        return ["--source", f"file:{trial.log}"]

    def fault_delay(self, trial, p, errpath, fault, rnd):
        """Sleeps until the instant of a mid-run fault: somewhere inside the
        run, as a fault-free run took clean_seconds."""
        time.sleep(rnd.uniform(0.02, 1.0) * max(trial.clean_seconds, 0.05))

    def observe(self, err):
        pass

    def describe(self, trial):
        return ""

    def summary(self):
        return ""


class JsonlTarget(SqliteTarget):
    """The JSONL sink is a log of writes: read keyed, the later line winning."""
    name = "jsonl"

    def sink(self, trial):
        return f"jsonl:{trial.dir}/target.jsonl"

    def table(self, trial):
        rows = {}
        with open(f"{trial.dir}/target.jsonl") as f:
            for line in f:
                r = json.loads(line)
                rows[(r["session_id"], r["user_id"])] = r["pages"]
        return rows


class PostgresTarget(SqliteTarget):
    """A real PostgreSQL server (tests/integration/lib/pg_server.sh), restarted
    or crashed (SIGKILL of the postmaster, then crash recovery) mid-run."""
    name = "postgresql"
    faults = ["pg_restart", "pg_crash"]
    SCRIPT = os.path.join(ROOT, "tests", "integration", "lib", "pg_server.sh")

    def start(self):
        self.dir = os.path.join(self.workdir, "pg")
        os.makedirs(self.dir)
        os.chmod(self.workdir, 0o755)
        out = subprocess.run([self.SCRIPT, "start", self.dir], capture_output=True, text=True,
                             check=True, env={**os.environ, "PG_SERVER_TMP": self.workdir}).stdout
        env = dict(line[len("export "):].split("=", 1) for line in out.splitlines()
                   if line.startswith("export "))
        self.uri = env["PG_URI_TCP"].strip("'\"")
        self.trial_index = 0

    def stop(self):
        subprocess.run([self.SCRIPT, "destroy", self.dir], capture_output=True)

    def sink(self, trial):
        return self.uri

    def sink_opts(self, trial):
        return ["--sink-opt", f"table=sessions_{os.path.basename(trial.dir)}"]

    def table(self, trial):
        out = subprocess.run([self.SCRIPT, "psql", self.dir, "-At", "-F", "\t", "-c",
                              f"SELECT session_id, user_id, array_to_json(pages) FROM "
                              f"sessions_{os.path.basename(trial.dir)}"],
                             capture_output=True, text=True, check=True).stdout
        rows = {}
        for line in out.splitlines():
            sid, uid, pages = line.split("\t")
            rows[(int(sid), int(uid))] = json.loads(pages)
        return rows

    def inject(self, fault, rnd):
        if fault == "pg_restart":
            subprocess.run([self.SCRIPT, "stop", self.dir, "fast"], capture_output=True)
        else:
            subprocess.run([self.SCRIPT, "kill", self.dir], capture_output=True)
        time.sleep(rnd.uniform(0, 1.5))
        self.ensure_up()

    def ensure_up(self):
        for _ in range(10):
            if subprocess.run([self.SCRIPT, "psql", self.dir, "-Atc", "SELECT 1"],
                              capture_output=True).returncode == 0:
                return
            subprocess.run([self.SCRIPT, "start-again", self.dir], capture_output=True)
        raise RuntimeError("the PostgreSQL test server did not come back")


class CqlTarget(SqliteTarget):
    """The CQL test server (3 fake nodes) returning errors, dropping
    connections and answering late; the table is read back with the DataStax
    Python driver, an independent client."""
    name = "cql"
    faults = ["cql_timeout", "cql_overload", "cql_drop", "cql_delay", "cql_node_down"]

    def start(self):
        sys.path.insert(0, os.path.join(ROOT, "tests", "cql"))
        from cqltest import TestServer
        self.server = TestServer(nodes=3, max_seconds=24 * 3600)
        from cassandra.cluster import Cluster
        self.cluster = Cluster(["127.0.0.1"], port=self.server.port, protocol_version=4)
        self.session = self.cluster.connect()

    def stop(self):
        if getattr(self, "cluster", None):
            self.cluster.shutdown()
        if getattr(self, "server", None):
            self.server.stop()

    def keyspace(self, trial):
        return "ks_" + os.path.basename(trial.dir)

    def sink(self, trial):
        # every node a contact point, as in production: one may be down at start-up
        hosts = ",".join(f"127.0.0.{i}:{self.server.port}" for i in (1, 2, 3))
        return f"cql://{hosts}/{self.keyspace(trial)}"

    def sink_opts(self, trial):
        return ["--sink-opt", "retry_timeout=0"]

    def table(self, trial):
        self.server.control("clear")
        rows = self.session.execute(f"SELECT session_id, user_id, pages FROM {self.keyspace(trial)}.sessions")
        return {(r.session_id, r.user_id): list(r.pages or []) for r in rows}

    def inject(self, fault, rnd):
        n = rnd.randrange(1, 20)
        spec = {"cql_timeout": f"fault error code=0x1100 op=EXECUTE count={n} apply={rnd.randrange(2)}",
                "cql_overload": f"fault error code=0x1001 op=EXECUTE count={n}",
                "cql_drop": f"fault drop op=EXECUTE count={rnd.randrange(1, 4)} apply={rnd.randrange(2)}",
                "cql_delay": f"fault delay ms={rnd.randrange(50, 800)} op=EXECUTE count={n}",
                "cql_node_down": f"kill node={rnd.randrange(0, 3)}"}[fault]
        self.server.control(spec)
        if fault == "cql_node_down":
            time.sleep(rnd.uniform(0.2, 1.5))
            self.server.control(spec.replace("kill", "revive"))


class KafkaTarget(SqliteTarget):
    """Kafka as the *source*: each trial's log is produced into a fresh topic
    (2 to 4 partitions) of one local mock cluster (build/kafka-mock, 3
    brokers) and the job reads it with --until-end into SQLite.

    The ids of a Kafka source hash the records' Kafka coordinates (append
    timestamp, partition, offset), so the expected table is the topic's own:
    a clean, fault-free run from the same topic (its own group and
    checkpoint), checked against kafka_oracle.py, which computes the sessions
    from a kcat dump of the topic without the C code; the faulty run is
    compared with both.

    Layout, drawn per trial: "unkeyed", every record to a random partition,
    as an unkeyed producer spreads them (a user's sessions span partitions,
    lateness is decided per partition and the closing watermark has to wait
    for the slowest one: the hard case), sometimes with one partition left
    empty (it must not stall closing); or "keyed", by user id with the user
    as the Kafka key (one user's visits stay in order in one partition while
    the partitions run ahead of each other, as with a keyed producer). The
    partition of every record is chosen here from the campaign's seed and
    produced with kcat -p, rather than left to librdkafka's partitioner, so
    that a seed gives the same layout again (only the CreateTime timestamps,
    and so the ids, differ between replays of a campaign).

    Every run draws its fetch sizes (default, tiny as in kafka_0002 so that
    the partitions interleave record by record and a fault lands
    mid-stream, or huge) and, half the time, a fresh consumer group: the
    other half it reuses the previous run's group, so that a run restarted
    after a SIGKILL waits for the group to evict its dead predecessor (runs
    never overlap, so no run joins a live member). Its own fault:

      broker_down  one broker, or all three, down for 1 to 8 s mid-run, then
                   up again: the job must wait and resume, never exit 1.
    """
    name = "kafka"
    faults = ["broker_down"]
    run_timeout = 180
    MOCK = os.environ.get("KAFKA_MOCK", os.path.join(ROOT, "build", "kafka-mock"))
    ORACLE = os.path.join(ROOT, "tests", "integration", "kafka_oracle.py")
    BROKERS = 3
    TOPICS = 16  # kafka-mock's limit: a new cluster every 16 trials
    # the mock's rebalance waits about the session timeout; below 3 s it
    # stalls the join (measured), 4 s keeps a restart in the same group short
    GROUP = ["-X", "session.timeout.ms=4000", "-X", "heartbeat.interval.ms=1000"]
    FETCH = {"default": [],
             "tiny": ["-X", "message.max.bytes=1000", "-X", "fetch.max.bytes=3000",
                      "-X", "max.partition.fetch.bytes=400", "-X", "fetch.wait.max.ms=1",
                      "-X", "queued.min.messages=1"],
             "huge": ["-X", "fetch.max.bytes=52428800", "-X", "max.partition.fetch.bytes=10485760"]}
    USER = re.compile(rb'"user_id": (-?\d+)')

    def start(self):
        self.mock = None
        self.generation = 0
        self.trials = {}
        self.down_all = self.down_one = self.outages_seen = self.waited_eviction = 0
        self.fetches = {k: 0 for k in self.FETCH}
        self.layouts = {}
        self.start_mock()

    def start_mock(self):
        self.stop()
        self.generation += 1
        # topics c{generation}_{j} with 2, 3, 4, 2, 3, 4... partitions
        self.free = [(f"c{self.generation}_{j}", 2 + j % 3) for j in range(self.TOPICS)]
        args = [self.MOCK, "--brokers", str(self.BROKERS)]
        for t, n in self.free:
            args += ["--topic", f"{t}:{n}"]
        self.mock_err = open(os.path.join(self.workdir, f"mock{self.generation}.err"), "wb")
        self.mock = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.mock_err)
        self.addr = self.mock.stdout.readline().decode().strip()
        if not self.addr:
            raise RuntimeError("kafka-mock did not start")

    def stop(self):
        if getattr(self, "mock", None) is not None:
            try:
                self.mock.stdin.write(b"quit\n")
                self.mock.stdin.close()
                self.mock.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.mock.kill()
                self.mock.wait()
            self.mock_err.close()
            self.mock = None

    def control(self, line):
        self.mock.stdin.write(line.encode() + b"\n")
        self.mock.stdin.flush()

    def prepare(self, trial, rnd):
        parts = rnd.choice([2, 3, 4])
        if not any(n == parts for _, n in self.free):
            self.start_mock()
        topic = next(t for t, n in self.free if n == parts)
        self.free.remove((topic, parts))
        layout = rnd.choice(["unkeyed", "unkeyed", "unkeyed-empty", "keyed", "keyed"])
        self.layouts[layout] = self.layouts.get(layout, 0) + 1
        used = parts - 1 if layout == "unkeyed-empty" else parts
        st = dict(topic=topic, parts=parts, layout=layout, gen=0, last_group=None)
        self.trials[trial.dir] = st
        # write one file a partition and produce each with kcat -p
        files = [open(os.path.join(trial.dir, f"kafka-p{i}"), "wb") for i in range(parts)]
        produced = 0
        with open(trial.log, "rb") as f:
            for line in f:
                line = line.rstrip(b"\n")
                if layout == "keyed":
                    m = self.USER.search(line)
                    key = m.group(1) if m else b"bad"
                    part = int(key) % parts if m else rnd.randrange(parts)
                    # kcat skips empty lines, but not an empty value after a key
                    files[part].write(key + b"\t" + line + b"\n")
                    produced += 1
                else:
                    files[rnd.randrange(used)].write(line + b"\n")
                    produced += line != b""
        for fh in files:
            fh.close()
        for i in range(parts):
            path = os.path.join(trial.dir, f"kafka-p{i}")
            if os.path.getsize(path):
                k = ["-K", "\t"] if layout == "keyed" else []
                subprocess.run(["kcat", "-P", "-b", self.addr, "-t", topic, "-p", str(i), *k,
                                "-l", path], check=True, capture_output=True, timeout=120)
        dump = os.path.join(trial.dir, "kafka.dump")
        with open(dump, "wb") as out:
            subprocess.run(["kcat", "-C", "-b", self.addr, "-t", topic, "-e", "-q",
                            "-f", "%p\\t%o\\t%T\\t%s\\n"], stdout=out, check=True, timeout=120)
        # the whole log is in the topic, from offset 0 (the mock's ~5 MB a
        # partition retention has not trimmed it)
        offsets = {}
        with open(dump, "rb") as f:
            for line in f:
                p, o = line.split(b"\t", 2)[:2]
                offsets.setdefault(int(p), []).append(int(o))
        n = sum(len(v) for v in offsets.values())
        if n != produced or any(v != list(range(len(v))) for v in offsets.values()):
            raise RuntimeError(f"topic {topic}: {n} records of {produced} produced, or not from offset 0")
        # the clean, fault-free run: its own group and checkpoint
        clean_db = os.path.join(trial.dir, "kafka-clean.db")
        err = os.path.join(trial.dir, "kafka-clean.err")
        t0 = time.time()
        with open(err, "wb") as e:
            p = subprocess.Popen([BIN, "run", "--source", self.uri(trial), "--sink", f"sqlite:{clean_db}",
                                  "--until-end", "--group", f"{topic}-clean", *self.GROUP,
                                  "--checkpoint", os.path.join(trial.dir, "kafka-clean.cp"),
                                  "--dlq", f"jsonl:{trial.dir}/kafka-clean.dlq", *trial.settings],
                                 stdout=subprocess.DEVNULL, stderr=e)
            try:
                first = self.wait_first_record(p, err, 120)
                rc = p.wait(timeout=self.run_timeout)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if rc != 0:
            raise RuntimeError(f"clean Kafka run failed ({rc}): {open(err).read()[-2000:]}")
        st["join"] = (first or time.time()) - t0
        st["read"] = max(time.time() - (first or t0), 0.02)
        st["expected"] = content(clean_db)
        # the independent oracle, from the topic dump; it has no session cap,
        # which keeps the earliest pages by (event time, partition, offset),
        # its own order of pages
        out = subprocess.run([PY, self.ORACLE, "--gap", str(trial.gap_us / 1e6),
                              "--lateness", str(trial.late_us / 1e6),
                              "--max-session-bytes", str(1 << 20), dump],
                             capture_output=True, check=True).stdout.decode()
        oracle_rows = {}
        for line in out.splitlines():
            sid, uid, pages = line.split("|", 2)
            oracle_rows[(int(sid), int(uid))] = json.loads(pages)[:trial.max_pages]
        st["oracle"] = oracle_rows
        return compare(oracle_rows, st["expected"])

    def uri(self, trial):
        return f"kafka://{self.addr}/{self.trials[trial.dir]['topic']}"

    def expected(self, trial):
        return self.trials[trial.dir]["expected"]

    def oracle_diff(self, trial, got):
        return compare(self.trials[trial.dir]["oracle"], got)

    def source_args(self, trial, rnd, fault):
        st = self.trials[trial.dir]
        if st["last_group"] is None or rnd.random() < 0.5:
            st["gen"] += 1
        elif st["last_fault"] in ("kill", "lose"):
            self.waited_eviction += 1
        group = f"{st['topic']}-g{st['gen']}"
        st["last_group"], st["last_fault"] = group, fault
        fetch = "tiny" if fault == "broker_down" else rnd.choice(list(self.FETCH))
        self.fetches[fetch] += 1
        st["fetch"] = fetch
        return ["--source", self.uri(trial), "--group", group, *self.GROUP, *self.FETCH[fetch]]

    def wait_first_record(self, p, errpath, limit):
        """Waits for the job's line at its first record; returns its time."""
        end = time.time() + limit
        while time.time() < end and p.poll() is None:
            with open(errpath, "rb") as f:
                if b"records carry" in f.read():
                    return time.time()
            time.sleep(0.01)
        return None

    def fault_delay(self, trial, p, errpath, fault, rnd):
        st = self.trials[trial.dir]
        if rnd.random() < 0.2:
            # during start-up and the group join
            time.sleep(rnd.uniform(0, st["join"]))
            return
        self.wait_first_record(p, errpath, 60)
        # tiny fetches read ~10k records/s here
        window = max(st["read"], trial.n / 10000) if st["fetch"] == "tiny" else st["read"]
        time.sleep(rnd.uniform(0, 1.0) * window)

    def inject(self, fault, rnd):
        which = "" if rnd.random() < 0.5 else str(rnd.randrange(1, self.BROKERS + 1))
        if which:
            self.down_one += 1
        else:
            self.down_all += 1
        self.control(f"down {which}")
        try:
            time.sleep(rnd.uniform(1, 8))
        finally:
            self.control(f"up {which}")

    def observe(self, err):
        self.outages_seen += "unreachable" in err

    def describe(self, trial):
        st = self.trials[trial.dir]
        return f" ({st['parts']} partitions, {st['layout']})"

    def summary(self):
        return (f"kafka: topics by layout {self.layouts}; runs by fetch sizes {self.fetches}; "
                f"broker_down: one broker {self.down_one}, all brokers {self.down_all}; "
                f"runs that reported the cluster unreachable {self.outages_seen}; "
                f"runs that reused the group of a run drawn for SIGKILL (or checkpoint loss, a SIGKILL too; "
                f"whether or not it landed) {self.waited_eviction}")


TARGETS = {"sqlite": SqliteTarget, "jsonl": JsonlTarget, "postgresql": PostgresTarget,
           "cql": CqlTarget, "kafka": KafkaTarget}


def run_until_complete(trial, target, rnd, stats, deadline):
    """Runs the job through random faults until one run completes."""
    cp = os.path.join(trial.dir, f"cp-{target.name}")
    small = None
    runs = 0
    pool = ["kill", "kill", "kill", "term", "lose", "batch", "diskfull"] + target.faults * 2
    plan = [rnd.choice(pool) for _ in range(rnd.randrange(2, 7))]
    # 120 s past its own start or the campaign's end, whichever is later: a
    # short campaign (no --minutes) has its end at its start, and its later
    # trials must not inherit the earlier ones' time
    give_up = max(deadline, time.time()) + 120
    while True:
        runs += 1
        if runs > 400 or time.time() > give_up:
            raise RuntimeError("the job did not complete under faults")
        fault = plan.pop(0) if plan else rnd.choice(pool + ["none"] * 4)
        args = [BIN, "run", *target.source_args(trial, rnd, fault), "--sink", target.sink(trial),
                "--until-end", *trial.settings,
                "--commit-every", str(rnd.choice([10, 500, 5000, 100000])),
                "--dlq", f"jsonl:{trial.dir}/{target.name}.dlq", *target.sink_opts(trial)]
        if fault == "diskfull" and small is None:
            small = os.path.join(trial.dir, f"small-{target.name}")
            os.makedirs(small)
            used = sum(os.path.getsize(os.path.join(cp, f)) for f in os.listdir(cp)) if os.path.exists(cp) else 0
            room = used + rnd.choice([100, 300, 1000]) * 1024
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", small], check=True)
            if os.path.exists(cp):
                shutil.copytree(cp, os.path.join(small, "cp"))
            args += ["--checkpoint", os.path.join(small, "cp")]
        else:
            args += ["--checkpoint", cp]
        errpath = os.path.join(trial.dir, f"{target.name}.err")
        errfile = open(errpath, "wb")
        # half the runs compact their checkpoint often (a snapshot every few
        # KB of log, written in the background): faults land in compactions
        env = dict(os.environ)
        if rnd.random() < 0.5:
            env["SESSIONIZER_SNAPSHOT_MIN_BYTES"] = str(rnd.choice([4096, 65536]))
        # half the runs keep at most a few KB of sessions in memory, the rest
        # spilled to disk and read back (--memory-limit, issue 12): faults land
        # in evictions, loads, and snapshots and restores of spilled users
        if rnd.random() < 0.5:
            env["SESSIONIZER_SPILL_BUDGET"] = str(rnd.choice([16384, 262144]))
            stats["spill"] += 1
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=errfile, env=env)
        try:
            if fault in ("kill", "term", "lose"):
                target.fault_delay(trial, p, errpath, fault, rnd)
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM if fault == "term" else signal.SIGKILL)
                    if fault != "lose":
                        stats[fault] += 1
            elif fault in target.faults:
                target.fault_delay(trial, p, errpath, fault, rnd)
                if p.poll() is None:
                    target.inject(fault, rnd)
                    stats[fault] += 1
            p.wait(timeout=target.run_timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"run hung for {target.run_timeout} s (fault {fault}):\n"
                               f"{open(errpath, errors='replace').read()[-3000:]}")
        finally:
            # an interrupted campaign leaves no job behind (a Kafka job
            # whose cluster is gone would wait for it forever)
            if p.poll() is None:
                p.kill()
                p.wait()
            errfile.close()
        with open(errpath, "rb") as f:
            err = f.read().decode(errors="replace")
        target.observe(err)
        if fault == "lose" and os.path.exists(cp):
            # the whole checkpoint is lost: the next run replays from the
            # beginning over the rows already written
            shutil.rmtree(cp)
            stats["lose"] += 1
            continue
        if small is not None:
            # after a disk-full run, carry on from the last good checkpoint on a roomy disk
            if os.path.exists(cp):
                shutil.rmtree(cp)
            if os.path.exists(os.path.join(small, "cp")):
                shutil.copytree(os.path.join(small, "cp"), cp, ignore=shutil.ignore_patterns("lock"))
            subprocess.run(["umount", small], check=True)
            shutil.rmtree(small)
            small = None
            if p.returncode == 1 and "full" in err:
                stats["diskfull"] += 1
                continue
        if p.returncode == 0 and "stopped by signal" not in err:
            return runs
        if p.returncode in (-signal.SIGKILL, 0):
            continue
        if p.returncode == -signal.SIGTERM and fault == "term":
            continue  # arrived before main() installed its handler: a kill, in effect
        raise RuntimeError(f"run failed unexpectedly (status {p.returncode}, fault {fault}):\n{err}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=0, help="run trials until this much time passed")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SEED", time.time())))
    ap.add_argument("--targets", default="sqlite,jsonl")
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    print(f"campaign: seed {a.seed} (rerun with --seed {a.seed}), targets {a.targets}")
    workdir = tempfile.mkdtemp(prefix="sessionizer-campaign-")
    targets = [TARGETS[t](workdir) for t in a.targets.split(",")]
    totals = dict(trials=0, runs=0, sessions=0, lost=0, duplicates=0, changed=0, oracle=0,
                  vs_oracle=0)
    faults = {f: 0 for f in ["kill", "term", "lose", "diskfull", "spill"]}
    failed = 0        # runs that errored
    bad_trials = 0    # trials with any loss, duplicate, change, oracle disagreement or error
    start = time.time()
    deadline = start + a.minutes * 60
    try:
        for t in targets:
            t.start()
            for f in t.faults:
                faults.setdefault(f, 0)
        i = 0
        while i < a.trials or time.time() < deadline:
            trial = Trial(rnd, workdir, i)
            mism = trial.oracle_mismatch
            totals["oracle"] += sum(mism.values())
            trial_bad = sum(mism.values()) > 0
            for target in targets:
                try:
                    tmism = target.prepare(trial, rnd)
                    expected = target.expected(trial)
                    runs = run_until_complete(trial, target, rnd, faults, deadline)
                    got = target.table(trial)
                    diff = compare(expected, got)
                    odiff = target.oracle_diff(trial, got)
                except Exception as e:  # noqa: BLE001 - reported and counted
                    print(f"trial {i} [{target.name}] ERROR: {e}", file=sys.stderr)
                    failed += 1
                    trial_bad = True
                    continue
                trial_bad |= sum(diff.values()) > 0
                totals["runs"] += runs
                totals["sessions"] += len(expected)
                for k in ("lost", "duplicates", "changed"):
                    totals[k] += diff[k]
                extra = ""
                if tmism is not None:
                    # the target's own expected table (a Kafka topic's) against
                    # its own oracle, and the final table against that oracle too
                    totals["oracle"] += sum(tmism.values())
                    totals["vs_oracle"] += sum(odiff.values())
                    trial_bad |= sum(tmism.values()) + sum(odiff.values()) > 0
                    extra = (f"; its clean run vs its oracle {sum(tmism.values())}, final table vs "
                             f"its oracle: lost {odiff['lost']}, duplicates {odiff['duplicates']}, "
                             f"changed {odiff['changed']}")
                print(f"trial {i} [{target.name}]{target.describe(trial)} {trial.n} records, "
                      f"{len(expected)} sessions, "
                      f"{runs} runs: lost {diff['lost']}, duplicates {diff['duplicates']}, "
                      f"changed {diff['changed']}; oracle disagreements {sum(mism.values())}{extra}",
                      flush=True)
            totals["trials"] += 1
            bad_trials += trial_bad
            shutil.rmtree(trial.dir, ignore_errors=True)
            i += 1
    finally:
        for t in targets:
            t.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    bad = (totals["lost"] + totals["duplicates"] + totals["changed"] + totals["oracle"]
           + totals["vs_oracle"] + failed)
    fault_list = ", ".join(f"{k} {v}" for k, v in faults.items())
    print(f"campaign: {totals['trials']} trials, {totals['runs']} runs, faults injected: {fault_list}; "
          f"{totals['sessions']} sessions compared: lost {totals['lost']}, duplicates "
          f"{totals['duplicates']}, ids or pages changed {totals['changed']}, oracle disagreements "
          f"{totals['oracle']}, final tables vs a target's own oracle {totals['vs_oracle']}, "
          f"failed trials {failed}; {time.time() - start:.0f}s")
    for t in targets:
        if t.summary():
            print(f"campaign: {t.summary()}")
    print(f"campaign: {totals['trials'] - bad_trials} passed, {bad_trials} failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
