#!/usr/bin/python3
"""
test_cql_e2e.py SESSIONIZER - the sessionizer program writing into
cql-testserver through --sink cql://..., read back with the Python driver and
compared with a SQLite run of the same input:

 1. the reference walkthrough (samples/visits.jsonl), then the seed's steps:
    three visits, checkpoint lost, the whole log replayed: same session ids
    and pages, new ingestion_time, nothing duplicated; the checkpoint bound
    to its keyspace (another one refused);
 2. replay of a 40k-visit input after checkpoint loss: table unchanged but
    for ingestion_time (all newer), = SQLite;
 3. injected faults (write timeouts, overload, dropped connections, late
    answers, a forgotten prepared statement) on a 3-node server: = SQLite;
 4. the server down in the middle of a run (input on a pipe), back 3 s later:
    the job waits, nothing lost, = SQLite;
 5. wrong credentials and a TLS handshake failure: exit 1 at once, clear
    message, no credential in it;
 6. SIGTERM while the only node is down: the job stops within seconds (not
    after retry_timeout, 5 minutes), exit 1, "interrupted", its checkpoint
    not advanced past what was acknowledged; the same command after the node
    is back completes the table: = SQLite. And SIGTERM while the node is up:
    the final commit is made, exit 0.
"""

import datetime
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from cqltest import Results, TestServer, make_certs, tmpdir  # noqa: E402

import logging  # noqa: E402
import warnings  # noqa: E402
logging.basicConfig(level=logging.CRITICAL)
warnings.simplefilter('ignore', DeprecationWarning)
from cassandra.cluster import Cluster  # noqa: E402
from cassandra.policies import RoundRobinPolicy  # noqa: E402

BIN = sys.argv[1]
GEN = os.path.join(ROOT, 'tests', 'integration', 'lib', 'gen_visits.py')
SAMPLE = os.path.join(ROOT, 'samples', 'visits.jsonl')
res = Results('test_cql_e2e')
WORK = tmpdir()


def run(src, uri, ck, *extra, stdin=None, timeout=300):
    cmd = [BIN, 'run', '-q', '--source', src, '--sink', uri, '--checkpoint', ck, '--until-end',
           '--dlq', 'jsonl:' + os.path.join(WORK, 'dlq.jsonl')] + list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=stdin)


def sqlite_rows(path):
    db = os.path.join(WORK, 'ref.db')
    for f in (db, db + '.ck'):
        shutil.rmtree(f, ignore_errors=True) if os.path.isdir(f) else (os.path.exists(f) and os.unlink(f))
    p = run('file:' + path, 'sqlite:' + db, db + '.ck')
    assert p.returncode == 0, p.stderr
    con = sqlite3.connect(db)
    rows = {(int(s), int(u)): json.loads(pg) for s, u, pg in
            con.execute('SELECT session_id, user_id, pages FROM sessions')}
    con.close()
    return rows


def cql_rows(port):
    c = Cluster(['127.0.0.1'], port=port, protocol_version=4, connect_timeout=5,
                load_balancing_policy=RoundRobinPolicy())
    s = c.connect()
    rows = {(r.session_id, r.user_id): (r.pages or [], r.ingestion_time)
            for r in s.execute('SELECT * FROM dedp.sessions')}
    c.shutdown()
    return rows


def same_as(want, got, what):
    pages = {k: v[0] for k, v in got.items()}
    diff = len(set(want) ^ set(pages)) + sum(1 for k in want if k in pages and pages[k] != want[k])
    return res.check(diff == 0 and len(want) > 0,
                     '%s: %d rows = the SQLite run (%d differences)' % (what, len(pages), diff))


