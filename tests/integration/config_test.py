#!/usr/bin/python3
"""Configuration from a file, the environment and the command line, and
secrets kept off the command line (issue 14):

  config_test.py layers | secrets_pg

layers: a job configured by a YAML file, SESSIONIZER_* variables and options
together writes the same table as the same settings given as options only;
`sessionizer config` prints a file that runs the same job again.
secrets_pg: a real PostgreSQL server with password (scram) authentication;
the password reaches it from a file named in the configuration
(password=@file:), never appears in the process's command line, environment
or `sessionizer config`, and a bad secret file is refused saying why.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import BIN, ROOT, content, generate, run, run_checks, summary, tmpdir  # noqa: E402

PG = os.path.join(ROOT, "tests", "integration", "lib", "pg_server.sh")


def env_without_sessionizer(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
    env.update(extra)
    return env


def layers(c):
    d = tmpdir()
    log = f"{d}/visits.jsonl"
    generate(log, 20000, "--users", 300, "--disorder", 20, "--bad", 0.01, "--seed", 21)
    # The reference: every setting on the command line.
    run("run", "--source", f"file:{log}", "--sink", f"sqlite:{d}/ref.db", "--until-end", "-q",
        "--gap", "20s", "--lateness", "5s", "--max-pages", "3", "--dlq", f"jsonl:{d}/ref.dlq")
    # The same job from three layers, each overriding the one below it.
    with open(f"{d}/job.yaml", "w") as f:
        f.write(f"# a job\nsource: file:{log}\nsink: sqlite:{d}/layered.db\n"
                f"gap: 99s          # overridden by the command line\n"
                f"lateness: 1h      # overridden by the environment\n"
                f"max-pages: 3\nuntil-end: true\nquiet: true\ndlq: jsonl:{d}/layered.dlq\n")
    env = env_without_sessionizer(SESSIONIZER_LATENESS="5s")
    p = subprocess.run([BIN, "run", "--config", f"{d}/job.yaml", "--gap", "20s"], env=env,
                       capture_output=True)
    c.eq(p.returncode, 0, "the layered job runs: " + p.stderr.decode()[-300:])
    ref = content(f"{d}/ref.db")
    c.check(len(ref) > 1000, f"the reference has sessions ({len(ref)})")
    c.eq(content(f"{d}/layered.db"), ref, "file + environment + options = options alone")
    c.eq(open(f"{d}/layered.dlq").read().count("\n"), open(f"{d}/ref.dlq").read().count("\n"),
         "the same dead letters")

    # What `sessionizer config` prints is a configuration that runs the same job.
    p = subprocess.run([BIN, "config", "--config", f"{d}/job.yaml", "--gap", "20s",
                        "--sink", f"sqlite:{d}/saved.db", "--dlq", f"jsonl:{d}/saved.dlq"],
                       env=env, capture_output=True)
    c.eq(p.returncode, 0, "sessionizer config")
    text = p.stdout.decode()
    for line in ["gap: 20s   # command line", "lateness: 5s   # environment",
                 "max-pages: 3   # config file", "commit-every: 100k   # default"]:
        c.check(line in text, f"config shows '{line}'")
    with open(f"{d}/saved.yaml", "w") as f:
        f.write(text)
    p = subprocess.run([BIN, "run", "--config", f"{d}/saved.yaml"], env=env_without_sessionizer(),
                       capture_output=True)
    c.eq(p.returncode, 0, "the printed configuration runs: " + p.stderr.decode()[-300:])
    c.eq(content(f"{d}/saved.db"), ref, "and writes the same table")

    # The environment alone configures a job (SESSIONIZER_CONFIG names a file too).
    env = env_without_sessionizer(SESSIONIZER_SOURCE=f"file:{log}",
                                  SESSIONIZER_SINK=f"sqlite:{d}/env.db",
                                  SESSIONIZER_GAP="20s", SESSIONIZER_LATENESS="5s",
                                  SESSIONIZER_MAX_PAGES="3", SESSIONIZER_UNTIL_END="true",
                                  SESSIONIZER_DLQ=f"jsonl:{d}/env.dlq", SESSIONIZER_QUIET="1")
    p = subprocess.run([BIN, "run"], env=env, capture_output=True)
    c.eq(p.returncode, 0, "a job from the environment alone: " + p.stderr.decode()[-300:])
    c.eq(content(f"{d}/env.db"), ref, "writes the same table")
    # A misspelt variable is warned about; a variable for tests is not.
    p = subprocess.run([BIN, "config"], capture_output=True,
                       env=dict(env, SESSIONIZER_MAX_PGAES="3", SESSIONIZER_SPILL_BUDGET="4096",
                                SESSIONIZER_SNAPSHOT_MIN_BYTES="4096",
                                SESSIONIZER_TEST_SYNC_DELAY_MS="1"))
    err = p.stderr.decode()
    c.check(p.returncode == 0 and "SESSIONIZER_MAX_PGAES is not an option's variable" in err,
            "a misspelt variable is warned about: " + err[:300])
    c.eq(err.count("is not an option's variable"), 1, "and nothing else: " + err[:300])
    # A bad value names where it came from.
    env["SESSIONIZER_GAP"] = "fifty"
    p = subprocess.run([BIN, "run"], env=env, capture_output=True)
    c.eq(p.returncode, 2, "a bad variable is a usage error")
    c.check(b"SESSIONIZER_GAP 'fifty'" in p.stderr, "naming the variable: " + p.stderr.decode()[:200])
    p = subprocess.run([BIN, "run", "--config", f"{d}/job.yaml", "--max-pages", "0"],
                       env=env_without_sessionizer(), capture_output=True)
    c.check(p.returncode == 2 and b"--max-pages '0'" in p.stderr, "a bad option over a file")
    with open(f"{d}/typo.yaml", "w") as f:
        f.write("source: \"-\"\nsink: null:x\nmax_pages: 3\n")
    p = subprocess.run([BIN, "run", "--config", f"{d}/typo.yaml"], env=env_without_sessionizer(),
                       capture_output=True)
    c.check(p.returncode == 2 and b"typo.yaml:3: unknown option 'max_pages'" in p.stderr,
            "a misspelt key is refused with its line: " + p.stderr.decode()[:200])


def secrets_pg(c):
    d = tmpdir()
    srv = f"{d}/pg"
    os.mkdir(srv)
    os.chmod(d, 0o755)
    out = subprocess.run([PG, "start", srv], capture_output=True, check=True).stdout.decode()
    try:
        env = {}
        for line in out.splitlines():
            if line.startswith("export "):
                k, v = line[7:].split("=", 1)
                env[k] = v.strip("'")
        password, port = env["PG_SERVER_PASSWORD"], env["PG_SERVER_PORT"]
        with open(f"{d}/pg-password", "w") as f:
            f.write(password + "\n")
        os.chmod(f"{d}/pg-password", 0o600)
        uri = f"postgresql://postgres@127.0.0.1:{port}/postgres?connect_timeout=5"
        with open(f"{d}/job.yaml", "w") as f:
            f.write(f"source: \"-\"\nsink: \"{uri}\"\ndlq: jsonl:{d}/dlq.jsonl\n"
                    f"commit-interval: 100ms\n"
                    f"sink-opt:\n  password: \"@file:{d}/pg-password\"\n  retry_timeout: 2s\n")
        visits = b"".join(b'{"user_id": %d, "page": "p%d", "event_time": "2024-01-01T00:00:%02dZ"}\n'
                          % (u, i, i) for i in range(10) for u in range(1, 4))
        # A live run: the password is in neither its command line nor its environment.
        p = subprocess.Popen([BIN, "run", "--config", f"{d}/job.yaml", "--until-end"],
                             stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env_without_sessionizer())
        time.sleep(0.5)
        cmdline = open(f"/proc/{p.pid}/cmdline", "rb").read()
        environ = open(f"/proc/{p.pid}/environ", "rb").read()
        c.check(b"--config" in cmdline, "the live process is the job")
        c.check(password.encode() not in cmdline, "the password is not in /proc/PID/cmdline")
        c.check(password.encode() not in environ, "nor in /proc/PID/environ")
        _, err = p.communicate(visits, timeout=60)
        c.eq(p.returncode, 0, "the job logs in with the password from the file: " + err.decode()[-400:])
        c.check(password.encode() not in err, "and never prints it")
        rows = subprocess.run([PG, "psql", srv, "-tAc", "SELECT count(*) FROM sessions"],
                              capture_output=True, check=True).stdout.decode().strip()
        c.eq(rows, "3", "its sessions are in PostgreSQL")

        # The same password from an environment variable named in the file.
        with open(f"{d}/env.yaml", "w") as f:
            f.write(f"sink: \"{uri}\"\nsink-opt: {{password: \"@env:PG_PASSWORD\", retry_timeout: 2s}}\n")
        p = subprocess.run([BIN, "run", "--config", f"{d}/env.yaml", "--source", "-", "--until-end",
                            "-q", "--dlq", f"jsonl:{d}/dlq2.jsonl"], input=visits, capture_output=True,
                           env=env_without_sessionizer(PG_PASSWORD=password))
        c.eq(p.returncode, 0, "password=@env:NAME logs in too: " + p.stderr.decode()[-300:])

        # Without it, the server refuses the login (the test is not passing by trust).
        p = subprocess.run([BIN, "run", "--source", "-", "--sink", uri, "--sink-opt",
                            "retry_timeout=2s", "--until-end", "-q", "--dlq", f"jsonl:{d}/dlq3.jsonl"],
                           input=visits, capture_output=True, env=env_without_sessionizer(), timeout=60)
        c.eq(p.returncode, 1, "no password: the job fails")
        c.check(b"password" in p.stderr, "on authentication: " + p.stderr.decode()[-300:])

        # A bad secret file says what is wrong with it, before connecting.
        open(f"{d}/empty", "w").close()
        for ref, why in [(f"{d}/empty", b"is empty"), (d, b"is a directory"),
                         (f"{d}/missing", b"No such file")]:
            p = subprocess.run([BIN, "run", "--config", f"{d}/job.yaml", "--sink-opt",
                                f"password=@file:{ref}"], input=b"", capture_output=True,
                               env=env_without_sessionizer())
            c.check(p.returncode == 2 and why in p.stderr,
                    f"@file:{ref} refused: {p.stderr.decode()[:200]}")

        # `sessionizer config` shows the reference, never the secret; an inline
        # password (in the URI or as a value) shows as <redacted>.
        p = subprocess.run([BIN, "config", "--config", f"{d}/job.yaml", "-X",
                            "sasl.password=inline-secret", "--dlq",
                            f"postgresql://postgres:{password}@127.0.0.1/x"],
                           capture_output=True, env=env_without_sessionizer())
        text = p.stdout.decode()
        c.eq(p.returncode, 0, "sessionizer config")
        c.check(f'"password": "@file:{d}/pg-password"' in text, "the file reference is shown")
        c.check(password not in text and "inline-secret" not in text, "no secret is shown")
        c.check('"sasl.password": "<redacted>"' in text and "postgres:<redacted>@" in text,
                "inline secrets are <redacted>")
    finally:
        subprocess.run([PG, "destroy", srv], capture_output=True)


if __name__ == "__main__":
    run_checks(f"config.{sys.argv[1]}", {"layers": layers, "secrets_pg": secrets_pg}[sys.argv[1]])
