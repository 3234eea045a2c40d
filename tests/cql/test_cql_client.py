#!/usr/bin/python3
"""
test_cql_client.py CQL_SINK_TOOL - the cql sink and the client library
under it, against cql-testserver, read back with the Python driver.

Each scenario starts its own server, writes known sessions with
cql_sink_tool (open, write, flush as the job does) and checks what a user
would: every row there with the right values, nothing extra; faults retried
without loss; permanent errors failing fast with a clear message that never
contains the credentials; TLS verified; load spread over the nodes and each
write sent to the node owning its partition.
"""

import os
import re
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cqltest import Results, TestServer, make_certs, tmpdir  # noqa: E402

import logging  # noqa: E402
import warnings  # noqa: E402
logging.basicConfig(level=logging.CRITICAL)
warnings.simplefilter('ignore', DeprecationWarning)
from cassandra.cluster import Cluster  # noqa: E402
from cassandra.policies import RoundRobinPolicy  # noqa: E402

TOOL = sys.argv[1]
res = Results('test_cql_client')
M64 = (1 << 64) - 1


def mix(k):
    """cql_sink_tool's session id of session k (splitmix64)."""
    x = (k + 0x9e3779b97f4a7c15) & M64
    x = ((x ^ (x >> 30)) * 0xbf58476d1ce4e5b9) & M64
    x = ((x ^ (x >> 27)) * 0x94d049bb133111eb) & M64
    x ^= x >> 31
    return x - (1 << 64) if x >= 1 << 63 else x


def expected(n, first=0, pages=3):
    return {(mix(k), 1 + k % 1000): ['/%d/%d' % (k, p) for p in range(pages)]
            for k in range(first, first + n)}


def run_tool(srv_or_uri, *args, n=100, timeout=120, ks='dedp'):
    uri = srv_or_uri if isinstance(srv_or_uri, str) else 'cql://127.0.0.1:%d/%s' % (srv_or_uri.port, ks)
    cmd = [TOOL, uri, '-n', str(n)] + list(args)
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr, time.time() - t


def read_back(port, ks='dedp', ca=None):
    """The table as the Python driver reads it: {(sid, uid): (pages, ingestion_time)}."""
    kw = {}
    if ca:
        import ssl
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = False
        kw['ssl_context'] = ctx
    c = Cluster(['127.0.0.1'], port=port, protocol_version=4, connect_timeout=5,
                load_balancing_policy=RoundRobinPolicy(), **kw)
    s = c.connect()
    rows = {(r.session_id, r.user_id): (r.pages or [], r.ingestion_time)
            for r in s.execute('SELECT * FROM %s.sessions' % ks)}
    c.shutdown()
    return rows


def check_rows(srv, want, what, ks='dedp', ca=None):
    got = read_back(srv.port, ks, ca)
    pages = {k: v[0] for k, v in got.items()}
    missing = len(set(want) - set(pages))
    extra = len(set(pages) - set(want))
    wrong = sum(1 for k in want if k in pages and pages[k] != want[k])
    res.check(missing == extra == wrong == 0 and len(got) == len(want),
              '%s: %d rows read back by the driver (missing %d, extra %d, wrong pages %d)'
              % (what, len(got), missing, extra, wrong))
    return got


def basic():
    with TestServer(nodes=3) as srv:
        rc, out, err, _ = run_tool(srv, '--flush-every', '700', n=3000)
        res.equal(rc, 0, 'basic: 3000 sessions written to a 3-node cluster: %s' % err.strip()[-300:])
        got = check_rows(srv, expected(3000), 'basic')
        now = time.time()
        ages = [now - v[1].replace(tzinfo=__import__('datetime').timezone.utc).timestamp()
                for v in got.values() if v[1]]
        res.check(len(ages) == 3000 and all(-5 < a < 120 for a in ages),
                  'basic: ingestion_time is the wall-clock time of the write (UTC)')
        st = srv.stats()
        res.equal(sum(st['misrouted']), 0, 'basic: token-aware: every write reached its owner node')
        res.check(min(st['owned']) > 600, 'basic: writes spread over the 3 nodes %s' % st['owned'])
        # replay: same sessions again, newer ingestion_time, no new row
        time.sleep(0.01)
        rc, _, err, _ = run_tool(srv, n=3000)
        got2 = check_rows(srv, expected(3000), 'replay of the same sessions')
        res.check(all(got2[k][1] >= got[k][1] for k in got), 'replay: ingestion_time never goes back')