def walkthrough():
    with TestServer() as srv:
        uri = 'cql://127.0.0.1:%d/dedp' % srv.port
        ck = os.path.join(WORK, 'ck1')
        p = run('file:' + SAMPLE, uri, ck)
        res.equal(p.returncode, 0, 'walkthrough run exits 0: %s' % p.stderr.strip()[-300:])
        got = cql_rows(srv.port)
        same_as(sqlite_rows(SAMPLE), got, 'walkthrough')
        res.equal(len(got), 3, 'walkthrough: 3 sessions')
        user1 = sorted(v[0] for k, v in got.items() if k[1] == 1)
        res.equal(user1, [['A.html', 'B.html'], ['C.html']], "walkthrough: user 1's sessions")
        # the checkpoint is bound to the cluster's contact points, keyspace and table
        p = run('file:' + SAMPLE, 'cql://127.0.0.1:%d/DEDP' % srv.port, ck)
        res.equal(p.returncode, 0, 'the same keyspace spelt in capitals resumes: %s' % p.stderr.strip()[-300:])
        p = run('file:' + SAMPLE, 'cql://127.0.0.1:%d/other' % srv.port, ck)
        res.check(p.returncode == 1 and ('--sink naming cql://127.0.0.1:%d/dedp table=sessions' % srv.port)
                  in p.stderr, 'another keyspace is refused, naming the one it was written for: %s'
                  % p.stderr.strip()[-300:])
        now = datetime.datetime.now(datetime.timezone.utc)
        res.check(all(abs((now - v[1].replace(tzinfo=datetime.timezone.utc)).total_seconds()) < 60
                      for v in got.values()), 'walkthrough: ingestion_time is the write time')
        # the seed's steps: 3 visits, checkpoint lost, the whole log again
        srv.control('unprepare')
        c = Cluster(['127.0.0.1'], port=srv.port, protocol_version=4,
                    load_balancing_policy=RoundRobinPolicy())
        c.connect().execute('TRUNCATE dedp.sessions')
        c.shutdown()
        walk = os.path.join(WORK, 'walk.jsonl')
        with open(SAMPLE) as f:
            lines = f.readlines()
        with open(walk, 'w') as f:
            f.writelines(lines[:3])
        ckw = os.path.join(WORK, 'ckw')
        run('file:' + walk, uri, ckw)
        first = cql_rows(srv.port)
        shutil.rmtree(ckw)
        time.sleep(0.01)
        with open(walk, 'w') as f:
            f.writelines(lines)
        p = run('file:' + walk, uri, ckw)
        second = cql_rows(srv.port)
        res.check(p.returncode == 0 and all(k in second and second[k][0] == v[0] for k, v in first.items()),
                  "replay after checkpoint loss: user 1's sessions keep their ids and pages")
        res.equal(len(second), 3, "replay: user 2's session added, nothing duplicated")
        res.check(all(second[k][1] > first[k][1] for k in first), 'replay: user 1 rows have a newer ingestion_time')
        for name, rows in (('first run', first), ('after replay', second)):
            print('# %s:' % name)
            for k, v in sorted(rows.items()):
                print('#   session_id=%d user_id=%d pages=%s ingestion_time=%s' % (k[0], k[1], v[0], v[1]))


def wait_for_rows(srv, seconds=30):
    """Until the job has written its first sessions (or seconds pass)."""
    deadline = time.time() + seconds
    while time.time() < deadline and srv.stats()['tables'].get('dedp.sessions', 0) == 0:
        time.sleep(0.05)


def input40k():
    inp = os.path.join(WORK, 'v40k.jsonl')
    if not os.path.exists(inp):
        with open(inp, 'w') as f:
            subprocess.run(['/usr/bin/python3', GEN, '40000', '--seed', '11', '--users', '800'],
                           stdout=f, check=True, timeout=120)
    return inp


def replay():
    inp = input40k()
    want = sqlite_rows(inp)
    with TestServer(nodes=3) as srv:
        uri = 'cql://127.0.0.1:%d/dedp' % srv.port
        ck = os.path.join(WORK, 'ck2')
        p = run('file:' + inp, uri, ck, '--commit-every', '5000')
        res.equal(p.returncode, 0, 'replay: first run exits 0: %s' % p.stderr.strip()[-300:])
        a = cql_rows(srv.port)
        same_as(want, a, 'replay: first run')
        shutil.rmtree(ck)
        p = run('file:' + inp, uri, ck, '--commit-every', '7000')
        b = cql_rows(srv.port)
        res.check(p.returncode == 0 and {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()},
                  'replay after checkpoint loss: table unchanged (%d rows) but for ingestion_time' % len(b))
        res.check(min(v[1] for v in b.values()) > max(v[1] for v in a.values()),
                  'replay: every ingestion_time is newer than the first run\'s latest')
        res.equal(sum(srv.stats()['misrouted']), 0, 'replay: every write went to its owner node')


