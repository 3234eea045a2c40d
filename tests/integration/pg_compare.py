#!/usr/bin/python3
"""pg_compare.py SQLITE_DB PG_DUMP - compares the sessions tables of two runs.

PG_DUMP is the output of
  psql -AtX -F '\t' -c "SELECT session_id, user_id, array_to_json(pages) FROM sessions"
The rows are compared as sets of (session_id, user_id, pages). Prints a short
report and exits 1 when they differ, or when either table has a duplicate key.
"""
import json
import sqlite3
import sys


def load_sqlite(path):
    db = sqlite3.connect(path)
    rows = db.execute("SELECT session_id, user_id, pages FROM sessions").fetchall()
    return [(int(s), int(u), tuple(json.loads(p))) for s, u, p in rows]


def load_pg(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            s, u, p = line.split("\t", 2)
            rows.append((int(s), int(u), tuple(json.loads(p) or [])))
    return rows


def main():
    a = load_sqlite(sys.argv[1])
    b = load_pg(sys.argv[2])
    bad = 0
    for name, rows in (("sqlite", a), ("postgresql", b)):
        keys = [(s, u) for s, u, _ in rows]
        if len(set(keys)) != len(keys):
            print("%s: duplicate keys" % name)
            bad = 1
    sa, sb = set(a), set(b)
    if sa != sb:
        bad = 1
        print("only in sqlite: %d rows, e.g. %s" % (len(sa - sb), sorted(sa - sb)[:3]))
        print("only in postgresql: %d rows, e.g. %s" % (len(sb - sa), sorted(sb - sa)[:3]))
    print("sqlite %d rows, postgresql %d rows: %s" % (len(a), len(b), "DIFFERENT" if bad else "identical"))
    sys.exit(bad)


main()