def faults():
    with TestServer() as srv:
        for spec in ('error code=0x1100 op=EXECUTE count=40 skip=100',          # write timeout
                     'error code=0x1100 op=EXECUTE count=20 skip=400 apply=1',  # ... after applying
                     'error code=0x1000 op=EXECUTE count=20 skip=700',          # unavailable
                     'error code=0x1001 op=EXECUTE count=20 skip=900',          # overloaded
                     'error code=0x1002 op=EXECUTE count=10 skip=1100',         # bootstrapping
                     'drop op=EXECUTE count=3 skip=1300',                       # lost connection
                     'drop op=EXECUTE count=2 skip=1800 apply=1',               # lost ack
                     'delay ms=1500 op=EXECUTE count=5 skip=2200'):             # > request timeout
            srv.control('fault ' + spec)
        t = threading.Timer(0.3, lambda: srv.control('unprepare'))
        rc, out, err, secs = run_tool(srv, '--flush-every', '500', '-o', 'request_timeout=500ms',
                                      n=4000)
        t.cancel()
        res.equal(rc, 0, 'faults: run succeeded despite the injected faults: %s' % err.strip()[-300:])
        st = srv.stats()
        res.check(st['faults_fired'] >= 100, 'faults: %d faults fired' % st['faults_fired'])
        res.check('retrying write' in err, 'faults: retries are logged on stderr')
        check_rows(srv, expected(4000), 'faults: nothing lost, nothing extra')
        # UNPREPARED: the server forgets the statement mid-run
        srv.control('unprepare')
        rc, out, err, _ = run_tool(srv, '--first', '4000', n=500)
        # the tool prepares at open; forget it again while writing
        srv.control('clear')
        srv.control('fault delay ms=200 op=EXECUTE count=1')
        th = threading.Thread(target=lambda: (time.sleep(0.1), srv.control('unprepare')))
        th.start()
        rc2, _, err2, _ = run_tool(srv, '--first', '4500', '--flush-every', '50', n=2000)
        th.join()
        res.check(rc == 0 and rc2 == 0, 'unprepared: writes succeed after the server forgot the statement: %s'
                  % (err + err2).strip()[-300:])
        res.check(srv.stats()['requests'][0].get('PREPARE', 0) >= 3, 'unprepared: the client re-prepared')
        check_rows(srv, expected(6500), 'unprepared: every row there')


def fail_fast():
    with TestServer() as srv:
        rc, _, _, _ = run_tool(srv, n=1)
        for code, word in ((0x2200, 'Invalid'), (0x2000, 'Syntax_error'), (0x2100, 'Unauthorized')):
            srv.control('clear')
            srv.control('fault error code=0x%x op=EXECUTE count=-1' % code)
            rc, out, err, secs = run_tool(srv, n=200)
            res.check(rc != 0 and word in err and 'rejected' in err and secs < 10,
                      'fail fast on %s: exit %d in %.1f s: %s' % (word, rc, secs, err.strip()[-200:]))
        srv.control('clear')
        srv.control('fault error code=0x1100 op=EXECUTE count=-1')
        rc, out, err, secs = run_tool(srv, '-o', 'retry_timeout=1500ms', n=20)
        res.check(rc != 0 and 'failed after' in err and 'Write_timeout' in err and secs < 20,
                  'retry gives up after retry_timeout with the last error: %s' % err.strip()[-200:])
        srv.control('clear')
        rc, out, err, _ = run_tool(srv, '-o', 'nonsense=1', n=1)
        res.check(rc != 0 and 'unknown option' in err and 'consistency=' in err, 'unknown option listed with the known ones')
        rc, out, err, _ = run_tool('cql://127.0.0.1:%d/bad-name' % srv.port, n=1)
        res.check(rc != 0 and 'not a valid name' in err, 'invalid keyspace name refused')


def auth():
    d = tmpdir()
    try:
        pwfile = os.path.join(d, 'pw')
        with open(pwfile, 'w') as f:
            f.write('Sup3r-S3cret\n')
        with TestServer(auth='writer:Sup3r-S3cret') as srv:
            rc, _, err, _ = run_tool(srv, '-o', 'username=writer', '-o', 'password_file=' + pwfile, n=50)
            res.equal(rc, 0, 'auth: PasswordAuthenticator login with password_file: %s' % err.strip())
            # a directory or an empty file: refused, saying what is wrong with it
            empty = os.path.join(d, 'empty')
            open(empty, 'w').close()
            for path, says in ((d, 'is a directory'), (empty, 'is empty')):
                rc, _, err, _ = run_tool(srv, '-o', 'username=writer', '-o', 'password_file=' + path, n=5)
                res.check(rc != 0 and says in err and path in err,
                          'auth: password_file %s refused: %s' % (says, err.strip()[-200:]))
            rc, _, err, secs = run_tool(srv, '-o', 'username=writer', '-o', 'password=Wr0ngPass', n=5)
            res.check(rc != 0 and 'authentication failed' in err and secs < 10,
                      'auth: wrong password fails fast and says so: %s' % err.strip()[-200:])
            res.check('Wr0ngPass' not in err and 'writer' not in err and 'Sup3r' not in err,
                      'auth: neither username nor password in the message (server echoed the user)')
            rc, _, err, _ = run_tool(srv, n=5)
            res.check(rc != 0 and 'requires authentication' in err, 'auth: missing credentials named: %s' % err.strip()[-200:])
            res.equal(srv.stats()['auth_failures'], 1, 'auth: the server saw one failed login')
    finally:
        shutil.rmtree(d, ignore_errors=True)