def faults():
    inp = input40k()
    want = sqlite_rows(inp)
    # the run makes ~2500 EXECUTEs: the faults are spread over it
    faults = ['error code=0x1100 op=EXECUTE count=30 skip=100',
              'error code=0x1100 op=EXECUTE count=30 skip=400 apply=1',
              'error code=0x1001 op=EXECUTE count=20 skip=700',
              'error code=0x1000 op=EXECUTE count=20 skip=1000',
              'unprepare op=EXECUTE count=1 skip=1200',
              'drop op=EXECUTE count=2 skip=1400',
              'drop op=EXECUTE count=2 skip=1600 apply=1 node=1',
              'delay ms=1500 op=EXECUTE count=3 skip=1900']
    with TestServer(nodes=3, faults=faults) as srv:
        uri = 'cql://127.0.0.1:%d/dedp' % srv.port
        p = run('file:' + inp, uri, os.path.join(WORK, 'ck3'), '--commit-every', '3000',
                '--sink-opt', 'request_timeout=800ms')
        res.equal(p.returncode, 0, 'faults: job exits 0: %s' % p.stderr.strip()[-300:])
        st = srv.stats()
        res.check(st['faults_fired'] >= 100, 'faults: %d faults fired' % st['faults_fired'])
        res.check(sum(n.get('PREPARE', 0) for n in st['requests']) > 3, 'faults: re-prepared after UNPREPARED')
        same_as(want, cql_rows(srv.port), 'faults: nothing lost, nothing duplicated')


