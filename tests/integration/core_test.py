#!/usr/bin/python3
"""Core scenarios of the embedded default (file/stdin in, SQLite/JSONL out):

  core_test.py golden | replay | oracle | sigkill | batches | deadletter |
               corrupt | cli | stdin | sigterm | resume_open | diskfull | torn |
               idle | sqlite_paths | outputs | logs | memory_limit | spill |
               sqlite_layout

Each prints "N passed, N failed" and exits non-zero on a failure.
"""
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import oracle  # noqa: E402
from harness import BIN, GEN, PY, ROOT, content, generate, run, run_checks, summary, table, tmpdir  # noqa: E402

SAMPLE = os.path.join(ROOT, "samples", "visits.jsonl")

# The walkthrough's sessions (docs/semantics.md explains each id).
GOLDEN = {
    (9083342062386381219, 1): ["A.html", "B.html"],
    (2197506010493845107, 1): ["C.html"],
    (6602007354676743790, 2): ["D.html"],
}


def job(src, db, cp=None, *extra, check=True, stdin=None):
    args = ["run", "--source", src, "--sink", f"sqlite:{db}", "--until-end", *extra]
    if cp:
        args += ["--checkpoint", cp]
    elif "--dlq" not in extra:
        args += ["--dlq", f"jsonl:{db}.dlq"]
    return run(*args, check=check, stdin=stdin)


def t_golden(c):
    d = tmpdir()
    db = f"{d}/s.db"
    job(f"file:{SAMPLE}", db, f"{d}/cp", "--dlq", f"jsonl:{d}/dlq.jsonl")
    c.eq(content(db), GOLDEN, "sample gives the walkthrough's sessions and ids")
    rows, _ = oracle.sessions(open(SAMPLE, "rb").read())
    c.eq(content(db), rows, "and the independent oracle agrees")
    c.eq(os.path.getsize(f"{d}/dlq.jsonl"), 0, "no dead letters")


def t_replay(c):
    d = tmpdir()
    db = f"{d}/s.db"
    job(f"file:{SAMPLE}", db, f"{d}/cp")
    first = table(db)
    time.sleep(0.01)
    shutil.rmtree(f"{d}/cp")  # the checkpoint is lost
    job(f"file:{SAMPLE}", db, f"{d}/cp")
    second = table(db)
    c.eq(set(second), set(first), "same keys after the replay: no new rows")
    c.eq({k: v[0] for k, v in second.items()}, {k: v[0] for k, v in first.items()}, "same pages")
    c.check(all(second[k][1] > first[k][1] for k in first), "every ingestion_time is newer")
    # and with the checkpoint kept, a rerun has nothing left to do
    p = run("run", "--source", f"file:{SAMPLE}", "--sink", f"sqlite:{db}", "--checkpoint",
            f"{d}/cp", "--until-end")
    c.check(b"resumed from checkpoint" in p.stderr, "second run resumes")
    c.eq(table(db), second, "a resumed run at the end rewrites nothing")


def t_oracle(c):
    d = tmpdir()
    log, db = f"{d}/visits.jsonl", f"{d}/s.db"
    generate(log, 30000, "--users", 300, "--bad", 0.02, "--dup", 0.02, "--disorder", 20,
             "--bots", 2, "--seed", 7)
    for gap, late, cap in [("50s", "10s", 10000), ("20s", "0s", 50), ("5s", "30s", 3)]:
        if os.path.exists(db):
            os.remove(db)
        p = job(f"file:{log}", db, None, "--gap", gap, "--lateness", late, "--max-pages", str(cap),
                "--dlq", f"jsonl:{d}/dlq.jsonl")
        g_us, l_us = int(gap[:-1]) * 1000000, int(late[:-1]) * 1000000
        rows, counts = oracle.sessions(open(log, "rb").read(), g_us, l_us, cap)
        got = content(db)
        c.eq(len(got), len(rows), f"[{gap}/{late}/{cap}] session count equals the oracle's")
        c.eq(got, rows, f"[{gap}/{late}/{cap}] sessions, ids and pages equal the oracle's")
        s = summary(p.stderr)
        c.eq((s["records"], s["invalid"], s["late"], s["capped"], s["closed_visits"]),
             (counts["records"], counts["invalid"], counts["late"], counts["capped"],
              counts["visits"]), f"[{gap}/{late}/{cap}] counts equal the oracle's")
        c.eq(s["records"], s["closed_visits"] + s["dead"], "records = visits in sessions + dead letters")