def tls():
    d = tmpdir()
    try:
        ca, cert, key, other = make_certs(d)
        with TestServer(tls=(cert, key), nodes=2) as srv:
            rc, _, err, _ = run_tool(srv, '-o', 'tls=1', '-o', 'tls_ca=' + ca, n=300)
            res.equal(rc, 0, 'tls: verified TLS to 2 nodes: %s' % err.strip()[-200:])
            check_rows(srv, expected(300), 'tls', ca=ca)
            rc, _, err, _ = run_tool('cql://localhost:%d/dedp' % srv.port, '-o', 'tls=1',
                                     '-o', 'tls_ca=' + ca, n=10)
            res.equal(rc, 0, 'tls: host name verified for "localhost": %s' % err.strip()[-200:])
            rc, _, err, secs = run_tool(srv, '-o', 'tls=1', '-o', 'tls_ca=' + other, n=5)
            res.check(rc != 0 and 'certificate verif' in err and secs < 10,
                      'tls: certificate from an unknown CA refused clearly: %s' % err.strip()[-200:])
            rc, _, err, _ = run_tool(srv, '-o', 'tls=1', '-o', 'tls_ca=' + other, '-o', 'tls_verify=0', n=5)
            res.equal(rc, 0, 'tls: tls_verify=0 accepts it (explicit opt-out)')
            rc, _, err, secs = run_tool(srv, '-o', 'connect_timeout=2s', n=5)
            res.check(rc != 0 and secs < 15 and ('closed' in err or 'timed out' in err or 'no answer' in err),
                      'tls: plain client to a TLS server fails with a clear error: %s' % err.strip()[-200:])
        with TestServer() as plain:
            rc, _, err, secs = run_tool(plain, '-o', 'tls=1', '-o', 'tls_ca=' + ca,
                                        '-o', 'connect_timeout=2s', n=5)
            res.check(rc != 0 and 'TLS handshake failed' in err and secs < 15,
                      'tls: TLS client to a plain server: handshake failure named: %s' % err.strip()[-200:])
    finally:
        shutil.rmtree(d, ignore_errors=True)


def nodes():
    with TestServer(nodes=3) as srv:
        # first contact point dead, second alive; peers discovered from it
        uri = 'cql://127.0.0.1:1,127.0.0.2:%d/dedp' % srv.port
        rc, _, err, _ = run_tool(uri, n=500)
        res.equal(rc, 0, 'nodes: a dead first contact point is skipped: %s' % err.strip()[-200:])
        res.check(min(srv.stats()['owned']) > 0, 'nodes: peers discovered, all 3 nodes written')
        # a node dies in the middle of a run
        srv.control('reset-stats')
        # slow the run down so that it lasts well past the kill whatever the
        # machine's speed: 12000 writes answered after 10 ms, 64 in flight.
        # Node 1 is killed once it has taken writes, not at a fixed time: a
        # slow start (ASan on a loaded machine) took longer than 0.5 s to
        # connect, and node 1 died before the run had written to it.
        srv.control('fault delay ms=10 op=EXECUTE count=-1')
        run_done = threading.Event()

        def kill_node_1_once_written():
            deadline = time.time() + 120
            while not run_done.is_set() and time.time() < deadline:
                if srv.stats()['owned'][1] > 0:
                    srv.control('kill node=1')
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_node_1_once_written)
        killer.start()
        try:
            rc, _, err, secs = run_tool(srv, '--first', '500', '--flush-every', '200',
                                        '-o', 'max_in_flight=64', n=12000, timeout=300)
        finally:
            run_done.set()
            killer.join()
        st = srv.stats()
        res.equal(rc, 0, 'nodes: node 2 of 3 killed mid-run, the run completes: %s' % err.strip()[-300:])
        res.check('lost' in err, 'nodes: the lost node is reported')
        res.check(st['owned'][1] > 0 and st['misrouted'][0] + st['misrouted'][2] > 0,
                  'nodes: node 1 took writes before dying, the others took over its range %s %s'
                  % (st['owned'], st['misrouted']))
        srv.control('clear')
        srv.control('revive node=1')
        check_rows(srv, expected(12500), 'nodes: nothing lost when a node died')


