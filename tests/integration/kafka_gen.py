"""Deterministic multi-partition visit logs for the Kafka tests.

Writes DIR/p<N>.jsonl, one file per partition, to be produced with
`kcat -P -p N -l`. The users are spread over every partition (an unkeyed
producer), so sessions span partitions; partitions run at different record
rates over the same event-time span, so a replay interleaves them
differently depending on fetch sizes; event times jitter, a few records are
later than the allowed lateness, some are not JSON, and activity pauses now
and then for longer than the gap so that sessions close mid-stream.
With --empty K the last K partitions get no records at all.
"""
import argparse
import os
import random


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--records", type=int, default=4000, help="for partition 0")
    ap.add_argument("--users", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--empty", type=int, default=0)
    ap.add_argument("--start", type=int, default=1676851200, help="epoch seconds")
    ap.add_argument("out")
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)
    span = a.records * 0.5  # event-time seconds covered by every partition
    for p in range(a.partitions):
        path = os.path.join(a.out, f"p{p}.jsonl")
        with open(path, "w") as f:
            if p >= a.partitions - a.empty:
                continue
            n = max(1, a.records // (p + 1))
            for i in range(n):
                t = a.start + span * i / n
                # a pause longer than the gap every ~15% of the span
                t += int(t - a.start) // int(span * 0.15 + 1) * 120
                r = rnd.random()
                if r < 0.01:
                    f.write('{"user_id": "not a number", "page": "x", "event_time": "bad"}\n')
                    continue
                if r < 0.02:
                    f.write('{"user_id": 7, "page": \n')
                    continue
                if r < 0.03:
                    t -= 30 + rnd.random() * 30  # beyond the 10 s lateness: dead letter
                else:
                    t += rnd.uniform(-4, 4)
                user = rnd.randrange(a.users)
                whole = int(t)
                frac = int((t - whole) * 1000)
                ts = _iso(whole) + f".{frac:03d}"
                f.write(f'{{"user_id": {user}, "page": "p{p}-{i}.html", "event_time": "{ts}"}}\n')


def _iso(epoch):
    days, rem = divmod(epoch, 86400)
    # civil_from_days (H. Hinnant)
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y += m <= 2
    return f"{y:04d}-{m:02d}-{d:02d}T{rem // 3600:02d}:{rem % 3600 // 60:02d}:{rem % 60:02d}"


if __name__ == "__main__":
    main()
