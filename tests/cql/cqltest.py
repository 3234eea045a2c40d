"""
cqltest.py - shared helpers of the CQL tests: start and stop cql-testserver,
talk to its control port, make throwaway TLS certificates.

Every server a test starts is bounded: the helper waits at most a few seconds
for it to come up, the server itself exits after --max-seconds, and stop()
terminates it (then kills it) when the test is done, whatever happened.
"""

import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, 'cql-testserver')
PYTHON = '/usr/bin/python3'


class TestServer:
    def __init__(self, nodes=1, auth=None, tls=None, faults=(), tokens=8, max_seconds=300,
                 port=0, dump_frames=None):
        cmd = [PYTHON, SERVER, '--port', str(port), '--control-port', '0', '--nodes', str(nodes),
               '--tokens', str(tokens), '--max-seconds', str(max_seconds)]
        if auth:
            cmd += ['--auth', auth]
        if tls:
            cmd += ['--tls-cert', tls[0], '--tls-key', tls[1]]
        for f in faults:
            cmd += ['--fault', f]
        if dump_frames:
            cmd += ['--dump-frames', dump_frames]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
        deadline = time.time() + 15
        line = ''
        while time.time() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                line = self.proc.stdout.readline()
                break
            if self.proc.poll() is not None:
                break
        if not line.startswith('READY'):
            self.stop()
            raise RuntimeError('cql-testserver did not start: %r' % line)
        kv = dict(w.split('=') for w in line.split()[1:])
        self.port = int(kv['port'])
        self.control_port = int(kv['control'])
        self.nodes = nodes
        self._ctl = None

    def control(self, command):
        if self._ctl is None:
            self._ctl = socket.create_connection(('127.0.0.1', self.control_port), timeout=10)
            self._ctl_file = self._ctl.makefile('r')
        self._ctl.sendall(command.encode() + b'\n')
        out = self._ctl_file.readline().strip()
        if out.startswith('error'):
            raise RuntimeError('control %r: %s' % (command, out))
        return out

    def stats(self):
        return json.loads(self.control('stats'))

    def rows(self, table='dedp.sessions'):
        return json.loads(self.control('rows ' + table))

    def stop(self):
        if getattr(self, '_ctl', None):
            self._ctl.close()
            self._ctl = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def make_certs(directory, ips=('127.0.0.1', '127.0.0.2', '127.0.0.3')):
    """A CA and a server certificate for the loopback addresses; returns
    (ca.pem, server.pem, server.key, other-ca.pem)."""
    def run(*args):
        subprocess.run(['openssl'] + list(args), check=True, cwd=directory,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    for name in ('ca', 'other'):
        run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', name + '.key',
            '-out', name + '.pem', '-days', '2', '-subj', '/CN=cql test ' + name)
    run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr',
        '-subj', '/CN=cql-testserver')
    with open(os.path.join(directory, 'san.ext'), 'w') as f:
        f.write('subjectAltName=' + ','.join('IP:' + ip for ip in ips) + ',DNS:localhost\n')
    run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key',
        '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'san.ext')
    return tuple(os.path.join(directory, f) for f in ('ca.pem', 'server.pem', 'server.key', 'other.pem'))


class Results:
    """Counts checks and prints the closing 'N passed, N failed' line."""

    def __init__(self, name):
        self.name, self.passed, self.failed = name, 0, 0

    def check(self, cond, what):
        if cond:
            self.passed += 1
            print('ok   - %s' % what, flush=True)
        else:
            self.failed += 1
            print('FAIL - %s' % what, flush=True)
        return cond

    def equal(self, got, want, what):
        ok = got == want
        if not ok:
            print('       got:  %r\n       want: %r' % (got, want), flush=True)
        return self.check(ok, what)

    def finish(self):
        print('%s: %d passed, %d failed' % (self.name, self.passed, self.failed), flush=True)
        sys.exit(1 if self.failed or not self.passed else 0)


def tmpdir():
    return tempfile.mkdtemp(prefix='cqltest.')
