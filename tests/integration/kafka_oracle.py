"""The sessions a Kafka topic must give, computed independently of the C code
from docs/semantics.md and docs/kafka.md, for the Kafka tests.

Input: a dump of the topic, one record per line as kcat prints it with
-f '%p\\t%o\\t%T\\t%s\\n' (partition, offset, timestamp ms, payload); with
--user-from key, -f '%p\\t%o\\t%T\\t%k\\t%s\\n' (the key before the payload,
empty for none). --user-type string takes string users (docs/semantics.md).
Output: the expected table as "session_id|user_id|pages" lines, ordered like
`SELECT ... ORDER BY session_id, user_id`, and the counts on stderr.

The model for a bounded replay of every partition (--until-end, or a live run
that is compared once it has read everything): a partition's watermark is
the highest event time accepted on it minus the lateness, and a visit is late
exactly when it is below its own partition's watermark. (The closing
watermark never exceeds the watermark of a partition that still has records
to deliver, so it adds no rejection of its own.) Sessions are the connected
components of each user's accepted visit times with gaps <= G, across
partitions; pages in (event time, partition, offset) order; the id hashes the
user with the (timestamp, partition, offset) of the session's earliest
record in that order.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import oracle  # noqa: E402  (the core's: parse_line, session_id)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gap", type=float, default=50.0, help="seconds")
    ap.add_argument("--lateness", type=float, default=10.0, help="seconds")
    ap.add_argument("--max-session-bytes", type=int, default=oracle.MAX_SESSION_BYTES)
    ap.add_argument("--counts", action="store_true", help="print the counts as JSON instead")
    ap.add_argument("--user-type", choices=["int", "string"], default="int")
    ap.add_argument("--user-from", choices=["field", "key"], default="field")
    ap.add_argument("dump")
    a = ap.parse_args()
    gap, lateness = int(a.gap * 1e6), int(a.lateness * 1e6)
    layout = {"user_type": a.user_type, "user_from": a.user_from}
    from_key = a.user_from == "key"

    by_part = {}
    with open(a.dump, "rb") as f:
        for line in f:
            line = line.rstrip(b"\n")
            if from_key:
                p, o, ts, key, payload = line.split(b"\t", 4)
            else:
                (p, o, ts, payload), key = line.split(b"\t", 3), None
            by_part.setdefault(int(p), []).append((int(o), int(ts), payload, key or None))
    counts = dict(records=0, invalid=0, late=0, visits=0, sessions=0, future=0)
    visits = []
    for p, recs in by_part.items():
        recs.sort()
        max_t = None
        for off, ts, payload, key in recs:
            counts["records"] += 1
            v = oracle.parse_line(payload, layout, key)
            if v is None:
                counts["invalid"] += 1
                continue
            u, t, page = v
            if oracle.too_far_ahead(t, ts):  # the topics of the tests all have timestamps
                counts["future"] += 1
                continue
            if max_t is not None and t < max_t - lateness:
                counts["late"] += 1
                continue
            max_t = t if max_t is None else max(max_t, t)
            visits.append((u, t, ts, p, off, page))
    table = oracle.group_sessions(visits, gap, None, counts, a.max_session_bytes)
    rows = [(sid, u, json.dumps(pages, separators=(",", ":"), ensure_ascii=False))
            for (sid, u), pages in table.items()]
    rows.sort()
    if a.counts:
        print(json.dumps(counts))
        return
    out = sys.stdout
    for sid, u, pages in rows:
        out.write(f"{sid}|{u}|{pages}\n")
    print(json.dumps(counts), file=sys.stderr)


if __name__ == "__main__":
    main()
