#!/usr/bin/python3
"""
test_cql_golden.py CQL_FRAMES - the C client's request bytes against the
DataStax Python driver's encoders, byte for byte apart from the stream id.

1. codec: every frame cql_frames builds with src/cql/cql_proto.c (STARTUP,
   OPTIONS, AUTH_RESPONSE, QUERY with and without parameters, PREPARE,
   EXECUTE with values/nulls/unset/timestamp, BATCH prepared and mixed,
   REGISTER) equals cassandra.protocol's encoding of the same message.
2. wire: the real client (cql_client.c) logs in to cql-testserver with
   PasswordAuthenticator and prepares, executes and batches; the server dumps
   each request frame as received, and STARTUP, AUTH_RESPONSE, PREPARE,
   EXECUTE, BATCH, QUERY and REGISTER are each compared with the driver's
   encoding (the prepared id is the server's MD5 of the query).
3. tokens: cql_murmur3_token equals the driver's murmur3 for bigint keys and
   for keys of every tail length with the high bit set (the sign-extension
   quirk of Cassandra's hash).
"""

import hashlib
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cqltest import Results, TestServer, tmpdir  # noqa: E402

from cassandra import ConsistencyLevel as CL  # noqa: E402
from cassandra.auth import PlainTextAuthenticator  # noqa: E402
from cassandra.cqltypes import DateType, ListType, LongType, UTF8Type  # noqa: E402
from cassandra.murmur3 import murmur3  # noqa: E402
from cassandra.protocol import (AuthResponseMessage, BatchMessage, ExecuteMessage,  # noqa: E402
                                OptionsMessage, PrepareMessage, ProtocolHandler, QueryMessage,
                                RegisterMessage, StartupMessage, _UNSET_VALUE)
from cassandra.query import BatchType  # noqa: E402

FRAMES = sys.argv[1]
res = Results('test_cql_golden')

TEST_ID = bytes([0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe,
                 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef])
INSERT = ("INSERT INTO dedp.sessions (session_id, user_id, pages, ingestion_time) "
          "VALUES (?, ?, ?, ?)")
PAGES_A = ['/home', '/caf\u00e9?q=1', '']
PAGES_B = ['/x']
ListText = ListType.apply_parameters([UTF8Type])


def enc(msg):
    return ProtocolHandler.encode_message(msg, 0, 4, None, False)


def session(sid, uid, pages, ts_ms):
    """The sink's four bound values, serialized by the driver's types."""
    return [LongType.serialize(sid, 4), LongType.serialize(uid, 4),
            ListText.serialize(pages, 4), DateType.serialize(ts_ms, 4)]


def same(ours_hex, theirs, what):
    ours = bytes.fromhex(ours_hex)
    # the stream id (bytes 2-3) is the only part allowed to differ
    a = ours[:2] + b'\0\0' + ours[4:]
    b = theirs[:2] + b'\0\0' + theirs[4:]
    if a != b:
        print('       ours:   %s\n       driver: %s' % (a.hex(), b.hex()))
    return res.check(a == b, what)


def codec():
    out = subprocess.run([FRAMES, 'codec'], check=True, capture_output=True, text=True,
                         timeout=30).stdout
    got = dict(line.split(' ', 1) for line in out.split('\n') if line)
    auth = PlainTextAuthenticator('alice', 's3cret')
    expect = {
        'startup': StartupMessage(cqlversion='3.0.0', options={}),
        'options': OptionsMessage(),
        'auth_response': AuthResponseMessage(auth.initial_response()),
        'query': QueryMessage("SELECT * FROM system.local WHERE key='local'", CL.ONE),
        'prepare': PrepareMessage(INSERT),
        'execute': ExecuteMessage(TEST_ID, session(-5, 7, PAGES_A, 1700000000123),
                                  CL.LOCAL_QUORUM, timestamp=1700000000123000),
        'execute_nulls': ExecuteMessage(TEST_ID, [LongType.serialize(-2**63, 4), None,
                                                  _UNSET_VALUE, DateType.serialize(-1, 4)],
                                        CL.ONE),
        'batch': BatchMessage(BatchType.UNLOGGED,
                              [(True, TEST_ID, session(100 + i, 200 + i,
                                                       PAGES_B if i == 1 else PAGES_A,
                                                       1700000000000 + i)) for i in range(3)],
                              CL.LOCAL_QUORUM, timestamp=1700000000999000),
        'batch_mixed': BatchMessage(BatchType.LOGGED,
                                    [(False, 'INSERT INTO ks.t (a) VALUES (1)', []),
                                     (True, TEST_ID, session(101, 201, PAGES_B, 1700000000001))],
                                    CL.QUORUM),
        'register': RegisterMessage(['TOPOLOGY_CHANGE', 'STATUS_CHANGE', 'SCHEMA_CHANGE']),
    }
    qv = QueryMessage("INSERT INTO ks.t (a, b) VALUES (?, ?)", CL.LOCAL_QUORUM,
                      serial_consistency_level=CL.LOCAL_SERIAL, fetch_size=5000,
                      timestamp=1234567)
    qv.query_params = [LongType.serialize(42, 4), UTF8Type.serialize('x', 4)]
    expect['query_values'] = qv
    for name, msg in expect.items():
        res.check(name in got, 'codec produced %s' % name)
        if name in got:
            same(got[name], enc(msg), 'codec %s = driver %s' % (name, type(msg).__name__))


