#!/usr/bin/python3
"""Scale-out campaign: several --scale-out instances on the mock cluster over
a fixed log, with faults, must give the single instance's table.

    scaleout_campaign.py [--instances 3] [--chaos 25] [--records 3000]
                         [--partitions 4] [--seed S] [--keep]

Steps:
 1. a private PostgreSQL (lib/pg_server.sh) and mock cluster (kafka-mock
    --partitions N --topic visits: nothing else is set up);
 2. a fixed log (kafka_gen.py: users over every partition, late and invalid
    records, pauses that close sessions mid-stream), produced with kcat;
 3. the expected table twice: the independent oracle (kafka_oracle.py) and a
    single-instance run (no --scale-out) into the table `single`;
 4. --instances instances with --scale-out --until-end into `sessions`, and
    for --chaos seconds a random fault every 1.5-5 s:
      kill   SIGKILL an instance (its machine is lost: there is no local
             state to keep; it may come back 0-3 s later, or never)
      leave  SIGTERM an instance (a clean leave)
      join   start one more instance
      outage every broker down for 2-6 s (once per run)
    then the running instances (at least one is started if none) must all
    exit 0 by themselves: --until-end across the group;
 5. the table must equal both references: 0 lost, 0 duplicated, 0 changed;
    the dead letters (one file per instance) must hold every invalid and late
    record of the oracle, each at least once (a replay may write one twice)
    and nothing else.
With --keyed the log is keyed by user (partition = user mod N) and the
instances run with --keyed-input.
Prints the figures: faults, stage 2 duplicates dropped, CPU seconds.
Environment: SESSIONIZER, KAFKA_MOCK. Exit 1 on any difference.
"""
import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"
PG_SERVER = os.path.join(HERE, "lib", "pg_server.sh")
FAST = ["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Run:
    def __init__(self, a):
        self.a = a
        self.rnd = random.Random(a.seed)
        self.dir = tempfile.mkdtemp(prefix="sz-scaleout.")
        os.chmod(self.dir, 0o755)  # the server may run as another account (pg_server.sh)
        self.procs = []  # every process started, for cleanup
        self.mock = None
        self.env = {}
        # kcat's settings for the log (a fetch returns whole batches, so the
        # batch size bounds how slowly the log can be read)
        self.kcat_extra = []
        # tiny fetches, so that the faults land while the log is being read
        self.slow = ["-X", "message.max.bytes=1000", "-X", "fetch.max.bytes=1000",
                     "-X", f"max.partition.fetch.bytes={a.fetch_bytes}"]

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def cleanup(self, ok):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run([PG_SERVER, "destroy", self.path("pg")], capture_output=True)
        if ok and not self.a.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            log(f"kept {self.dir}")

    def start_pg(self):
        out = subprocess.run([PG_SERVER, "start", self.path("pg")], capture_output=True,
                             text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("export "):
                k, v = line[7:].split("=", 1)
                self.env[k] = v.strip("'\"")
        self.pg_uri = self.env["PG_URI"]

    def psql(self, sql):
        return subprocess.run([PG_SERVER, "psql", self.path("pg"), "-AtX", "-F", "\t", "-c", sql],
                              capture_output=True, text=True, check=True).stdout

    def start_mock(self, extra=()):
        self.mock = subprocess.Popen([os.environ["KAFKA_MOCK"], "--partitions",
                                      str(self.a.partitions), "--topic", "visits", *extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.path("mock.err"), "w"), text=True)
        self.procs.append(self.mock)
        self.brokers = self.mock.stdout.readline().strip()
        log(f"mock cluster at {self.brokers}")

    def mock_cmd(self, cmd):
        self.mock.stdin.write(cmd + "\n")
        self.mock.stdin.flush()

    def produce(self):
        gen = self.path("gen")
        subprocess.run([PY, os.path.join(HERE, "kafka_gen.py"), "--partitions",
                        str(self.a.partitions), "--records", str(self.a.records), "--users", "60",
                        "--seed", str(self.a.seed), gen], check=True)
        if self.a.keyed:
            self.key_by_user(gen)
        for p in range(self.a.partitions):
            subprocess.run(["kcat", "-P", "-b", self.brokers, "-t", "visits", "-p", str(p), "-l",
                            os.path.join(gen, f"p{p}.jsonl")] + self.kcat_extra, check=True)
        with open(self.path("dump.tsv"), "w") as f:
            subprocess.run(["kcat", "-C", "-b", self.brokers, "-t", "visits", "-e", "-q", "-f",
                            "%p\t%o\t%T\t%s\n"], stdout=f, check=True)

    def key_by_user(self, gen):
        """--keyed: every user's records in partition user mod N, each
        partition keeping the generator's order (records that name no user
        stay where they were)."""
        parts = [[] for _ in range(self.a.partitions)]
        merged = []  # (how far into its file, line): the files' event-time order, interleaved
        for p in range(self.a.partitions):
            lines = open(os.path.join(gen, f"p{p}.jsonl"), encoding="utf-8").readlines()
            merged += [(i / len(lines), p, line) for i, line in enumerate(lines)]
        merged.sort(key=lambda x: x[0])
        for _, p, line in merged:
            if True:
                try:
                    u = json.loads(line)["user_id"]
                    dest = u % self.a.partitions if isinstance(u, int) else p
                except (ValueError, KeyError, TypeError):
                    dest = p
                parts[dest].append(line)
        for p in range(self.a.partitions):
            with open(os.path.join(gen, f"p{p}.jsonl"), "w", encoding="utf-8") as f:
                f.writelines(parts[p])

    def oracle(self):
        out = subprocess.run([PY, os.path.join(HERE, "kafka_oracle.py"), self.path("dump.tsv")],
                             capture_output=True, text=True, check=True)
        rows = set()
        for line in out.stdout.splitlines():
            sid, uid, pages = line.split("|", 2)
            rows.add((int(sid), int(uid), tuple(json.loads(pages))))
        return rows, json.loads(out.stderr.strip().splitlines()[-1])

    def table(self, name):
        rows = []
        for line in self.psql(f"SELECT session_id, user_id, array_to_json(pages) FROM {name}").splitlines():
            sid, uid, pages = line.split("\t", 2)
            rows.append((int(sid), int(uid), tuple(json.loads(pages) or [])))
        return rows

    def single(self):
        t0 = time.time()
        p = subprocess.run([os.environ["SESSIONIZER"], "run", "--source",
                            f"kafka://{self.brokers}/visits", "--sink", self.pg_uri, "--sink-opt",
                            "table=single", "--group", "single", "--until-end", "-q", "--dlq",
                            "jsonl:" + self.path("single.dlq")] + FAST,
                           capture_output=True, text=True, timeout=180)
        if p.returncode != 0:
            raise SystemExit(f"FAIL: the single-instance run failed: {p.stderr[-2000:]}")
        log(f"single instance: {time.time() - t0:.1f} s")

    def start_instance(self, n):
        err = open(self.path(f"i{n}.err"), "w")
        p = subprocess.Popen([os.environ["SESSIONIZER"], "run", "--scale-out", "--source",
                              f"kafka://{self.brokers}/visits", "--sink", self.pg_uri, "--group",
                              "G", "--until-end", "--commit-interval", "500ms", "--dlq",
                              "jsonl:" + self.path(f"i{n}.dlq")] + FAST + self.slow
                             + (["--keyed-input"] if self.a.keyed else []),
                             stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        p.started = time.time()
        self.procs.append(p)
        return p


def fail_instance(r, n, what):
    """Ends the run, quoting the instance's last words: a CI log has no
    other way to show them."""
    try:
        tail = open(r.path(f"i{n}.err"), encoding="utf-8", errors="replace").read()[-3000:]
    except OSError:
        tail = "(no stderr file)"
    raise SystemExit(f"FAIL: instance {n} {what}; its stderr ends with:\n{tail}")


def dead_letters(paths):
    """The distinct dead letters (reason, partition, offset) in the JSON-lines
    files of paths that exist: each instance writes its own, and a record
    read again after a rebalance may be dead-lettered twice."""
    dl = set()
    for path in paths:
        if os.path.exists(path):
            for line in open(path, encoding="utf-8"):
                if line.strip():
                    d = json.loads(line)
                    dl.add((d["reason"], d.get("partition"), d.get("offset")))
    return dl


def compare(name, want, got_rows):
    got = set(got_rows)
    keys_want = {(s, u): pg for s, u, pg in want}
    keys_got = {}
    dup = len(got_rows) - len(got)
    for s, u, pg in got:
        if (s, u) in keys_got:
            dup += 1
        keys_got[(s, u)] = pg
    lost = sum(1 for k in keys_want if k not in keys_got)
    extra = sum(1 for k in keys_got if k not in keys_want)
    changed = sum(1 for k, pg in keys_want.items() if k in keys_got and keys_got[k] != pg)
    log(f"vs {name}: {len(want)} sessions expected, {len(got_rows)} rows: "
        f"{lost} lost, {extra + dup} duplicated, {changed} changed")
    return lost == 0 and extra + dup == 0 and changed == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--chaos", type=float, default=25.0, help="seconds of faults")
    ap.add_argument("--records", type=int, default=30000, help="for partition 0 (kafka_gen.py)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--fetch-bytes", type=int, default=500, help="per partition, of the instances' fetches")
    ap.add_argument("--rtt", type=int, default=10, help="ms added to every request")
    ap.add_argument("--keyed", action="store_true",
                    help="a log keyed by user, read with --keyed-input (no repartition)")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    r = Run(a)
    ok = False
    try:
        log(f"seed {a.seed}")
        r.start_pg()
        r.start_mock()
        r.produce()
        want, counts = r.oracle()
        log(f"oracle: {counts}")
        r.single()
        single = r.table("single")
        ok = compare("oracle (single instance)", want, single)
        if not ok:
            raise SystemExit("FAIL: the single-instance run differs from the oracle")

        # every request takes a.rtt ms more: the log takes tens of seconds to
        # read, so that the faults land while it is being read
        r.mock_cmd(f"rtt 1 {a.rtt}")
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.time()
        live = {}
        nxt = 0
        for _ in range(a.instances):
            live[nxt] = r.start_instance(nxt)
            nxt += 1
        faults = {"kill": 0, "leave": 0, "join": 0, "outage": 0, "comeback": 0}
        outage_done = False
        pending = []  # (time, kind) of instances to bring back
        end = time.time() + a.chaos
        while time.time() < end:
            time.sleep(r.rnd.uniform(1.5, 5.0))
            for n, p in list(live.items()):
                if p.poll() is not None:
                    log(f"instance {n} exited with {p.returncode}")
                    if p.returncode != 0:
                        fail_instance(r, n, f"exited with {p.returncode}")
                    del live[n]
            for when in [w for w in pending if w <= time.time()]:
                pending.remove(when)
                live[nxt] = r.start_instance(nxt)
                nxt += 1
                faults["comeback"] += 1
            choices = ["kill", "kill", "leave", "join"] + ([] if outage_done else ["outage"])
            # the first two faults are always a kill and the outage, so that
            # even a short run has both
            what = r.rnd.choice(choices) if sum(faults.values()) >= 2 else \
                ("kill" if faults["kill"] == 0 else "outage")
            if what in ("kill", "leave") and len(live) <= 1:
                what = "join"
            if what == "kill":
                # preferably one that has had time to be given work
                old = [k for k in sorted(live) if time.time() - live[k].started > 8]
                n = r.rnd.choice(old or sorted(live))
                victim = live.pop(n)
                victim.kill()
                victim.wait()
                log(f"kill -9 instance {n}")
                if r.rnd.random() < 0.7:
                    pending.append(time.time() + r.rnd.uniform(0, 3))
            elif what == "leave":
                # one that has had time to install its signal handlers
                old = [k for k in sorted(live) if time.time() - live[k].started > 2]
                if not old:
                    continue
                n = r.rnd.choice(old)
                p = live.pop(n)
                p.send_signal(signal.SIGTERM)
                log(f"SIGTERM instance {n}")
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    fail_instance(r, n, "did not stop within 30 s of SIGTERM")
                if p.returncode != 0:
                    fail_instance(r, n, f"exited with {p.returncode} after SIGTERM")
            elif what == "join":
                live[nxt] = r.start_instance(nxt)
                log(f"instance {nxt} joins")
                nxt += 1
            else:
                outage_done = True
                secs = r.rnd.uniform(2, 6)
                log(f"every broker down for {secs:.1f} s")
                r.mock_cmd("down")
                time.sleep(secs)
                r.mock_cmd("up")
            faults[what] += 1
        if not live:
            live[nxt] = r.start_instance(nxt)
            nxt += 1
        log(f"faults: {faults}; waiting for the {len(live)} running instances to finish")
        deadline = time.time() + 240
        for n, p in live.items():
            try:
                p.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                fail_instance(r, n, "did not finish (--until-end)")
            if p.returncode != 0:
                fail_instance(r, n, f"exited with {p.returncode}")
        wall = time.time() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        got = r.table("sessions")
        ok = compare("oracle", want, got) and compare("single instance", set(single), got)
        # dead letters: every invalid and late record of the log, nothing else
        dl = dead_letters(r.path(f"i{n}.dlq") for n in range(nxt))
        bad = counts["invalid"] + counts["late"] + counts["future"]
        n_late = sum(1 for x in dl if x[0] == "late")
        log(f"dead letters: {len(dl)} distinct ({n_late} late), oracle {bad} "
            f"({counts['late']} late)")
        if len(dl) != bad or n_late != counts["late"]:
            ok = False
        dups = 0
        for n in range(nxt):
            for line in open(r.path(f"i{n}.err"), encoding="utf-8", errors="replace"):
                if "dropped" in line and "duplicates" in line:
                    dups += int(line.split(" dropped ")[1].split()[0])
        log(f"figures: {nxt} instances started, {wall:.1f} s, {cpu:.2f} CPU s (all processes "
            f"waited for), {dups} repartition duplicates dropped by the instances that exited")
        if not ok:
            raise SystemExit("FAIL: the scale-out table differs")
        log("PASS")
    finally:
        r.cleanup(ok)


if __name__ == "__main__":
    main()
