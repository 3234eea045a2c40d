#!/usr/bin/python3
"""Visits that leave N sessions open, for the memory and recovery figures.

gen_open.py N --out PATH

N distinct users (0..N-1), one visit each, with event times spread over 30 s
(2023-02-20T00:00:00.000 .. 00:00:29.999). The watermark never passes
30 s - L, and no session can close before last + G = 50 s, so a run without
--until-end ends with exactly N open sessions of one page each. Pages are
"page_<k>.html" (10 to 14 bytes, as in gen_visits.py).
"""
import argparse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with open(a.out, "wb", buffering=1 << 20) as f:
        n = a.n
        out = []
        for i in range(n):
            ms = i * 30000 // n
            out.append(b'{"user_id": %d, "page": "page_%d.html", '
                       b'"event_time": "2023-02-20T00:00:%02d.%03d"}\n'
                       % (i, i % 200, ms // 1000, ms % 1000))
            if len(out) == 65536:
                f.write(b"".join(out))
                out.clear()
        f.write(b"".join(out))


if __name__ == "__main__":
    main()