def wire():
    d = tmpdir()
    dump = os.path.join(d, 'frames.txt')
    with TestServer(auth='alice:s3cret', dump_frames=dump) as srv:
        p = subprocess.run([FRAMES, 'wire', '127.0.0.1:%d' % srv.port, 'alice', 's3cret'],
                           capture_output=True, text=True, timeout=60)
        res.check(p.returncode == 0, 'client ran prepare/execute/batch against the server: %s'
                  % p.stderr.strip())
    frames = [line.split(' ', 1) for line in open(dump).read().split('\n') if line]
    by_op = {}
    for op, hx in frames:
        by_op.setdefault(op, []).append(hx)
    qid = hashlib.md5(INSERT.encode()).digest()  # cql-testserver: md5(keyspace + query)
    auth = PlainTextAuthenticator('alice', 's3cret')
    for op in ('STARTUP', 'AUTH_RESPONSE', 'PREPARE', 'EXECUTE', 'BATCH', 'QUERY', 'REGISTER'):
        res.check(op in by_op, 'client sent %s' % op)
    if 'STARTUP' in by_op:
        same(by_op['STARTUP'][0], enc(StartupMessage(cqlversion='3.0.0', options={})),
             'wire STARTUP = driver')
    if 'AUTH_RESPONSE' in by_op:
        same(by_op['AUTH_RESPONSE'][0], enc(AuthResponseMessage(auth.initial_response())),
             'wire AUTH_RESPONSE (SASL PLAIN) = driver PlainTextAuthenticator')
    for hx in by_op.get('PREPARE', []):
        same(hx, enc(PrepareMessage(INSERT)), 'wire PREPARE = driver')
    if 'EXECUTE' in by_op:
        same(by_op['EXECUTE'][0],
             enc(ExecuteMessage(qid, session(-5, 7, PAGES_A, 1700000000123), CL.LOCAL_QUORUM,
                                timestamp=1700000000123000)),
             'wire EXECUTE (bound bigint, bigint, list<text>, timestamp; default timestamp) = driver')
    if 'BATCH' in by_op:
        same(by_op['BATCH'][0],
             enc(BatchMessage(BatchType.UNLOGGED,
                              [(True, qid, session(100 + i, 200 + i,
                                                   PAGES_B if i == 1 else PAGES_A,
                                                   1700000000000 + i)) for i in range(3)],
                              CL.LOCAL_QUORUM, timestamp=1700000000999000)),
             'wire BATCH UNLOGGED of 3 prepared = driver')
    for hx in by_op.get('QUERY', []):
        body = bytes.fromhex(hx)[9:]
        n = int.from_bytes(body[:4], 'big')
        text = body[4:4 + n].decode()
        cl = int.from_bytes(body[4 + n:6 + n], 'big')
        same(hx, enc(QueryMessage(text, cl)), 'wire QUERY %r = driver' % text[:40])
    for hx in by_op.get('REGISTER', []):
        same(hx, enc(RegisterMessage(['TOPOLOGY_CHANGE', 'STATUS_CHANGE'])), 'wire REGISTER = driver')


def tokens():
    out = subprocess.run([FRAMES, 'tokens'], check=True, capture_output=True, text=True,
                         timeout=30).stdout
    bad = []
    n = 0
    for line in out.split('\n'):
        if not line:
            continue
        key, tok = line.split()
        data = b'' if key == '-' else bytes.fromhex(key)
        n += 1
        if murmur3(data) != int(tok):
            bad.append((key, tok, murmur3(data)))
    res.check(n >= 49, 'tokens computed for %d keys' % n)
    res.equal(bad, [], 'cql_murmur3_token = driver murmur3 for every key')


codec()
wire()
tokens()
res.finish()
