#!/usr/bin/python3
"""Randomized fault campaign: tries hard to break the promise that the table
is a function of the input log alone.

    tests/campaign/campaign.py [--trials N] [--seed S] [--targets LIST] [--minutes M]

For every trial it generates an input log (disorder, duplicates, malformed
records, a few very active users), draws session settings, computes the
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
  + the target's own faults (see the Target classes)

It then compares the target's final table with the clean run's:
  lost        sessions of the clean run missing from the table
  duplicates  rows that the clean run does not have (a session written
              under another key)
  changed     same key, other pages
all of which must be 0, and prints a summary line per trial and in total.
Exit status 1 if any of them is not 0 or a run failed unexpectedly.
"""
import argparse
import json
import os
import random
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
        gap = rnd.choice([5, 20, 50, 120])
        late = rnd.choice([0, 3, 10, 60])
        self.settings = ["--gap", f"{gap}s", "--lateness", f"{late}s",
                         "--max-pages", str(rnd.choice([3, 50, 10000]))]
        self.gap_us, self.late_us = gap * 1000000, late * 1000000
        self.max_pages = int(self.settings[-1])
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
                                  self.max_pages)
        self.oracle_mismatch = compare(rows, self.expected)


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
        return f"sqlite:{trial.dir}/target.db"

    def table(self, trial):
        return content(f"{trial.dir}/target.db")

    def inject(self, fault, rnd):
        pass

    def sink_opts(self, trial):
        return []


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
        return ["--sink-opt", "retry_timeout_ms=0"]

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


TARGETS = {"sqlite": SqliteTarget, "jsonl": JsonlTarget, "postgresql": PostgresTarget,
           "cql": CqlTarget}


def run_until_complete(trial, target, rnd, stats, deadline):
    """Runs the job through random faults until one run completes."""
    cp = os.path.join(trial.dir, f"cp-{target.name}")
    small = None
    runs = 0
    pool = ["kill", "kill", "kill", "term", "lose", "batch", "diskfull"] + target.faults * 2
    plan = [rnd.choice(pool) for _ in range(rnd.randrange(2, 7))]
    while True:
        runs += 1
        if runs > 400 or time.time() > deadline + 120:
            raise RuntimeError("the job did not complete under faults")
        fault = plan.pop(0) if plan else rnd.choice(pool + ["none"] * 4)
        args = [BIN, "run", "--source", f"file:{trial.log}", "--sink", target.sink(trial),
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
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if fault in ("kill", "term", "lose"):
            # somewhere inside the run: a fault-free run took clean_seconds
            time.sleep(rnd.uniform(0.02, 1.0) * max(trial.clean_seconds, 0.05))
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if fault == "term" else signal.SIGKILL)
                if fault != "lose":
                    stats[fault] += 1
        elif fault in target.faults:
            time.sleep(rnd.uniform(0.02, 1.0) * max(trial.clean_seconds, 0.05))
            if p.poll() is None:
                target.inject(fault, rnd)
                stats[fault] += 1
        err = p.communicate(timeout=600)[1].decode(errors="replace")
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
    totals = dict(trials=0, runs=0, sessions=0, lost=0, duplicates=0, changed=0, oracle=0)
    faults = {f: 0 for f in ["kill", "term", "lose", "diskfull"]}
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
                    runs = run_until_complete(trial, target, rnd, faults, deadline)
                    diff = compare(trial.expected, target.table(trial))
                except Exception as e:  # noqa: BLE001 - reported and counted
                    print(f"trial {i} [{target.name}] ERROR: {e}", file=sys.stderr)
                    failed += 1
                    trial_bad = True
                    continue
                trial_bad |= sum(diff.values()) > 0
                totals["runs"] += runs
                totals["sessions"] += len(trial.expected)
                for k in ("lost", "duplicates", "changed"):
                    totals[k] += diff[k]
                print(f"trial {i} [{target.name}] {trial.n} records, {len(trial.expected)} sessions, "
                      f"{runs} runs: lost {diff['lost']}, duplicates {diff['duplicates']}, "
                      f"changed {diff['changed']}; oracle disagreements {sum(mism.values())}")
            totals["trials"] += 1
            bad_trials += trial_bad
            shutil.rmtree(trial.dir, ignore_errors=True)
            i += 1
    finally:
        for t in targets:
            t.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    bad = totals["lost"] + totals["duplicates"] + totals["changed"] + totals["oracle"] + failed
    fault_list = ", ".join(f"{k} {v}" for k, v in faults.items())
    print(f"campaign: {totals['trials']} trials, {totals['runs']} runs, faults injected: {fault_list}; "
          f"{totals['sessions']} sessions compared: lost {totals['lost']}, duplicates "
          f"{totals['duplicates']}, ids or pages changed {totals['changed']}, oracle disagreements "
          f"{totals['oracle']}, failed trials {failed}; {time.time() - start:.0f}s")
    print(f"campaign: {totals['trials'] - bad_trials} passed, {bad_trials} failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
