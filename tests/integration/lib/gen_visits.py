#!/usr/bin/python3
"""Deterministic visit-log generator for tests and benchmarks.

gen_visits.py N [--users U] [--seed S] [--disorder SECONDS] [--bad FRACTION]
              [--dup FRACTION] [--bots K] [--partitions P] [--out PATH]

Writes N JSON lines: visits of U users in roughly increasing event time with
bounded disorder, a fraction of exact duplicates and of malformed records
(invalid JSON, wrong types, impossible dates, invalid UTF-8, missing fields),
and K very active "bot" users. With --partitions P > 1 it writes one file per
partition (PATH.0, PATH.1, ...) with users spread by user_id % P, as a keyed
producer would.
"""
import argparse
import random
import sys

BAD = [
    b'not json at all',
    b'{"user_id": 1, "page": "x.html"',
    b'{"user_id": "12", "page": "x.html", "event_time": "2023-02-20T03:03:20"}',
    b'{"user_id": 12, "page": "x.html", "event_time": "2023-02-30T03:03:20"}',
    b'{"user_id": 12, "event_time": "2023-02-20T03:03:20"}',
    b'{"user_id": 12, "page": "\xff\xfe.html", "event_time": "2023-02-20T03:03:20"}',
    b'[1, 2, 3]',
    b'{"user_id": 1.5, "page": "x.html", "event_time": "2023-02-20T03:03:20"}',
    b'{"user_id": 99999999999999999999, "page": "x", "event_time": "2023-02-20T03:03:20"}',
    b'',
]


def fmt_time(t):
    # t: seconds since 2023-02-20T00:00:00, with millisecond fractions
    base_day = 20
    whole = int(t)
    ms = int(round((t - whole) * 1000))
    if ms == 1000:
        whole, ms = whole + 1, 0
    day, rem = divmod(whole, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    # stay inside February 2023 for small logs; roll into later days otherwise
    month, d = 2, base_day + day
    dim = {2: 28, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}
    while d > dim[month]:
        d -= dim[month]
        month += 1
    frac = f".{ms:03d}" if ms else ""
    return f"2023-{month:02d}-{d:02d}T{h:02d}:{m:02d}:{s:02d}{frac}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--disorder", type=float, default=5.0)
    ap.add_argument("--bad", type=float, default=0.0)
    ap.add_argument("--dup", type=float, default=0.0)
    ap.add_argument("--bots", type=int, default=0)
    ap.add_argument("--rate", type=float, default=50.0, help="visits per event-time second")
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--out", default="-")
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    outs = []
    if a.partitions > 1:
        outs = [open(f"{a.out}.{p}", "wb") for p in range(a.partitions)]
    else:
        outs = [sys.stdout.buffer if a.out == "-" else open(a.out, "wb")]
    clock = 0.0
    last = None
    for i in range(a.n):
        clock += rnd.expovariate(a.rate)
        if a.bots and rnd.random() < 0.2:
            user = rnd.randrange(a.bots)  # bots: users 0..K-1, very active
        else:
            user = a.bots + rnd.randrange(a.users)
        r = rnd.random()
        if last is not None and r < a.dup:
            line, user = last
        elif r < a.dup + a.bad:
            line = rnd.choice(BAD)
        else:
            t = max(0.0, clock - rnd.random() * a.disorder)
            line = (b'{"user_id": %d, "page": "page_%d.html", "event_time": "%s"}'
                    % (user, rnd.randrange(200), fmt_time(t).encode()))
            last = (line, user)
        outs[user % len(outs)].write(line + b"\n")
    for o in outs:
        o.flush()


if __name__ == "__main__":
    main()
