#!/usr/bin/python3
"""
bench_cql.py BUILD_DIR [SESSIONS] - sessions/s written by the cql sink into
tests/cql/cql-testserver, with many requests in flight against one at a time
(max_in_flight=1), single EXECUTEs against UNLOGGED batches, one node against
three; and the client's CPU per write (getrusage of cql_sink_tool, which
writes 3-page sessions through the real sink: open, write, flush).

Loopback has no latency, so a configuration also runs against a server that
answers every write 1 ms late (the test server's delay fault), which is
where requests in flight matter. The server is a Python program and usually the bottleneck: its CPU per
write is printed too, so that the client's own cost can be read apart from
it. Everything runs on loopback; each configuration gets a fresh server.
Output: one Markdown table row per configuration (pasted in docs/cql.md).
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests', 'cql'))
from cqltest import TestServer  # noqa: E402

build = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
tool = os.path.join(build, 'tests', 'cql', 'cql_sink_tool')
TICK = os.sysconf('SC_CLK_TCK')


def proc_cpu(pid):
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def one(name, nodes, sessions, *opts, latency_ms=0):
    faults = ['delay ms=%d op=%s count=-1' % (latency_ms, op) for op in ('EXECUTE', 'BATCH')] \
        if latency_ms else []
    with TestServer(nodes=nodes, faults=faults) as srv:
        # warm up: schema, prepare, first connections
        subprocess.run([tool, 'cql://127.0.0.1:%d/dedp' % srv.port, '-n', '10'], check=True,
                       capture_output=True, timeout=60)
        cpu0 = proc_cpu(srv.proc.pid)
        args = [tool, 'cql://127.0.0.1:%d/dedp' % srv.port, '-n', str(sessions), '--first', '100',
                '--flush-every', '5000', '--stats']
        for o in opts:
            args += ['-o', o]
        p = subprocess.run(args, capture_output=True, text=True, timeout=600)
        if p.returncode:
            print('| %s | failed: %s |' % (name, p.stderr.strip()[-200:]))
            return
        st = json.loads(p.stdout)
        server_us = (proc_cpu(srv.proc.pid) - cpu0) * 1e6 / sessions
        print('| %s | %s | %d | %d | %.0f | %.1f | %.0f |' % (
            name, '%d ms' % latency_ms if latency_ms else 'none', nodes, sessions, st['sessions_per_s'], st['cpu_us_per_write'], server_us),
            flush=True)


print('| configuration | added latency | nodes | sessions | sessions/s | client CPU µs/write | server CPU µs/write |')
print('|---|---|---|---|---|---|---|')
one('one at a time (max_in_flight=1)', 1, max(n // 10, 1000), 'max_in_flight=1')
one('in flight (max_in_flight=512)', 1, n)
one('in flight, batch=unlogged (16/node)', 1, n, 'batch=unlogged', 'batch_size=16')
one('one at a time (max_in_flight=1)', 3, max(n // 10, 1000), 'max_in_flight=1')
one('in flight (max_in_flight=512)', 3, n)
one('in flight, token_aware=0', 3, n, 'token_aware=0')
one('in flight, batch=unlogged (16/node)', 3, n, 'batch=unlogged', 'batch_size=16')
# a server that takes 1 ms to acknowledge a write (a LOCAL_QUORUM write across
# racks is typically 0.5-2 ms): where requests in flight pay
one('one at a time (max_in_flight=1)', 1, max(n // 20, 500), 'max_in_flight=1', latency_ms=1)
one('in flight (max_in_flight=512)', 1, n, latency_ms=1)
one('in flight, batch=unlogged (16/node)', 1, n, 'batch=unlogged', 'batch_size=16', latency_ms=1)