def run_with_kills(args, rnd, max_delay):
    """Runs the job, SIGKILLing it at random instants, until one run completes.
    Returns the number of kills.

    A run must get past its start-up and restore to make progress: that takes
    longer under sanitizers or a loaded machine, and grows with the change log
    to replay (docs/checkpoint.md). So the window widens by a quarter every 10
    kills; the kills still land at random instants of each run."""
    kills = 0
    while True:
        p = subprocess.Popen([BIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            p.wait(timeout=rnd.uniform(0.005, max_delay * 1.25 ** (kills // 10)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            kills += 1
            if kills > 500:
                raise AssertionError("the job never completed between kills")
            continue
        err = p.stderr.read()
        if p.returncode != 0:
            raise AssertionError(f"run failed: {err.decode(errors='replace')}")
        return kills, err


def t_sigkill(c):
    d = tmpdir()
    log = f"{d}/visits.jsonl"
    generate(log, 120000, "--users", 2000, "--bad", 0.01, "--dup", 0.01, "--disorder", 20,
             "--seed", 3)
    base = ["run", "--source", f"file:{log}", "--until-end", "--commit-every", "2000"]
    run(*base, "--sink", f"sqlite:{d}/ref.db", "--dlq", f"jsonl:{d}/ref.dlq", "-q")
    ref = content(f"{d}/ref.db")
    rnd = random.Random(int(os.environ.get("SEED", "11")))
    total = 0
    for trial in range(5):
        t = f"{d}/t{trial}"
        os.mkdir(t)
        kills, err = run_with_kills(
            [*base, "--sink", f"sqlite:{t}/s.db", "--checkpoint", f"{t}/cp", "--dlq",
             f"jsonl:{t}/dlq.jsonl"], rnd, 0.12)
        total += kills
        c.eq(content(f"{t}/s.db"), ref, f"trial {trial}: table after {kills} SIGKILLs equals an uninterrupted run's")
        got_dl, ref_dl = open(f"{t}/dlq.jsonl", "rb").read(), open(f"{d}/ref.dlq", "rb").read()
        if not c.check(got_dl == ref_dl, f"trial {trial}: dead letters exactly once"):
            import difflib
            for line in list(difflib.unified_diff(ref_dl.decode().splitlines(), got_dl.decode().splitlines(),
                                                  lineterm="", n=1))[:12]:
                print("  " + line[:300], file=sys.stderr)
        s = summary(err)
        c.eq(s["records"], 120000, f"trial {trial}: every record counted once across restarts")
        c.eq(s["records"], s["closed_visits"] + s["dead"], f"trial {trial}: counts reconcile")
    c.check(total >= 10, f"the job was really killed mid-run ({total} kills)")
    print(f"sigkill: {total} kills over 5 trials")


def t_batches(c):
    d = tmpdir()
    log = f"{d}/visits.jsonl"
    generate(log, 20000, "--users", 500, "--bad", 0.01, "--disorder", 15, "--seed", 5)
    ref = None
    for i, opts in enumerate([["--commit-every", "1"], ["--commit-every", "7"],
                              ["--commit-every", "100000"],
                              ["--commit-every", "0", "--commit-interval", "1ms"]]):
        db = f"{d}/s{i}.db"
        run("run", "--source", f"file:{log}", "--sink", f"sqlite:{db}", "--until-end", "-q",
            "--checkpoint", f"{d}/cp{i}", "--dlq", f"jsonl:{d}/dlq{i}", *opts)
        got = (content(db), open(f"{d}/dlq{i}", "rb").read())
        if ref is None:
            ref = got
        else:
            c.eq(got, ref, f"commit setting {opts} gives the same table and dead letters")
    # and bounded runs over a growing file: the checkpoint carries open sessions
    lines = open(log, "rb").read().splitlines(keepends=True)
    part = f"{d}/growing.jsonl"
    open(part, "wb").close()
    for k in range(0, len(lines), 4000):
        with open(part, "ab") as f:
            f.writelines(lines[k:k + 4000])
        last = k + 4000 >= len(lines)
        args = ["run", "--source", f"file:{part}", "--sink", f"sqlite:{d}/grow.db", "-q",
                "--checkpoint", f"{d}/cpg", "--dlq", f"jsonl:{d}/dlqg"]
        run(*args, *(["--until-end"] if last else []))
    def letters(path):  # dead letters less their source name, which differs here
        import json
        return [{k: v for k, v in json.loads(x).items() if k != "source"} for x in open(path, "rb")]
    c.eq(content(f"{d}/grow.db"), ref[0], "five runs over a growing file give the table of one run")
    c.eq(letters(f"{d}/dlqg"), letters(f"{d}/dlq0"), "and the same dead letters")


def t_deadletter(c):
    import json
    d = tmpdir()
    log = f"{d}/bad.jsonl"
    good = b'{"user_id": 1, "page": "A.html", "event_time": "2023-02-20T03:03:20"}'
    lines = [
        good,
        b'{"user_id": 1, "page": "B.html", "event_time": "2023-02-20T03:10:00"}',
        b'{"user_id": 2, "page": "late.html", "event_time": "2023-02-20T03:00:00"}',
        b"not json",
        b'{"user_id": "1", "page": "x", "event_time": "2023-02-20T03:03:20"}',
        b'{"user_id": 1, "page": "x", "event_time": "2023-02-30T03:03:20"}',
        b'{"user_id": 1, "event_time": "2023-02-20T03:03:20"}',
        b'{"user_id": 1, "page": "\xff", "event_time": "2023-02-20T03:03:20"}',
        b"",
        b'{"user_id": 3, "page": "' + b"x" * 300 + b'", "event_time": "2023-02-20T03:10:00"}',
        b'{"user_id": 1, "page": "C.html", "event_time": "2023-02-20T03:10:01"}\r',
    ]
    open(log, "wb").write(b"\n".join(lines))  # no final newline: the last line still counts
    p = job(f"file:{log}", f"{d}/s.db", None, "--dlq", f"jsonl:{d}/dlq.jsonl",
            "--max-record-bytes", "200")
    dl = [json.loads(x) for x in open(f"{d}/dlq.jsonl")]
    c.eq([x["reason"] for x in dl],
         ["late", "invalid_json", "mistyped_field", "bad_event_time", "missing_field",
          "invalid_utf8", "invalid_json", "oversized"], "each bad record with its reason, in order")
    c.eq([x["line"] for x in dl], [3, 4, 5, 6, 7, 8, 9, 10], "with its line number")
    c.eq(dl[0]["record"], lines[2].decode(), "with its original text")
    c.check("record_base64" in dl[5], "invalid UTF-8 kept as base64")
    c.eq(dl[1]["offset"], sum(len(x) + 1 for x in lines[:3]), "with its byte offset")
    c.eq((dl[7].get("truncated"), dl[7].get("original_bytes"), len(dl[7]["record"])),
         (True, len(lines[9]), 200), "a record cut at --max-record-bytes says so, with its length")
    c.check(not any("truncated" in x for x in dl[:7]), "and only that one")
    c.eq(dl[7]["offset"], sum(len(x) + 1 for x in lines[:9]), "the cut record's own offset")
    s = summary(p.stderr)
    c.eq((s["records"], s["dead"], s["invalid"], s["late"]), (11, 8, 7, 1), "summary counts")
    c.eq(s["records"], s["closed_visits"] + s["dead"], "records = visits in sessions + dead letters")
    c.eq(sorted(v for v in content(f"{d}/s.db").values()), [["A.html"], ["B.html", "C.html"]],
         "the good records still make their sessions")
    # the session cap: the earliest pages kept, the rest dead-lettered
    cap = f"{d}/cap.jsonl"
    open(cap, "wb").write(b"".join(
        b'{"user_id": 9, "page": "p%d", "event_time": "2023-02-20T03:03:%02d"}\n' % (i, 40 - i)
        for i in range(10)))
    p = job(f"file:{cap}", f"{d}/cap.db", None, "--dlq", f"jsonl:{d}/cap.dlq", "--max-pages", "4",
            "--lateness", "1m")
    c.eq(list(content(f"{d}/cap.db").values()), [["p9", "p8", "p7", "p6"]], "cap keeps the 4 earliest")
    dl = [json.loads(x) for x in open(f"{d}/cap.dlq")]
    c.eq(len(dl), 6, "and dead-letters the 6 others")
    c.check(all(x["reason"] == "session_cap" for x in dl), "with reason session_cap")


def frames(path):
    """(offset, length) of each frame of a checkpoint log (docs/checkpoint.md)."""
    data = open(path, "rb").read()
    at, out = 24, []
    while at + 24 <= len(data):
        n = 24 + int.from_bytes(data[at + 4:at + 8], "little")
        out.append((at, n))
        at += n
    return out


def flip(path, at):
    data = bytearray(open(path, "rb").read())
    data[at] ^= 0x10
    open(path, "wb").write(bytes(data))


def t_corrupt(c):
    d = tmpdir()
    log = f"{d}/visits.jsonl"
    generate(log, 5000, "--users", 2000, "--seed", 9)
    args = ["run", "--source", f"file:{log}", "--sink", f"sqlite:{d}/s.db", "--checkpoint", f"{d}/cp",
            "--commit-every", "1000"]
    # no --until-end: open sessions stay in the checkpoint; a snapshot after
    # the first kilobyte of log, so that there is one to damage
    env = dict(os.environ, SESSIONIZER_SNAPSHOT_MIN_BYTES="1024")
    first = subprocess.run([BIN, *args], capture_output=True, env=env)
    c.eq(first.returncode, 0, "first run")
    open_users = summary(first.stderr)["open_sessions"]
    c.check(open_users > 100, f"the checkpoint holds open sessions ({open_users})")
    names = sorted(os.listdir(f"{d}/cp"))
    snaps = [n for n in names if n.startswith("snapshot-")]
    logs = [n for n in names if n.startswith("log-")]
    c.eq((len(snaps), len(logs)), (1, 1), f"one snapshot and the log after it: {names}")
    good = {n: open(f"{d}/cp/{n}", "rb").read() for n in snaps + logs}

    def restore_all():
        for n, data in good.items():
            open(f"{d}/cp/{n}", "wb").write(data)

    def refused(what):
        p = run(*args, check=False)
        err = p.stderr.decode()
        c.eq(p.returncode, 1, f"{what} is refused")
        c.check("corrupt" in err and "delete" in err.lower(), f"{what}: with a message naming the way out: {err.strip()[:300]}")
        restore_all()

    # the log holds frames only of the commits after the snapshot: write more
    # of them by resuming on a longer file
    with open(log, "ab") as f:
        f.write(subprocess.run([PY, GEN, "3000", "--users", "2000", "--seed", "10"],
                               capture_output=True, check=True).stdout.replace(b"2023-02-20", b"2023-02-21"))
    run(*args)
    lg = f"{d}/cp/{sorted(n for n in os.listdir(f'{d}/cp') if n.startswith('log-'))[-1]}"
    fr = frames(lg)
    c.check(len(fr) >= 3, f"several commits in the log ({len(fr)})")
    good = {n: open(f"{d}/cp/{n}", "rb").read() for n in os.listdir(f"{d}/cp") if n != "lock"}
    snap = f"{d}/cp/{[n for n in good if n.startswith('snapshot-')][0]}"
    # a bit flipped inside a commit that later commits follow
    flip(lg, fr[0][0] + fr[0][1] // 2)
    refused("a flipped bit in a logged commit")
    # a bit flipped in the snapshot
    flip(snap, len(good[os.path.basename(snap)]) // 2)
    refused("a flipped bit in the snapshot")
    # a snapshot cut short, a damaged log header
    open(snap, "wb").write(good[os.path.basename(snap)][: len(good[os.path.basename(snap)]) * 2 // 3])
    refused("a truncated snapshot")
    flip(lg, 2)
    refused("a damaged log header")
    # a missing snapshot
    os.remove(snap)
    refused("a log without its snapshot")
    # the last commit cut short (a crash during its write, before its fsync
    # returned): dropped, and the job resumes from the commit before it
    at, n = fr[-1]
    open(lg, "r+b").truncate(at + n // 2)
    p = run(*args, check=False)
    c.eq(p.returncode, 0, "a commit cut short at the end of the log is dropped")
    c.check(b"cut short by a crash" in p.stderr, "and reported: " + p.stderr.decode().strip()[:300])
    restore_all()
    # a format this version does not know
    data = bytearray(good[os.path.basename(snap)])
    data[4] = 9
    open(snap, "wb").write(bytes(data))
    p = run(*args, check=False)
    c.eq(p.returncode, 1, "a newer format is refused")
    c.check(b"newer version" in p.stderr and b"delete" in p.stderr, "naming the way out: " + p.stderr.decode().strip()[:300])
    restore_all()
    p = run(*args, check=False)
    c.eq(p.returncode, 0, "the undamaged checkpoint resumes")
    # the settings it was written with are enforced
    shutil.rmtree(f"{d}/cp")
    run(*args)
    p = run(*args, "--gap", "30s", check=False)
    c.eq(p.returncode, 1, "another --gap is refused")
    c.check(b"--gap" in p.stderr, "naming the setting")
    p = run("run", "--source", f"file:{SAMPLE}", "--sink", f"sqlite:{d}/s.db", "--checkpoint", f"{d}/cp",
            check=False)
    c.eq(p.returncode, 1, "another source is refused")
    c.check(b"belongs to the source" in p.stderr, "saying whose checkpoint it is")
    # the same file spelt another way is the same log: the checkpoint is bound
    # to the log, not to the URI (a symlink, a relative path)
    os.symlink(log, f"{d}/link.jsonl")
    p = run("run", "--source", f"file:{d}/link.jsonl", "--sink", f"sqlite:{d}/s.db",
            "--checkpoint", f"{d}/cp", check=False)
    c.eq(p.returncode, 0, "the same file through a symlink resumes the checkpoint")
    p = subprocess.run([BIN, "run", "--source", "file:./visits.jsonl", "--sink", "sqlite:s.db",
                        "--checkpoint", "cp"], cwd=d, capture_output=True)
    c.eq(p.returncode, 0, "and by a relative path")
    c.check(b"resumed from checkpoint" in p.stderr, "resuming, not starting over")
    # two jobs on one checkpoint
    holder = subprocess.Popen([BIN, *args[:-2], "--checkpoint", f"{d}/cp2", "--source", "-"],
                              stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20  # the holder has the lock once its log exists
    while time.time() < deadline and not os.path.exists(f"{d}/cp2/log-0000000000000000"):
        time.sleep(0.05)
    p = run(*args[:-2], "--checkpoint", f"{d}/cp2", check=False)
    holder.stdin.close()
    holder.wait()
    c.eq(p.returncode, 1, "a checkpoint in use is refused")
    c.check(b"in use" in p.stderr, "saying it is in use")


def t_upgrade(c):
    """A checkpoint of the previous format (tests/fixtures/checkpoint-v1, written
    by the version before this one) is resumed: the table, dead letters and
    counts end as one uninterrupted run's, and the checkpoint is now format 2."""
    d = tmpdir()
    fx = os.path.join(ROOT, "tests", "fixtures", "checkpoint-v1")
    shutil.copytree(fx, f"{d}/fx")
    data = open(f"{fx}/visits.jsonl", "rb").read()
    # format 1 had no --max-session-bytes: its checkpoints resume with 1GiB
    ref = run("run", "--source", "-", "--sink", f"sqlite:{d}/ref.db", "--dlq", f"jsonl:{d}/ref.dlq",
              "--max-pages", "20", "--max-session-bytes", "1GiB", "--until-end", stdin=data)
    args = ["run", "--source", "-", "--sink", f"sqlite:{d}/fx/sessions.db", "--checkpoint", f"{d}/fx/checkpoint",
            "--dlq", f"jsonl:{d}/fx/deadletter.jsonl", "--max-pages", "20", "--max-session-bytes", "1GiB"]
    p = run(*args, "--gap", "40s", check=False, stdin=data)
    c.eq(p.returncode, 1, "the old checkpoint's settings are still enforced")
    c.check(b"--gap" in p.stderr, "naming them")
    p = run(*args, "--until-end", stdin=data)
    c.check(b"resumed from checkpoint" in p.stderr, "the format-1 checkpoint is resumed")
    c.eq(content(f"{d}/fx/sessions.db"), content(f"{d}/ref.db"), "the table of an uninterrupted run")
    import json

    def dead(path):  # the old version words some details differently
        return [{k: v for k, v in json.loads(x).items() if k != "detail"} for x in open(path, "rb")]
    c.eq(dead(f"{d}/fx/deadletter.jsonl"), dead(f"{d}/ref.dlq"), "the dead letters of an uninterrupted run")
    s, r = summary(p.stderr), summary(ref.stderr)
    c.eq(s, r, "the counts of an uninterrupted run")
    names = os.listdir(f"{d}/fx/checkpoint")
    c.check("checkpoint.db" not in names and any(n.startswith("snapshot-") for n in names),
            f"the checkpoint was rewritten in format 2: {sorted(names)}")
    p = run(*args, "--until-end", stdin=data)
    c.check(b"resumed from checkpoint" in p.stderr, "and resumes in format 2")
    c.eq(summary(p.stderr), r, "with nothing left to do")
    # format 1 knew nothing of output identities (and its dead-letter file
    # state has no inode): the upgraded checkpoint is bound to its outputs
    other = [a if not a.startswith("sqlite:") else f"sqlite:{d}/other.db" for a in args]
    p = run(*other, "--until-end", stdin=data, check=False)
    c.eq(p.returncode, 1, "after the upgrade, another sink is refused")
    c.check(b"was written for the sink" in p.stderr, "naming it: " + p.stderr.decode().strip()[:200])


def own_peak(args, env=None):
    """(returncode, stderr, the job's own peak resident size): VmHWM at its
    end, as --stats reports it (polling /proc/PID/status missed the peak of a
    short run that exited between two looks; wait4()'s maxrss also counts
    what this Python process held when it forked the job)."""
    import re
    args = [a for a in args if a not in ("-q", "--quiet")]  # --stats speaks at info
    p = subprocess.run([BIN, *args, "--stats"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    m = re.search(rb"peak resident memory ([0-9.]+) MiB", p.stderr)
    assert m, f"no peak in --stats: {p.stderr.decode()[-500:]}"
    return p.returncode, p.stderr, int(float(m.group(1)) * 1048576)


def t_memory_limit(c):
    """Past --memory-limit the job commits and stops with a message naming the
    option, its resident memory near the limit; a restart with room resumes
    from that checkpoint and writes every session once."""
    import json
    d = tmpdir()
    n = 200000
    subprocess.run([PY, os.path.join(ROOT, "bench", "gen_open.py"), str(n), "--out", f"{d}/open.jsonl"],
                   check=True)
    _, _, base = own_peak(["run", "--source", f"file:{SAMPLE}", "--sink", "null:", "--dlq", f"jsonl:{d}/dl.jsonl",
                           "-q"])  # the job on nothing
    # The job's engine gets ~3 MiB of it (docs/checkpoint.md, "Memory
    # limit"): spilling cannot hold 200k open sessions, whose cold users alone
    # take ~65 bytes each, so the job stops part of the way
    limit = base + 8 * 1024 * 1024
    args = ["run", "--source", f"file:{d}/open.jsonl", "--sink", f"jsonl:{d}/out.jsonl",
            "--checkpoint", f"{d}/cp", "--commit-every", "20000"]
    rc, err_b, peak = own_peak([*args, "--memory-limit", str(limit)])
    err = err_b.decode()
    c.eq(rc, 1, "past the budget the job stops with status 1")
    c.check("--memory-limit" in err and "checkpoint is intact" in err, f"naming the option: {err.strip()[:300]}")
    if "ASAN_OPTIONS" in os.environ:
        # AddressSanitizer's shadow memory and quarantine are not the job's:
        # the peak is checked in the normal build only
        print(f"memory_limit: peak {peak >> 20} MiB under ASan, limit {limit >> 20} MiB (not checked)")
    else:
        c.check(peak <= limit + 4 * 1024 * 1024,
                f"resident memory stayed near the limit ({peak >> 20} MiB, limit {limit >> 20} MiB)")
    s = summary(err_b)
    c.check(0 < s["records"] < n, f"stopped part of the way ({s['records']} records)")
    p = run(*args, "--until-end", "--memory-limit", "8GiB")
    c.check(b"resumed from checkpoint" in p.stderr, "a restart with room resumes the checkpoint")
    ids = [json.loads(x)["session_id"] for x in open(f"{d}/out.jsonl", "rb")]
    c.eq((len(ids), len(set(ids))), (n, n), "and every session is written once")


def t_spill(c):
    """State larger than memory: with --memory-limit well below the open state
    the job spills cold users to disk and reads them back (issue 12). The
    table equals an unlimited run's, also across SIGKILLs (restores then evict
    as they load, and snapshots read spilled users back), and resident memory
    stays under the limit (a coarse bound: the figures are bench/durable.py's)."""
    d = tmpdir()
    log = f"{d}/visits.jsonl"
    asan = "ASAN_OPTIONS" in os.environ
    # 12k users visiting every ~10 s of event time, gap 50 s: ~10 pages each,
    # all open together (a third under the sanitizers, which are slower)
    n = 40000 if asan else 120000
    generate(log, n, "--users", n // 10, "--seed", 4, "--rate", n // 100)

    def peak_of(args):
        rc, err, hwm = own_peak(args)
        c.eq(rc, 0, f"{args[4]} exits 0: {err.decode()[-300:]}")
        return hwm, err

    base, _ = peak_of(["run", "--source", f"file:{SAMPLE}", "--sink", "null:", "--dlq", f"jsonl:{d}/x.jsonl"])
    limit = base + 10 * 1024 * 1024  # about 2/3 of the unlimited run's state
    common = ["run", "--source", f"file:{log}", "--until-end", "--commit-every", "20000"]
    env = dict(os.environ, SESSIONIZER_SNAPSHOT_MIN_BYTES="300000")  # snapshots of spilled users
    if asan:
        # the sanitizers' shadow memory and quarantine are not the job's: the
        # engine's budget is set directly, the same eviction path
        env["SESSIONIZER_SPILL_BUDGET"] = str(1 << 20)
        limit = 8 << 30
    run(*common, "--sink", f"sqlite:{d}/ref.db", "--checkpoint", f"{d}/cpr", "--memory-limit", "8GiB")
    ref = content(f"{d}/ref.db")
    unlimited, _ = peak_of([*common, "--sink", "null:", "--checkpoint", f"{d}/cpn", "--memory-limit", "8GiB"])
    # About 2/3 of the state: cold users take ~75-110 bytes each out of the user
    # table, the frames of a commit are bounded (docs/checkpoint.md), so the
    # run completes, every spilled user read back.
    rc, err, peak = own_peak([*common, "--sink", "null:", "--checkpoint", f"{d}/cpm", "--memory-limit", str(limit)],
                             env)
    c.eq(rc, 0, f"the run at the limit completes: {err.decode()[-300:]}")
    import re
    m = re.search(rb"(\d+) times a user's sessions were spilled to disk and (\d+) read back.*?"
                  rb"(\d+) visits kept for users on disk without reading them back \((\d+) new users'", err)
    c.check(m is not None and int(m.group(1)) > n // 20 and int(m.group(2)) == int(m.group(1)) + int(m.group(4))
            and int(m.group(3)) > n // 20,
            f"users were spilled, visits kept for them, and all read back (new users made cold at "
            f"once too): {m.group(0).decode() if m else err.decode()[-300:]}")
    if asan:
        print(f"spill: peak {peak >> 20} MiB under ASan (not checked)")
    else:
        # coarse: the job looks every 4096 records (docs/checkpoint.md)
        c.check(peak <= limit + (4 << 20) and limit < unlimited and peak + (2 << 20) < unlimited,
                f"resident memory near the limit, below the unlimited run's ({peak >> 20} MiB, "
                f"limit {limit >> 20} MiB, unlimited run {unlimited >> 20} MiB)")
    # Into SQLite, whose page cache and buffered rows take memory the null:
    # run does not: the engine's budget is set directly (2 MiB, about a sixth
    # of the state) so that no resident-size stop can interfere, the same
    # eviction path as the limit's
    env_sq = dict(env, SESSIONIZER_SPILL_BUDGET=str(2 << 20))
    lim = [*common, "--sink", f"sqlite:{d}/lim.db", "--checkpoint", f"{d}/cpl", "--memory-limit", "8GiB"]
    t0 = time.time()
    p = subprocess.run([BIN, *lim], capture_output=True, env=env_sq)
    wall = time.time() - t0
    c.eq(p.returncode, 0, f"the limited run into SQLite completes: {p.stderr.decode()[-400:]}")
    c.eq(content(f"{d}/lim.db"), ref, "its table equals the unlimited run's")
    os.mkdir(f"{d}/k")
    c.check(b"spilled to disk" in p.stderr, "and spilled")
    saved = dict(os.environ)
    os.environ.update(env_sq)
    try:
        kills, err = run_with_kills([*common, "--sink", f"sqlite:{d}/k/s.db", "--checkpoint", f"{d}/k/cp",
                                     "--memory-limit", "8GiB"], random.Random(5), 0.7 * wall)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    c.check(kills >= 1, f"the limited job was killed mid-run ({kills} kills)")
    c.eq(content(f"{d}/k/s.db"), ref, f"after {kills} SIGKILLs the table equals the unlimited run's")
    c.eq(summary(err)["records"], n, "every record counted once across restarts")
    print(f"spill: peak {peak >> 20} MiB (limit {limit >> 20} MiB, unlimited {unlimited >> 20} MiB), {kills} kills")


def t_cli(c):
    d = tmpdir()
    p = run("--help")
    c.check(b"--source" in p.stdout and b"sqlite:PATH" in p.stdout, "--help lists options and sinks")
    p = run("--version")
    c.check(p.stdout.startswith(b"sessionizer "), "--version")
    for args, needle in [(["run", "--sink", "null:"], b"--source is required"),
                         (["run", "--source", "-"], b"--sink is required"),
                         (["run", "--source", "-", "--sink", "null:", "--gap", "fifty"], b"fifty"),
                         (["run", "--source", "-", "--sink", "null:", "--bogus"], b"bogus"),
                         (["frobnicate"], b"frobnicate")]:
        p = run(*args, check=False)
        c.eq(p.returncode, 2, f"usage error exits 2: {args}")
        c.check(needle in p.stderr, f"and names the problem: {p.stderr[:200]!r}")
    p = run("run", "--source", f"file:{SAMPLE}", "--sink", "null:", "--until-end", "--stats",
            "--dlq", f"jsonl:{d}/dlq.jsonl")
    c.check(b"close-to-ack latency over 3 sessions: p50 " in p.stderr, "--stats reports the latency of the 3 sessions")
    p = run("run", "--source", f"file:{d}/missing.jsonl", "--sink", "null:", "--dlq",
            f"jsonl:{d}/dlq.jsonl", check=False)
    c.eq(p.returncode, 1, "missing input exits 1")
    c.check(f"{d}/missing.jsonl".encode() in p.stderr, "naming the file")
    p = run("run", "--source", "-", "--sink", "oracle:xyz", "--dlq", f"jsonl:{d}/dlq.jsonl",
            check=False, stdin=b"")
    c.check(p.returncode == 1 and b"unknown sink" in p.stderr, "unknown sink named")
    p = run("run", "--source", "-", "--sink", f"sqlite:{d}/nodir/x.db", "--dlq",
            f"jsonl:{d}/dlq.jsonl", check=False, stdin=b"")
    c.check(p.returncode == 1 and b"nodir" in p.stderr, "unwritable sink named")


def t_stdin(c):
    d = tmpdir()
    log = f"{d}/visits.jsonl"
    generate(log, 5000, "--users", 100, "--bad", 0.01, "--seed", 4)
    job(f"file:{log}", f"{d}/a.db")
    data = open(log, "rb").read()
    job("-", f"{d}/b.db", stdin=data)
    c.eq(content(f"{d}/b.db"), content(f"{d}/a.db"), "stdin gives the same table as the file")
    # stdin with a checkpoint: the replayed stream is skipped up to the saved position
    half = data[: len(data) // 2]
    half = half[: half.rfind(b"\n") + 1]
    run("run", "--source", "-", "--sink", f"sqlite:{d}/c.db", "--checkpoint", f"{d}/cp", "-q", stdin=half)
    run("run", "--source", "-", "--sink", f"sqlite:{d}/c.db", "--checkpoint", f"{d}/cp", "-q",
        "--until-end", stdin=data)
    c.eq(content(f"{d}/c.db"), content(f"{d}/a.db"), "stdin resumed from a checkpoint")
    # JSONL sink to stdout
    p = run("run", "--source", f"file:{SAMPLE}", "--sink", "jsonl:-", "--until-end", "-q",
            "--dlq", f"jsonl:{d}/dlq.jsonl")
    import json
    rows = {(r["session_id"], r["user_id"]): r["pages"] for r in map(json.loads, p.stdout.splitlines())}
    c.eq(rows, GOLDEN, "jsonl:- prints the sessions")


def t_sigterm(c):
    d = tmpdir()
    log = f"{d}/visits.jsonl"
    generate(log, 200000, "--users", 5000, "--seed", 8)
    run("run", "--source", f"file:{log}", "--sink", f"sqlite:{d}/ref.db", "--until-end", "-q",
        "--dlq", f"jsonl:{d}/ref.dlq")
    args = ["run", "--source", f"file:{log}", "--sink", f"sqlite:{d}/s.db", "--checkpoint", f"{d}/cp",
            "--until-end", "--commit-every", "5000"]
    p = subprocess.Popen([BIN, *args], stderr=subprocess.PIPE)
    # mid-run: once the checkpoint directory has something in it (the job
    # creates it after installing its handlers), not at a fixed instant that
    # a slow start (a loaded machine, ASan) can precede
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None and not (
            os.path.isdir(f"{d}/cp") and os.listdir(f"{d}/cp")):
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    err = p.stderr.read()
    p.wait()
    c.eq(p.returncode, 0, "SIGTERM exits 0 after the commit in flight")
    stopped = b"stopped by signal" in err
    c.check(stopped or b"records/s" in err, "and says so")
    run(*args, "-q")
    c.eq(content(f"{d}/s.db"), content(f"{d}/ref.db"), "the resumed run completes the same table")


def t_resume_open(c):
    """Open sessions survive in the checkpoint between bounded runs."""
    d = tmpdir()
    first = f"{d}/a.jsonl"
    open(first, "wb").write(open(SAMPLE, "rb").read().split(b"\n", 2)[0] + b"\n")  # visit A only
    args = ["run", "--source", f"file:{first}", "--sink", f"sqlite:{d}/s.db", "--checkpoint", f"{d}/cp", "-q"]
    run(*args)
    c.eq(content(f"{d}/s.db"), {}, "A alone: session still open, nothing written")
    with open(first, "ab") as f:
        f.write(b"\n".join(open(SAMPLE, "rb").read().split(b"\n")[1:]))
    run(*args, "--until-end")
    c.eq(content(f"{d}/s.db"), GOLDEN, "after appending B, C, D: the walkthrough's table")


def t_torn(c):
    """A crash in the middle of a write leaves a JSONL output without its
    final newline; the next run removes the torn line before appending. A
    last line of another writer is kept."""
    import json
    d = tmpdir()
    out, dlq = f"{d}/out.jsonl", f"{d}/dlq.jsonl"
    open(out, "wb").write(b'{"session_id":1,"user_id":1,"pages":[],"ingestion_time":"x"}\n{"session_id":2,"us')
    open(dlq, "wb").write(b'{"reason":"late"')
    bad = f"{d}/bad.jsonl"
    open(bad, "wb").write(open(SAMPLE, "rb").read() + b"not json\n")
    p = run("run", "--source", f"file:{bad}", "--sink", f"jsonl:{out}", "--dlq", f"jsonl:{dlq}", "--until-end")
    c.check(b"cut short by a crash" in p.stderr, "the repair is reported")
    rows = [json.loads(x) for x in open(out)]
    c.eq(len(rows), 4, "the intact line and the three sessions remain, every line valid JSON")
    c.eq([json.loads(x)["reason"] for x in open(dlq)], ["invalid_json"], "the dead-letter file too")
    # a last line that sessionizer did not write is another writer's: kept
    notes = f"{d}/notes.txt"
    open(notes, "wb").write(b"first\nlast line, no newline")
    p = run("run", "--source", f"file:{bad}", "--sink", "null:", "--dlq", f"jsonl:{notes}", "--until-end")
    c.check(b"not written by sessionizer" in p.stderr, "a foreign last line is reported as kept")
    got = open(notes, "rb").read().split(b"\n")
    c.eq(got[:2], [b"first", b"last line, no newline"], "and kept whole")
    c.eq([json.loads(x)["reason"] for x in got[2:] if x], ["invalid_json"],
         "the dead letters start on a line of their own")


def t_idle(c):
    """A quiet pipe: sessions closed before the pause are written during it."""
    d = tmpdir()
    lines = open(SAMPLE, "rb").read().splitlines(keepends=True)
    # D is 1h50m after C: beyond --max-future's default hour, it would wait
    # for the next visit to confirm it (docs/semantics.md) before closing C
    p = subprocess.Popen([BIN, "run", "--source", "-", "--sink", f"sqlite:{d}/s.db", "--checkpoint",
                          f"{d}/cp", "--commit-interval", "200ms", "--max-future", "2h", "-q"],
                         stdin=subprocess.PIPE)
    p.stdin.write(b"".join(lines))  # D closes A-B and C; D's session stays open
    p.stdin.flush()
    deadline = time.time() + 10
    rows = {}
    while time.time() < deadline and len(rows) < 2:
        time.sleep(0.1)
        try:
            rows = content(f"{d}/s.db")
        except sqlite3.Error:
            pass
    c.eq(rows, {k: v for k, v in GOLDEN.items() if k[1] == 1},
         "the closed sessions are written while the producer pauses, stdin still open")
    p.stdin.close()
    c.eq(p.wait(timeout=10), 0, "end of input ends the run")


def t_sqlite_paths(c):
    """Names SQLite does not read as the file they spell: an empty path, an
    in-memory database, a URI. Each would lose every row while exiting 0, or
    (the checkpoint) put the database away from its lock."""
    d = tmpdir()
    dlq = f"{tmpdir()}/dlq.jsonl"
    for target, needle in [("", b"no database file"), (":memory:", b"in-memory"),
                           ("file:x?mode=memory", b"URI"), ("file:out.db", b"URI")]:
        p = subprocess.run([BIN, "run", "--source", f"file:{SAMPLE}", "--sink", f"sqlite:{target}",
                            "--until-end", "--dlq", f"jsonl:{dlq}"], cwd=d, capture_output=True)
        c.eq(p.returncode, 1, f"sqlite:{target} is refused")
        c.check(needle in p.stderr and b"sqlite:" in p.stderr,
                f"saying why and what to write: {p.stderr.decode().strip()[:300]}")
    c.eq(sorted(os.listdir(d)), [], "and nothing was created")
    # the spelling that means a file of that name works, and is that file
    p = subprocess.run([BIN, "run", "--source", f"file:{SAMPLE}", "--sink", "sqlite:./file:out.db",
                        "--until-end", "-q", "--dlq", f"jsonl:{dlq}"], cwd=d, capture_output=True)
    c.eq(p.returncode, 0, "sqlite:./file:out.db is accepted")
    c.eq(content(f"{d}/file:out.db"), GOLDEN, "and writes the file named file:out.db")

    # --checkpoint file:ck: refused before a lock or a database is made
    args = [BIN, "run", "--source", "-", "--sink", "null:", "--checkpoint"]
    p = subprocess.run([*args, "file:ck"], cwd=d, capture_output=True, stdin=subprocess.DEVNULL)
    c.eq(p.returncode, 1, "--checkpoint file:ck is refused")
    c.check(b"./file:ck" in p.stderr, f"naming the spelling to use: {p.stderr.decode().strip()[:300]}")
    c.eq(sorted(os.listdir(d)), ["file:out.db"], "without creating file:ck/ or ck/")
    # ./file:ck holds both the lock and the database, so a second job is refused
    holder = subprocess.Popen([*args, "./file:ck"], cwd=d, stdin=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline and not os.path.exists(f"{d}/file:ck/log-0000000000000000"):
        time.sleep(0.05)
    p = subprocess.run([*args, "./file:ck"], cwd=d, capture_output=True, stdin=subprocess.DEVNULL)
    holder.stdin.close()
    holder.wait(timeout=30)
    c.eq(p.returncode, 1, "a second job on ./file:ck is refused")
    c.check(b"in use" in p.stderr, "by the lock: " + p.stderr.decode().strip()[:300])
    c.eq(sorted(os.listdir(f"{d}/file:ck")), ["deadletter.jsonl", "lock", "log-0000000000000000"],
         "the checkpoint's files live next to its lock (and the dead letters)")
    c.check(not os.path.exists(f"{d}/ck"), "and nothing went to ./ck")


def t_outputs(c):
    """A checkpoint is bound to its outputs: resuming it into another sink or
    dead-letter output is refused with the way out, and a file it did not
    write is never cut."""
    d = tmpdir()
    half = f"{d}/half.jsonl"
    lines = open(SAMPLE, "rb").read().splitlines(keepends=True)
    open(half, "wb").write(b"".join(lines[:3]))  # A, B, C: C's session stays open
    important = f"{d}/important.log"
    precious = os.urandom(48893) + b"x"  # 48,894 bytes, no final newline
    open(important, "wb").write(precious)
    base = ["run", "--source", f"file:{half}", "--checkpoint", f"{d}/cp", "-q"]
    run(*base, "--sink", f"jsonl:{d}/out.jsonl", "--dlq", f"jsonl:{d}/dlq.jsonl")
    out_before = open(f"{d}/out.jsonl", "rb").read()
    c.check(len(out_before) > 0, "the first run wrote sessions")

    for flag, other, needle in [("--sink", f"jsonl:{important}", f"jsonl:{d}/out.jsonl"),
                                ("--dlq", f"jsonl:{important}", f"jsonl:{d}/dlq.jsonl"),
                                ("--sink", f"sqlite:{d}/s.db", f"jsonl:{d}/out.jsonl")]:
        args = {"--sink": f"jsonl:{d}/out.jsonl", "--dlq": f"jsonl:{d}/dlq.jsonl"}
        args[flag] = other
        p = run(*base, "--sink", args["--sink"], "--dlq", args["--dlq"], check=False)
        err = p.stderr.decode()
        c.eq(p.returncode, 1, f"resuming with {flag} {other} is refused")
        c.check(needle in err and flag in err and "--checkpoint" in err,
                f"naming the output it was written for, the flag and the new-checkpoint way out: {err.strip()[:400]}")
        c.check(open(important, "rb").read() == precious, f"and {important} is untouched ({flag})")
    c.eq(open(f"{d}/out.jsonl", "rb").read(), out_before, "the checkpoint's own output is untouched too")

    # the same file under another spelling is the same output
    os.symlink(f"{d}/out.jsonl", f"{d}/link.jsonl")
    p = subprocess.run([BIN, "run", "--source", "file:half.jsonl", "--checkpoint", "cp",
                        "--sink", "jsonl:link.jsonl", "--dlq", "jsonl:./dlq.jsonl"], cwd=d,
                       capture_output=True)
    c.eq(p.returncode, 0, "a symlink and relative paths to the same files resume")
    c.check(b"resumed from checkpoint" in p.stderr, "resuming, not starting over")

    # another file under the same name (replaced since): refused, left whole
    os.rename(f"{d}/out.jsonl", f"{d}/moved.jsonl")
    other = b'{"note":"another file, longer than the checkpointed length ' + b"x" * 400 + b'"}\n'
    open(f"{d}/out.jsonl", "wb").write(other)
    p = run(*base, "--sink", f"jsonl:{d}/out.jsonl", "--dlq", f"jsonl:{d}/dlq.jsonl", check=False)
    c.eq(p.returncode, 1, "a file replaced under the checkpointed name is refused")
    c.check(b"replaced" in p.stderr and b"--checkpoint" in p.stderr,
            "saying so, with the way out: " + p.stderr.decode().strip()[:300])
    c.eq(open(f"{d}/out.jsonl", "rb").read(), other, "and is not cut")
    os.remove(f"{d}/out.jsonl")
    os.rename(f"{d}/moved.jsonl", f"{d}/out.jsonl")

    # the way out: a new checkpoint appends to important.log and cuts nothing
    run(*base[:-3], "--checkpoint", f"{d}/cp-new", "--until-end", "-q", "--sink", f"jsonl:{important}")
    data = open(important, "rb").read()
    c.check(data.startswith(precious), "a new checkpoint keeps important.log's bytes")
    import json
    tail = data[len(precious):].split(b"\n")
    c.check(tail[0] == b"" and all(json.loads(x)["session_id"] for x in tail[1:] if x),
            "and starts its lines on a line of their own (the file did not end with a newline)")

    # a checkpoint from before output identities (format 1: no sink_id, no
    # deadletter_id, 12-byte file states) resumes as it did then, and is bound
    # from its next commit: core.upgrade, on tests/fixtures/checkpoint-v1


LOG_LINE = __import__("re").compile(
    rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info|warn|error) [a-z]+: \S")


def t_logs(c):
    """Every line on stderr is a log line with a time and a level, dead letters
    are not among them by default, --log-format json gives JSON objects."""
    import json
    d = tmpdir()
    log = f"{d}/visits.jsonl"
    generate(log, 3000, "--users", 50, "--bad", 0.05, "--disorder", 30, "--seed", 5)
    n_bad = sum(1 for _ in open(log, "rb"))
    p = run("run", "--source", f"file:{log}", "--sink", f"sqlite:{d}/s.db", "--checkpoint", f"{d}/cp",
            "--until-end", "--progress")
    lines = p.stderr.splitlines()
    c.check(len(lines) >= 1 and all(LOG_LINE.match(x) for x in lines),
            f"every stderr line is a log line: {[x for x in lines if not LOG_LINE.match(x)][:3]}")
    s = summary(p.stderr)
    c.check(s["dead"] > 0, f"the input has dead letters ({s['dead']})")
    dl = [json.loads(x) for x in open(f"{d}/cp/deadletter.jsonl", "rb")]
    c.eq(len(dl), s["dead"], "with --checkpoint DIR and no --dlq they go to DIR/deadletter.jsonl")
    c.check(not any(b'"reason"' in x for x in lines), "and none to stderr")
    c.check(any(b" info sessionizer: " + str(n_bad).encode() + b" records: " in x for x in lines),
            "the summary is an info line")
    # the default file is bound to the checkpoint directory: moved whole, it resumes
    os.rename(f"{d}/cp", f"{d}/moved")
    p = run("run", "--source", f"file:{log}", "--sink", f"sqlite:{d}/s.db", "--checkpoint", f"{d}/moved",
            "--until-end")
    c.check(b"resumed from checkpoint" in p.stderr, "a renamed checkpoint directory resumes")
    # JSON
    p = run("run", "--source", f"file:{log}", "--sink", "null:", "--dlq", f"jsonl:{d}/j.dlq",
            "--until-end", "--log-format", "json", "--progress")
    objs = [json.loads(x) for x in p.stderr.splitlines()]
    c.check(objs and all(set(o) >= {"time", "level", "msg"} and o["level"] in ("info", "warn")
                         and LOG_LINE.match(f"{o['time']} {o['level']} x: y".encode()) for o in objs),
            f"--log-format json: one object per line with time, level, msg: {objs[:2]}")
    c.check(any(o.get("component") == "sessionizer" and " records: " in o["msg"] for o in objs),
            "the summary among them")
    # no --dlq and no --checkpoint: refused before anything is read
    p = run("run", "--source", f"file:{log}", "--sink", f"sqlite:{d}/t.db", check=False)
    c.eq(p.returncode, 2, "no --dlq and no --checkpoint is a usage error")
    c.check(b"--dlq is required" in p.stderr and LOG_LINE.match(p.stderr),
            f"saying so in a log line: {p.stderr[:200]!r}")
    c.check(not os.path.exists(f"{d}/t.db"), "before opening the sink")
    # an explicit jsonl:stderr still works: the user chose to mix them
    p = run("run", "--source", f"file:{log}", "--sink", "null:", "--dlq", "jsonl:stderr", "--until-end")
    c.eq(sum(1 for x in p.stderr.splitlines() if x.startswith(b'{"reason"')), s["dead"],
         "--dlq jsonl:stderr still writes them to stderr when asked")
    p = run("run", "--source", "-", "--sink", "null:", "--log-format", "yaml", check=False)
    c.eq(p.returncode, 2, "--log-format yaml is refused")


def mounted_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)
    import atexit
    atexit.register(subprocess.run, ["umount", "-l", path])


def t_diskfull(c):
    """A full disk under the checkpoint or the sink stops the job cleanly with
    the last good checkpoint intact; a read-only one is refused clearly.
    Needs root to mount a small tmpfs (CI runs as root)."""
    d = tmpdir()
    log = f"{d}/visits.jsonl"
    generate(log, 150000, "--users", 50000, "--seed", 12)
    run("run", "--source", f"file:{log}", "--sink", f"sqlite:{d}/ref.db", "--until-end", "-q",
        "--dlq", f"jsonl:{d}/ref.dlq")
    ref = content(f"{d}/ref.db")

    # 1. the checkpoint's disk fills up
    small = f"{d}/small"
    mounted_tmpfs(small, "1m")
    # (dead letters outside it: the copy below would be another file)
    args = ["run", "--source", f"file:{log}", "--sink", f"sqlite:{d}/s.db", "--until-end",
            "--commit-every", "5000", "--dlq", f"jsonl:{d}/dl.jsonl"]
    p = run(*args, "--checkpoint", f"{small}/cp", check=False)
    err = p.stderr.decode()
    c.eq(p.returncode, 1, "a full checkpoint disk stops the job with status 1")
    c.check("full" in err and "intact" in err, f"saying the disk is full and the checkpoint intact: {err.strip()[:300]}")
    shutil.copytree(f"{small}/cp", f"{d}/cp", ignore=shutil.ignore_patterns("lock"))
    p = run(*args, "--checkpoint", f"{d}/cp", "-q", check=False)
    c.eq(p.returncode, 0, "the last good checkpoint resumes on a disk with room")
    c.eq(content(f"{d}/s.db"), ref, "and completes the table of an uninterrupted run")

    # 2. the sink's disk fills up
    sinkdir = f"{d}/sinkdisk"
    mounted_tmpfs(sinkdir, "2m")
    args = ["run", "--source", f"file:{log}", "--until-end", "--commit-every", "5000",
            "--checkpoint", f"{d}/cp2"]
    p = run(*args, "--sink", f"sqlite:{sinkdir}/s.db", check=False)
    c.eq(p.returncode, 1, "a full sink disk stops the job with status 1")
    c.check(b"full" in p.stderr, "saying the disk is full: " + p.stderr.decode().strip()[:300])
    # space is freed (the checkpoint is bound to this database: a copy
    # elsewhere would be another sink, see t_outputs)
    subprocess.run(["mount", "-o", "remount,size=64m", sinkdir], check=True)
    run(*args, "--sink", f"sqlite:{sinkdir}/s.db", "-q")
    c.eq(content(f"{sinkdir}/s.db"), ref, "resuming once space is freed completes the same table")

    # 3. a read-only checkpoint
    ro = f"{d}/ro"
    mounted_tmpfs(ro, "4m")
    run("run", "--source", f"file:{SAMPLE}", "--sink", "null:", "--checkpoint", f"{ro}/cp", "-q")
    subprocess.run(["mount", "-o", "remount,ro", ro], check=True)
    p = run("run", "--source", f"file:{SAMPLE}", "--sink", "null:", "--checkpoint", f"{ro}/cp", check=False)
    c.eq(p.returncode, 1, "a read-only checkpoint is refused")
    c.check(b"checkpoint" in p.stderr and b"read-only" in p.stderr.lower() or b"readonly" in p.stderr.lower(),
            "saying so: " + p.stderr.decode().strip()[:300])


def nested_log(src, dst, rnd, user_type="int"):
    """Rewrites a generated log into another layout: the user at
    /event/user/id, the page at /ctx/url, the time as epoch milliseconds
    (a number, sometimes a numeric string) at /ts, with other fields around.
    Lines that are not visits stay as they are (they stay bad)."""
    out = []
    for raw in open(src, "rb").read().split(b"\n")[:-1]:
        v = oracle.parse_line(raw)
        if v is None:
            out.append(raw)
            continue
        u, t_us, page = v
        ms = t_us // 1000
        user = u if user_type == "int" else f"u-{u:08x}-{u * 7919 % 65536:04x}"
        rec = {"v": 2, "event": {"kind": "view", "user": {"name": "n", "id": user}, "tags": [1, None]},
               "ctx": {"url": page, "ref": {"url": "ignored"}},
               "ts": str(ms) if rnd.random() < 0.2 else ms}
        out.append(json.dumps(rec).encode())
    open(dst, "wb").write(b"\n".join(out) + b"\n")


MAPPED = ["--field", "user=/event/user/id", "--field", "page=/ctx/url", "--field", "time=/ts",
          "--time-format", "epoch_ms"]
MAPPED_LAYOUT = {"user": "/event/user/id", "page": "/ctx/url", "time": "/ts", "time_format": "epoch_ms"}


def t_mapping(c):
    d = tmpdir()
    log, mapped, db = f"{d}/visits.jsonl", f"{d}/mapped.jsonl", f"{d}/s.db"
    generate(log, 20000, "--users", 200, "--bad", 0.02, "--disorder", 20, "--seed", 5)
    nested_log(log, mapped, random.Random(5))
    p = job(f"file:{mapped}", db, f"{d}/cp", *MAPPED, "--dlq", f"jsonl:{d}/dlq.jsonl")
    rows, counts = oracle.sessions(open(mapped, "rb").read(), layout=MAPPED_LAYOUT)
    c.check(len(rows) > 100, f"a real workload ({len(rows)} sessions)")
    c.eq(content(db), rows, "nested fields, epoch ms: sessions, ids and pages equal the oracle's")
    s = summary(p.stderr)
    c.eq((s["records"], s["invalid"], s["late"], s["closed_visits"]),
         (counts["records"], counts["invalid"], counts["late"], counts["visits"]), "counts equal the oracle's")
    reasons = {json.loads(l)["reason"] for l in open(f"{d}/dlq.jsonl")}
    c.check("invalid_json" in reasons and len(reasons) >= 3, f"bad records dead-lettered with reasons {reasons}")
    # the layout is bound to the checkpoint (as are its outputs: the same --dlq)
    dlq = ["--dlq", f"jsonl:{d}/dlq.jsonl"]


    # the layout is bound to the checkpoint
    dlq = ("--dlq", f"jsonl:{d}/dlq.jsonl")  # the checkpoint's dead-letter file, every run
    p = job(f"file:{mapped}", db, f"{d}/cp", *MAPPED[:-1], "epoch_s", *dlq, check=False)
    c.eq(p.returncode, 1, "another --time-format with the same checkpoint is refused")
    err = p.stderr.decode()
    c.check("other record settings" in err and "time-format=epoch_ms" in err and "new checkpoint" in err,
            "saying what it was written with and the way out: " + err.strip()[:400])
    p = job(f"file:{mapped}", db, f"{d}/cp", *dlq, check=False)
    c.eq(p.returncode, 1, "the default layout on a mapped checkpoint is refused")
    p = job(f"file:{mapped}", db, f"{d}/cp", *MAPPED, *dlq)
    c.check(b"resumed from checkpoint" in p.stderr, "the same settings resume")
    # and a checkpoint of the default layout refuses a mapping
    job(f"file:{SAMPLE}", f"{d}/d.db", f"{d}/cp2")
    p = job(f"file:{SAMPLE}", f"{d}/d.db", f"{d}/cp2", "--field", "page=/url", check=False)
    c.check(p.returncode == 1 and b"page=/page" in p.stderr, "a default-layout checkpoint refuses --field")
    # start-up checks
    for bad, why in [(["--field", "user=userId"], b"JSON Pointer"), (["--field", "who=/x"], b"user=POINTER"),
                     (["--time-format", "epoch"], b"epoch_ms"),
                     (["--field", "user=/a", "--field", "page=/a/b"], b"inside another")]:
        p = job(f"file:{SAMPLE}", f"{d}/x.db", None, *bad, check=False)
        c.check(p.returncode == 2 and why in p.stderr, f"{bad} refused at start-up: {p.stderr.decode().strip()[:200]}")


def t_session_bytes(c):
    """One user's pages are bounded in bytes as well as in number: the
    earliest pages within --max-session-bytes are kept whatever the arrival
    order, the others dead-lettered as session_cap; a checkpoint is bound to
    the setting."""
    import json
    d = tmpdir()
    log = f"{d}/big.jsonl"
    order = list(range(30))
    random.Random(5).shuffle(order)
    with open(log, "wb") as f:
        for i in order:  # 100 KiB pages, a second apart, arriving shuffled
            page = "p%02d" % i + "x" * (100 * 1024 - 3)
            f.write(b'{"user_id": 7, "page": "%s", "event_time": "2023-02-20T03:03:%02d"}\n'
                    % (page.encode(), i))
        f.write(b'{"user_id": 8, "page": "small", "event_time": "2023-02-20T03:03:30"}\n')
    p = job(f"file:{log}", f"{d}/s.db", None, "--dlq", f"jsonl:{d}/dlq.jsonl", "--lateness", "1h",
            "--max-session-bytes", "1MiB")
    got = content(f"{d}/s.db")
    rows, counts = oracle.sessions(open(log, "rb").read(), lateness_us=3600 * 10**6,
                                   max_session_bytes=1 << 20)
    c.eq(got, rows, "the sessions equal the oracle's")
    big = [v for (sid, u), v in got.items() if u == 7][0]
    c.eq([x[:3] for x in big], ["p%02d" % i for i in range(10)],
         "the 10 earliest 100 KiB pages kept (1 MiB holds 10), whatever the arrival order")
    dl = [json.loads(x) for x in open(f"{d}/dlq.jsonl")]
    c.eq(sorted(x["reason"] for x in dl), ["session_cap"] * 20, "the 20 others dead-lettered")
    c.eq(sorted(json.loads(x["record"])["page"][:3] for x in dl), ["p%02d" % i for i in range(10, 30)],
         "each with its page")
    s = summary(p.stderr)
    c.eq((s["records"], s["capped"], s["closed_visits"]), (31, 20, 11), "summary counts")
    # the default, 8 MiB, keeps all 30 pages (3 MiB)
    p = job(f"file:{log}", f"{d}/s2.db", None, "--lateness", "1h")
    c.eq(sorted(len(v) for v in content(f"{d}/s2.db").values()), [1, 30], "the default keeps 3 MiB")
    # a checkpoint is bound to the setting, like --gap
    cp = f"{d}/cp"
    run("run", "--source", f"file:{log}", "--sink", f"sqlite:{d}/s3.db", "--checkpoint", cp,
        "--lateness", "1h", "--max-session-bytes", "1MiB")
    p = run("run", "--source", f"file:{log}", "--sink", f"sqlite:{d}/s3.db", "--checkpoint", cp,
            "--lateness", "1h", "--max-session-bytes", "2MiB", check=False)
    c.check(p.returncode != 0 and b"--max-session-bytes" in p.stderr,
            "another --max-session-bytes on the same checkpoint is refused, naming it")


def iso(us):
    """format_iso8601_us: seconds, and the microseconds only when not zero."""
    import datetime
    secs, frac = divmod(us, 1000000)
    t = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=secs)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac:06d}" if frac else "") + "Z"


ALL_COLUMNS = ["--columns", "session_start,session_end,visit_count,duration"]
STRING_LAYOUT = dict(MAPPED_LAYOUT, user_type="string")


def expected_columns(extra):
    return {k: (iso(f), iso(l), n, (l - f) // 1000) for k, (f, l, n) in extra.items()}


def t_string_users(c):
    d = tmpdir()
    log, mapped, db = f"{d}/visits.jsonl", f"{d}/mapped.jsonl", f"{d}/s.db"
    generate(log, 20000, "--users", 300, "--bad", 0.02, "--disorder", 20, "--bots", 2, "--seed", 9)
    nested_log(log, mapped, random.Random(9), user_type="string")
    args = [*MAPPED, "--user-type", "string", *ALL_COLUMNS, "--max-pages", "50"]
    p = job(f"file:{mapped}", db, f"{d}/cp", *args, "--dlq", f"jsonl:{d}/dlq.jsonl")
    extra = {}
    rows, counts = oracle.sessions(open(mapped, "rb").read(), max_pages=50, layout=STRING_LAYOUT, extra=extra)
    c.check(len(rows) > 100 and counts["capped"] > 0, f"a real workload ({len(rows)} sessions, {counts['capped']} capped)")
    c.eq(content(db), rows, "string users: sessions, ids (the string form) and pages equal the oracle's")
    con = sqlite3.connect(db)
    got = {(r[0], r[1]): tuple(r[2:]) for r in con.execute(
        "SELECT session_id, user_id, session_start, session_end, visit_count, duration FROM sessions")}
    types = {r[1]: r[2] for r in con.execute("PRAGMA table_info(sessions)")}
    con.close()
    c.eq(got, expected_columns(extra), "session_start, session_end, visit_count (capped visits too), duration")
    c.eq(types["user_id"], "TEXT", "user_id is TEXT")
    s = summary(p.stderr)
    c.eq((s["records"], s["invalid"], s["capped"]), (counts["records"], counts["invalid"], counts["capped"]),
         "counts equal the oracle's")
    # JSONL: the same rows, the user a JSON string
    p = run("run", "--source", f"file:{mapped}", "--sink", f"jsonl:{d}/s.jsonl", "--until-end", *args,
            "--dlq", "jsonl:/dev/null", "-q")
    lines = [json.loads(l) for l in open(f"{d}/s.jsonl")]
    c.eq({(r["session_id"], r["user_id"]): r["pages"] for r in lines}, rows, "JSONL rows equal the oracle's")
    c.eq({(r["session_id"], r["user_id"]): (r["session_start"], r["session_end"], r["visit_count"], r["duration"])
          for r in lines}, expected_columns(extra), "JSONL session columns")
    # SIGKILLs at random instants: string users' open sessions go through the checkpoint
    rnd = random.Random(int(os.environ.get("SEED", "13")))
    t = f"{d}/k"
    os.mkdir(t)
    short = f"{d}/short.jsonl"  # seconds under ASan too
    open(short, "wb").write(b"".join(open(mapped, "rb").readlines()[:3000]))
    rows, _ = oracle.sessions(open(short, "rb").read(), max_pages=50, layout=STRING_LAYOUT)
    kills, _ = run_with_kills(["run", "--source", f"file:{short}", "--sink", f"sqlite:{t}/s.db", "--until-end",
                               "--checkpoint", f"{t}/cp", "--commit-every", "300", "--dlq", f"jsonl:{t}/dlq",
                               *args], rnd, 1.5)
    c.eq(content(f"{t}/s.db"), rows, f"after {kills} SIGKILLs the table equals the oracle's")
    # the user type and the columns are bound to the checkpoint (a JSON-lines sink: no table to differ)
    out = ["--sink", f"jsonl:{d}/b.jsonl", "--checkpoint", f"{d}/cp3", "--dlq", "jsonl:/dev/null"]
    base = ["run", "--source", f"file:{mapped}", *out, *MAPPED, "--max-pages", "50"]
    run(*base, "--user-type", "string", *ALL_COLUMNS)
    p = run(*base, *ALL_COLUMNS, check=False)
    c.check(p.returncode == 1 and b"user-type=string" in p.stderr and b"new checkpoint" in p.stderr,
            "an int run on a string checkpoint is refused: " + p.stderr.decode().strip()[:300])
    p = run(*base, "--user-type", "string", check=False)
    c.check(p.returncode == 1 and b"column settings" in p.stderr and b"--columns" in p.stderr,
            "so are other --columns: " + p.stderr.decode().strip()[:300])
    # an int table refuses string users, saying how to get a new one
    p = job(f"file:{SAMPLE}", f"{d}/int.db")
    p = job(f"file:{mapped}", f"{d}/int.db", None, *args, check=False)
    err = p.stderr.decode()
    c.check(p.returncode == 1 and "user_id is INTEGER, expected TEXT" in err and "CREATE TABLE" in err,
            "an int table refuses string users with the DDL: " + err.strip()[:400])


def t_existing_table(c):
    d = tmpdir()
    db = f"{d}/s.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE sessions (session_id INTEGER NOT NULL, user_id INTEGER NOT NULL, "
                "pages TEXT NOT NULL, ingestion_time TEXT NOT NULL, loaded_at TEXT DEFAULT CURRENT_TIMESTAMP, "
                "note TEXT, PRIMARY KEY (session_id, user_id))")
    con.commit()
    con.close()
    job(f"file:{SAMPLE}", db)
    c.eq(content(db), GOLDEN, "extra nullable and defaulted columns are accepted")
    con = sqlite3.connect(db)
    c.check(all(r[0] for r in con.execute("SELECT loaded_at FROM sessions")), "and their defaults fill in")
    con.close()
    p = job(f"file:{SAMPLE}", db, None, "--columns", "visit_count,duration", check=False)
    err = p.stderr.decode()
    fix = "ALTER TABLE sessions ADD COLUMN visit_count INTEGER; ALTER TABLE sessions ADD COLUMN duration INTEGER"
    c.check(p.returncode == 1 and "missing column visit_count" in err and fix in err,
            "missing opt-in columns are refused with the DDL that adds them: " + err.strip()[:400])
    con = sqlite3.connect(db)
    con.executescript(fix + ";")
    con.close()
    job(f"file:{SAMPLE}", db, None, "--columns", "visit_count,duration")
    con = sqlite3.connect(db)
    c.eq(sorted(con.execute("SELECT user_id, visit_count, duration FROM sessions")),
         [(1, 1, 0), (1, 2, 6000), (2, 1, 0)], "after the DDL the columns are filled")
    con.execute("CREATE TABLE t2 (x INTEGER NOT NULL)")
    con.close()
    con = sqlite3.connect(f"{d}/bad.db")
    con.execute("CREATE TABLE sessions (session_id INTEGER, user_id INTEGER, pages TEXT, ingestion_time TEXT, "
                "must TEXT NOT NULL, PRIMARY KEY (session_id, user_id))")
    con.close()
    p = job(f"file:{SAMPLE}", f"{d}/bad.db", None, check=False)
    c.check(p.returncode == 1 and b"must is NOT NULL without a default" in p.stderr,
            "a required column the sink cannot fill is refused: " + p.stderr.decode().strip()[:300])

def t_sqlite_layout(c):
    """A new table has no key: each row sits at the rowid of its session's
    last byte offset, and a re-run rewrites those rows. Rows of another
    input whose places are taken add the unique key (session_id, user_id),
    and one session still has one row. A table with the primary key keeps
    it; a table without a key and without the sink's layout mark (made by
    hand, or by a version that placed rows at their first offset) takes the
    unique key when it is opened, and keeps its rows."""
    d = tmpdir()
    db = f"{d}/s.db"
    # user 1's first session is A.html (offset 0) and B.html (offset 70)
    placed = [(70, 9083342062386381219), (140, 2197506010493845107), (210, 6602007354676743790)]

    def layout(path):
        con = sqlite3.connect(path)
        rows = sorted(con.execute("SELECT rowid, session_id FROM sessions"))
        idx = sorted(r[0] for r in con.execute("SELECT sql FROM sqlite_master WHERE type = 'index' "
                                               "AND tbl_name = 'sessions'") if r[0])
        pk = [r[1] for r in con.execute("PRAGMA table_info(sessions)") if r[5]]
        con.close()
        return rows, idx, pk

    job(f"file:{SAMPLE}", db)
    c.eq(content(db), GOLDEN, "a new table gets the walkthrough's sessions")
    c.eq(layout(db), (placed, [], []), "at the rowids of their last offsets, with no key")
    job(f"file:{SAMPLE}", db)
    c.eq(layout(db), (placed, [], []), "a re-run rewrites the same rows in place")
    c.eq(content(db), GOLDEN, "with the same content")
    # another input, one line longer: user 1's first session ends at offset
    # 140, where the first input's second session sits
    other = f"{d}/other.jsonl"
    with open(other, "wb") as f:
        f.write(b'{"user_id": 7, "page": "X.html", "event_time": "2023-02-20T03:00:00"}\n')
        f.write(open(SAMPLE, "rb").read())
    both, _ = oracle.sessions(open(other, "rb").read())
    both.update(GOLDEN)
    for _ in range(2):
        job(f"file:{other}", db)
        rows, idx, pk = layout(db)
        c.eq(content(db), both, "another input's sessions join the table, none lost")
        c.eq(len(rows), len(both), "one row per (session_id, user_id)")
        c.check(len(idx) == 1 and "UNIQUE" in idx[0] and "(session_id, user_id)" in idx[0],
                f"the table took the key: {idx}")
    job(f"file:{SAMPLE}", db)
    c.eq((content(db), len(layout(db)[0])), (both, len(both)), "the first input again: no new rows")
    # a table with the primary key (databases made before) keeps its layout
    old = f"{d}/old.db"
    con = sqlite3.connect(old)
    con.execute("CREATE TABLE sessions (session_id INTEGER NOT NULL, user_id INTEGER NOT NULL, "
                "pages TEXT NOT NULL, ingestion_time TEXT NOT NULL, PRIMARY KEY (session_id, user_id))")
    con.close()
    for _ in range(2):
        job(f"file:{SAMPLE}", old)
        rows, idx, pk = layout(old)
        c.eq((content(old), len(rows), idx, pk), (GOLDEN, 3, [], ["session_id", "user_id"]),
             "a primary-key table is written by its key and keeps its layout")
    # no key, no mark: rows at their first offsets (the previous layout)
    prev = f"{d}/prev.db"
    con = sqlite3.connect(prev)
    con.execute("CREATE TABLE sessions (session_id INTEGER NOT NULL, user_id INTEGER NOT NULL, "
                "pages TEXT NOT NULL, ingestion_time TEXT NOT NULL)")
    con.executemany("INSERT INTO sessions (rowid, session_id, user_id, pages, ingestion_time) "
                    "VALUES (?, ?, ?, ?, '2026-12-01T00:00:00.000000Z')",
                    [(0, 9083342062386381219, 1, '["A.html","B.html"]'),
                     (140, 2197506010493845107, 1, '["C.html"]'),
                     (210, 6602007354676743790, 2, '["D.html"]')])
    con.commit()
    con.close()
    for _ in range(2):
        job(f"file:{SAMPLE}", prev)
        rows, idx, pk = layout(prev)
        c.eq((content(prev), [r[0] for r in rows]), (GOLDEN, [0, 140, 210]),
             "a table without the mark keeps its rows where they are, one per session")
        c.check(len(idx) == 1 and "UNIQUE" in idx[0], f"and took the key: {idx}")


def t_future(c):
    """A visit from a broken clock (year 9999) is dead-lettered as future and
    no longer makes every later visit late; one within --max-future that does
    stall the stream is reported while the job runs."""
    import json
    d = tmpdir()
    def visit(u, secs, page):
        return b'{"user_id": %d, "page": "%s", "event_time": "2023-02-20T%02d:%02d:%02d"}\n' % (
            u, page.encode(), 3 + secs // 3600, secs // 60 % 60, secs % 60)
    log = f"{d}/far.jsonl"
    with open(log, "wb") as f:
        for i in range(300):
            f.write(visit(i % 7, i, "p%d" % i))
            if i == 100:
                f.write(b'{"user_id": 99, "page": "bad-clock", "event_time": "9999-12-31T23:59:59"}\n')
    p = job(f"file:{log}", f"{d}/s.db", None, "--dlq", f"jsonl:{d}/dlq.jsonl")
    dl = [json.loads(x) for x in open(f"{d}/dlq.jsonl")]
    c.eq([(x["reason"], json.loads(x["record"])["page"]) for x in dl], [("future", "bad-clock")],
         "the year-9999 visit is dead-lettered as future, and no later visit is late")
    rows, counts = oracle.sessions(open(log, "rb").read())
    c.eq(content(f"{d}/s.db"), rows, "the sessions equal the oracle's")
    c.eq((counts["future"], counts["late"]), (1, 0), "and so do its counts")
    s = summary(p.stderr)
    c.eq((s["records"], s["dead"], s["late"], s["closed_visits"]), (301, 1, 0, 300), "summary counts")
    c.check(b"1 too far in the future" in p.stderr, "the summary names it")
    c.check(b"were late" not in p.stderr, "no late-rate warning")
    # 50 minutes ahead is within the default hour: the visits after it are
    # late, and a warning says so while the job runs
    log2 = f"{d}/ahead.jsonl"
    with open(log2, "wb") as f:
        f.write(visit(1, 0, "first"))
        f.write(visit(1, 3000, "ahead"))
        for i in range(1, 1500):
            f.write(visit(2, i, "p%d" % i))
    p = job(f"file:{log2}", f"{d}/s2.db", None, "--dlq", f"jsonl:{d}/dlq2.jsonl")
    c.check(b" warn " in p.stderr and b"visits were late" in p.stderr and b"--max-future" in p.stderr,
            "a late-rate warning on stderr: " + p.stderr.decode(errors="replace")[-300:])
    c.eq(summary(p.stderr)["late"], 1499, "the late visits counted")
    # with --max-future 10m the same visit is future instead, and nothing is late
    p = job(f"file:{log2}", f"{d}/s3.db", None, "--dlq", f"jsonl:{d}/dlq3.jsonl", "--max-future", "10m")
    c.eq((summary(p.stderr)["late"], summary(p.stderr)["dead"]), (0, 1), "--max-future 10m: 1 future, 0 late")
    rows, counts = oracle.sessions(open(log2, "rb").read(), max_future_us=600 * 10**6)
    c.eq(content(f"{d}/s3.db"), rows, "the sessions equal the oracle's")


TESTS = {name[2:]: fn for name, fn in globals().items() if name.startswith("t_")}

if __name__ == "__main__":
    run_checks(f"core.{sys.argv[1]}", TESTS[sys.argv[1]])