def outage():
    inp = input40k()
    want = sqlite_rows(inp)
    with open(inp) as f:
        lines = f.readlines()
    with TestServer() as srv:
        uri = 'cql://127.0.0.1:%d/dedp' % srv.port
        job = subprocess.Popen([BIN, 'run', '-q', '--source', '-', '--sink', uri, '--checkpoint',
                                os.path.join(WORK, 'ck4'), '--until-end', '--commit-every', '2000',
                                '--dlq', 'jsonl:' + os.path.join(WORK, 'dlq4')],
                               stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            job.stdin.writelines(lines[:20000])
            job.stdin.flush()
            wait_for_rows(srv)
            srv.control('kill node=0')

            def feed():  # the job stops reading while its sink waits: feed from a thread
                try:
                    job.stdin.writelines(lines[20000:])
                    job.stdin.close()
                except BrokenPipeError:
                    pass
            feeder = threading.Thread(target=feed)
            feeder.start()
            time.sleep(3)
            res.check(job.poll() is None, 'outage: job still running while the server is down')
            srv.control('revive node=0')
            feeder.join(timeout=120)
            err = job.stderr.read()
            rc = job.wait(timeout=120)
        finally:
            if job.poll() is None:
                job.kill()
        res.equal(rc, 0, 'outage: job exits 0 after the outage')
        res.check('retrying' in err or 'reconnecting' in err, 'outage: job said it was retrying')
        same_as(want, cql_rows(srv.port), 'outage: nothing lost, nothing duplicated')


def stop_in_outage():
    inp = input40k()
    want = sqlite_rows(inp)
    with TestServer() as srv:  # healthy: SIGTERM makes the final commit and exits 0
        uri = 'cql://127.0.0.1:%d/dedp' % srv.port
        with open(inp) as f:
            lines = f.readlines()
        job = subprocess.Popen([BIN, 'run', '--source', '-', '--sink', uri, '--checkpoint',
                                os.path.join(WORK, 'ck10'), '--dlq', 'jsonl:' + os.path.join(WORK, 'dlq10')],
                               stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            job.stdin.writelines(lines[:20000])
            job.stdin.flush()
            wait_for_rows(srv)
            job.send_signal(signal.SIGTERM)
            rc = job.wait(timeout=60)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
        err = job.stderr.read()
        res.check(rc == 0 and 'stopped by signal after a final commit' in err,
                  'stop while healthy: final commit, exit 0: rc=%s %s' % (rc, err.strip()[-200:]))
    with TestServer() as srv:
        uri = 'cql://127.0.0.1:%d/dedp' % srv.port

        cmd = [BIN, 'run', '-q', '--source', 'file:' + inp, '--sink', uri, '--checkpoint',
               os.path.join(WORK, 'ck9'), '--until-end', '--commit-every', '2000',
               '--dlq', 'jsonl:' + os.path.join(WORK, 'dlq9')]
        job = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        try:
            wait_for_rows(srv)
            srv.control('kill node=0')
            time.sleep(1.5)  # the job is now retrying inside a flush
            res.check(job.poll() is None, 'stop in outage: job still running while the node is down')
            t = time.time()
            job.send_signal(signal.SIGTERM)
            try:
                rc = job.wait(timeout=30)
            except subprocess.TimeoutExpired:
                rc = None  # still retrying: reported below
            took = time.time() - t
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
        err = job.stderr.read()
        res.check(took < 5, 'stop in outage: stopped %.1f s after SIGTERM (retry_timeout is 300 s)' % took)
        res.check(rc == 1 and 'interrupted' in err,
                  'stop in outage: exit 1, interrupted: rc=%s %s' % (rc, err.strip()[-200:]))
        srv.control('revive node=0')
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        res.equal(p.returncode, 0, 'stop in outage: the same command after the outage exits 0')
        same_as(want, cql_rows(srv.port), 'stop in outage: nothing lost, nothing duplicated')


def failures():
    d = tmpdir()
    try:
        with TestServer(auth='etl:Pa55word') as srv:
            uri = 'cql://127.0.0.1:%d/dedp' % srv.port
            t = time.time()
            p = run('file:' + SAMPLE, uri, os.path.join(WORK, 'ck5'), '--sink-opt', 'username=etl',
                    '--sink-opt', 'password=Wr0ng')
            res.check(p.returncode == 1 and 'authentication failed' in p.stderr and time.time() - t < 10,
                      'wrong credentials: exit 1 at once: %s' % p.stderr.strip()[-200:])
            res.check('Wr0ng' not in p.stderr and 'etl' not in p.stderr and 'Pa55' not in p.stderr,
                      'wrong credentials: no credential in the message')
            p = run('file:' + SAMPLE, uri, os.path.join(WORK, 'ck6'), '--sink-opt', 'username=etl',
                    '--sink-opt', 'password=Pa55word')
            res.equal(p.returncode, 0, 'right credentials: exit 0')
        ca, cert, key, other = make_certs(d)
        with TestServer(tls=(cert, key)) as srv:
            uri = 'cql://127.0.0.1:%d/dedp' % srv.port
            p = run('file:' + SAMPLE, uri, os.path.join(WORK, 'ck7'), '--sink-opt', 'tls=1',
                    '--sink-opt', 'tls_ca=' + other)
            res.check(p.returncode == 1 and 'TLS handshake failed' in p.stderr and 'certificate' in p.stderr,
                      'TLS handshake failure: exit 1, clear message: %s' % p.stderr.strip()[-200:])
            p = run('file:' + SAMPLE, uri, os.path.join(WORK, 'ck8'), '--sink-opt', 'tls=1',
                    '--sink-opt', 'tls_ca=' + ca)
            res.equal(p.returncode, 0, 'TLS with the right CA: exit 0: %s' % p.stderr.strip()[-200:])
    finally:
        shutil.rmtree(d, ignore_errors=True)


try:
    for scenario in (sys.argv[2:] or ['walkthrough', 'replay', 'faults', 'outage', 'stop_in_outage',
                                      'failures']):
        print('# ' + scenario, flush=True)
        globals()[scenario]()
finally:
    shutil.rmtree(WORK, ignore_errors=True)
res.finish()
