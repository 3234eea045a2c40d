#!/usr/bin/python3
"""pg_gen_visits.py N [SEED] - N deterministic visits as JSON lines on stdout.

Test input for the PostgreSQL sink tests: many users, sessions of a few visits
with gaps that sometimes exceed the 50 s session gap, a little disorder, and
page names that need escaping in SQL and in array literals (quotes,
backslashes, commas, braces, the word NULL, non-ASCII).
"""
import json
import random
import sys
import time as _t

n = int(sys.argv[1])
rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 5)
t = 1676862200.0  # 2023-02-20T03:03:20Z
odd = ['a"b.html', 'back\\slash.html', 'c,d.html', '{brace}.html', 'NULL', 'été.html', "x'y.html", ' ']
out = sys.stdout
for i in range(n):
    # 200 users active at a time, one visit every 0.2 s on average: a user's
    # visits are ~40 s apart, so sessions of a few visits, often split by the
    # 50 s gap. Every 4000 visits, the next 200 users.
    t += rng.expovariate(5.0)
    user = 200 * (i // 4000) + rng.randrange(200)
    jitter = rng.uniform(-3, 0)  # small disorder, within the allowed lateness
    if rng.random() < 0.02:
        page = rng.choice(odd)
    else:
        page = "p%d.html" % rng.randrange(500)
    ts = t + jitter
    whole = int(ts)
    frac = int((ts - whole) * 1000)
    stamp = _t.strftime("%Y-%m-%dT%H:%M:%S", _t.gmtime(whole)) + ".%03dZ" % frac
    out.write(json.dumps({"user_id": user, "page": page, "event_time": stamp}, ensure_ascii=False) + "\n")