def schema():
    with TestServer() as srv:
        rc, _, err, _ = run_tool(srv, '--no-create-schema', n=5)
        res.check(rc != 0 and 'does not exist' in err and 'CREATE TABLE' in err,
                  'schema: create_schema off and no table: clear error with the DDL: %s' % err.strip()[-200:])
        st = srv.stats()
        res.check(st['tables'] == {} and st['keyspaces'] == [],
                  'schema: create_schema off sent no DDL (no table, no keyspace)')
        c = Cluster(['127.0.0.1'], port=srv.port, protocol_version=4,
                    load_balancing_policy=RoundRobinPolicy())
        s = c.connect()
        s.execute("CREATE KEYSPACE other WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
        s.execute("CREATE TABLE other.sessions (session_id bigint, user_id bigint, pages list<int>, "
                  "ingestion_time timestamp, PRIMARY KEY(session_id, user_id))")
        s.execute("CREATE KEYSPACE third WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
        s.execute("CREATE TABLE third.sessions (session_id bigint, user_id bigint, pages list<text>, "
                  "ingestion_time timestamp, PRIMARY KEY(session_id, user_id))")
        c.shutdown()
        rc, _, err, _ = run_tool(srv, n=5, ks='other')
        res.check(rc != 0 and 'pages is list<int>' in err, 'schema: wrong column type refused: %s' % err.strip()[-200:])
        rc, _, err, _ = run_tool(srv, '--no-create-schema', n=200, ks='third')
        res.equal(rc, 0, 'schema: existing table of the right shape used as is: %s' % err.strip()[-200:])
        check_rows(srv, expected(200), 'schema: existing table', ks='third')
        rc, _, err, _ = run_tool(srv, n=10)
        res.equal(rc, 0, 'schema: created when missing')
        ks = srv.stats()['tables']
        res.check('dedp.sessions' in ks, 'schema: dedp.sessions created')


def options():
    d = tmpdir()
    try:
        dump = os.path.join(d, 'frames')
        with TestServer(dump_frames=dump) as srv:
            rc, _, err, _ = run_tool(srv, '-o', 'consistency=ONE', n=3)
            res.equal(rc, 0, 'options: consistency=ONE run')
        cls = set()
        for line in open(dump):
            op, hx = line.split()
            if op == 'EXECUTE':
                b = bytes.fromhex(hx)
                idlen = int.from_bytes(b[9:11], 'big')
                cls.add(int.from_bytes(b[11 + idlen:13 + idlen], 'big'))
        res.equal(cls, {1}, 'options: every EXECUTE carries consistency ONE')
        os.unlink(dump)
        with TestServer(dump_frames=dump) as srv:
            run_tool(srv, n=3)
        cls = set()
        for line in open(dump):
            op, hx = line.split()
            if op == 'EXECUTE':
                b = bytes.fromhex(hx)
                idlen = int.from_bytes(b[9:11], 'big')
                cls.add(int.from_bytes(b[11 + idlen:13 + idlen], 'big'))
        res.equal(cls, {6}, 'options: LOCAL_QUORUM by default')
        # Durations are spelt as every duration of the program; the former
        # *_ms keys are refused with the new name, a bad value with the range.
        for opt, needle in (('retry_timeout_ms=1500', 'retry_timeout=DURATION'),
                            ('request_timeout=11m', 'expected a duration from 1ms to 10m'),
                            ('connect_timeout=5x', 'expected a duration')):
            rc, _, err, _ = run_tool('cql://127.0.0.1:1/dedp', '-o', opt, n=1, timeout=30)
            res.check(rc != 0 and needle in err, 'options: %s refused: %s' % (opt, err.strip()[-200:]))
        with TestServer(nodes=2) as srv:
            rc, _, err, _ = run_tool(srv, '-o', 'batch=unlogged', '-o', 'batch_size=32', n=2000)
            res.equal(rc, 0, 'batch=unlogged run')
            st = srv.stats()
            res.check(st['batches'] > 30 and st['batch_statements'] > 1500,
                      'batch=unlogged: %d batches carried %d statements' % (st['batches'], st['batch_statements']))
            res.equal(sum(st['misrouted']), 0, 'batch=unlogged: batches grouped by owner node')
            check_rows(srv, expected(2000), 'batch=unlogged')
    finally:
        shutil.rmtree(d, ignore_errors=True)


for scenario in (sys.argv[2:] or ['basic', 'faults', 'fail_fast', 'auth', 'tls', 'nodes', 'schema', 'options']):
    print('# ' + scenario, flush=True)
    globals()[scenario]()
res.finish()
