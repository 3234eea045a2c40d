"""An independent batch computation of the sessions a JSON-lines log must
give, written from docs/semantics.md without looking at the C engine: the
tests compare the job's table with it.

Single-partition logs (a file): the log position of a line is its byte
offset, its append time 0, its partition 0.

The record layout options (--field, --user-type, --time-format) are a
`layout` dict: {"user": "/userId", "page": "/context/url", "time": "/ts",
"user_type": "string", "time_format": "epoch_ms"}; missing keys take the
defaults.
"""
import json
import re
import struct
from decimal import Decimal, ROUND_FLOOR

import xxhash

TS = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?"
                r"(Z|z|[+-]\d{2}:\d{2})?$")
DIM = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def days_from_civil(y, m, d):
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m - 3 if m > 2 else m + 9) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_ts(s):
    m = TS.match(s)
    if not m:
        return None
    y, mo, d, h, mi, se = (int(g) for g in m.groups()[:6])
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if not (1 <= mo <= 12 and 1 <= d <= (29 if mo == 2 and leap else DIM[mo - 1])
            and h <= 23 and mi <= 59 and se <= 59):
        return None
    frac = m.group(7)
    us = int((frac[1:] + "000000")[:6]) if frac else 0
    off = 0
    z = m.group(8)
    if z and z not in "Zz":
        oh, om = int(z[1:3]), int(z[4:6])
        if oh > 23 or om > 59:
            return None
        off = (oh * 3600 + om * 60) * (-1 if z[0] == "-" else 1)
    t = (days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - off) * 1000000 + us
    return t if MIN_US <= t <= MAX_US else None  # the years 0000-9999 in UTC


def session_id(user, append_ts=0, partition=0, offset=0):
    """docs/semantics.md: "sz1" + le64 user for int users, "sz1s" + le32
    length + UTF-8 bytes for string users, then the position."""
    pos = struct.pack("<qiq", append_ts, partition, offset)
    if isinstance(user, str):
        b = user.encode("utf-8")
        h = xxhash.xxh3_64_intdigest(b"sz1s" + struct.pack("<I", len(b)) + b + pos)
    else:
        h = xxhash.xxh3_64_intdigest(b"sz1" + struct.pack("<q", user) + pos)
    return h - (1 << 64) if h >= 1 << 63 else h


def _reject(name):
    raise ValueError(name)


class _Pairs(list):
    """A JSON object as its (key, value) pairs, duplicates kept."""


class _Float(str):
    """A JSON number with a fraction or exponent, as its text."""


DEFAULT_LAYOUT = {"user": "/user_id", "page": "/page", "time": "/event_time",
                  "user_type": "int", "time_format": "iso8601"}
EPOCH_DECIMALS = {"epoch_s": 0, "epoch_ms": 3, "epoch_us": 6, "epoch_ns": 9}
EPOCH_TEXT = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
MIN_US, MAX_US = -62167219200 * 10**6, 253402300799999999
USER_MAX_BYTES = 512


def pointer_tokens(ptr):
    """RFC 6901: "/a~1b/0" -> ["a/b", "0"]."""
    assert ptr.startswith("/")
    return [t.replace("~1", "/").replace("~0", "~") for t in ptr[1:].split("/")]


def resolve(doc, ptr):
    """The value a pointer names, or raises ValueError (missing, or a key on
    the path present twice in one object)."""
    cur = doc
    for tok in pointer_tokens(ptr):
        if isinstance(cur, _Pairs):
            hits = [v for k, v in cur if k == tok]
            if len(hits) != 1:
                raise ValueError("missing" if not hits else "duplicate")
            cur = hits[0]
        elif isinstance(cur, list) and re.fullmatch(r"0|[1-9][0-9]{0,8}", tok) and int(tok) < len(cur):
            cur = cur[int(tok)]
        else:
            raise ValueError("missing")
    return cur


def epoch_us(value, decimals):
    """Epoch time in units of 10^-decimals s -> microseconds, floor; None if refused."""
    if type(value) is int:
        text = str(value)
    elif isinstance(value, (_Float, str)):
        text = str(value)
    else:
        return None
    if not EPOCH_TEXT.match(text):
        return None
    us = int((Decimal(text) * Decimal(10) ** (6 - decimals)).to_integral_value(rounding=ROUND_FLOOR))
    return us if MIN_US <= us <= MAX_US else None


def good_string(s):
    if type(s) is not str or "\0" in s:
        return False
    try:
        return 0 < len(s.encode("utf-8")) <= USER_MAX_BYTES
    except UnicodeEncodeError:  # lone surrogates from \ud800 escapes
        return False


MAX_DEPTH = 128  # objects and arrays nest at most this deep, the record counting as 1


def nesting_depth(text):
    """The deepest nesting of objects and arrays in a JSON text."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_line(raw, layout=None, key=None):
    """Returns (user, t_us, page) or None for a record that must be dead-lettered.
    With layout["user_from"] == "key" (--user-from key, string users only
    here) the user is key, the Kafka record's key bytes (None: it has none)."""
    lay = dict(DEFAULT_LAYOUT, **(layout or {}))
    from_key = lay.get("user_from") == "key"
    assert not from_key or lay["user_type"] == "string"
    try:
        text = raw.decode("utf-8")
        if text.count("[") + text.count("{") > MAX_DEPTH and nesting_depth(text) > MAX_DEPTH:
            return None  # too_deep
        doc = json.loads(text, parse_constant=_reject, object_pairs_hook=_Pairs, parse_float=_Float)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, _Pairs):
        return None
    try:
        p, t = resolve(doc, lay["page"]), resolve(doc, lay["time"])
        u = key.decode("utf-8") if from_key and key is not None else \
            resolve(doc, lay["user"]) if not from_key else None
    except (ValueError, UnicodeDecodeError):
        return None
    if lay["user_type"] == "int":
        if type(u) is not int or not -(1 << 63) <= u < (1 << 63):
            return None
    elif not good_string(u):
        return None
    if type(p) is not str or "\0" in p:
        return None
    try:
        p.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if lay["time_format"] == "iso8601":
        tu = parse_ts(t) if type(t) is str else None
    else:
        tu = epoch_us(t, EPOCH_DECIMALS[lay["time_format"]])
    if tu is None:
        return None
    return u, tu, p


MAX_SESSION_BYTES = 8 << 20  # --max-session-bytes' default
MAX_FUTURE_US = 3600 * 10**6  # --max-future's default


def too_far_ahead(t, append_ts_ms, max_future_us=MAX_FUTURE_US):
    """The future rule for a record with an append time (Kafka's timestamp)."""
    return bool(append_ts_ms) and t > append_ts_ms * 1000 + max_future_us


# The future rule for records without append time, on one partition: a
# visit that starts it, or jumps more than F above the highest accepted time,
# is held until the next visit, which confirms it (not more than F below it)
# or refutes it (future); the end of the input confirms it.


def sessions(data, gap_us=50_000_000, lateness_us=10_000_000, max_pages=10000, layout=None,
             max_session_bytes=MAX_SESSION_BYTES, max_future_us=MAX_FUTURE_US, extra=None):
    """data: the bytes of a JSONL file. Returns (rows, counts): rows maps
    (session_id, user_id) -> list of pages; counts has records, invalid, late,
    capped, visits, future."""
    offset = 0
    visits = []
    counts = dict(records=0, invalid=0, late=0, capped=0, visits=0, future=0)
    max_t = None
    held = None

    def accept(t, u, pos, p):
        nonlocal max_t
        if max_t is not None and t < max_t - lateness_us:
            counts["late"] += 1
            return
        max_t = t if max_t is None else max(max_t, t)
        visits.append((u, t, 0, 0, pos, p))

    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for raw in lines:
        pos = offset
        offset += len(raw) + 1
        counts["records"] += 1
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        v = parse_line(raw, layout)
        if v is None:
            counts["invalid"] += 1
            continue
        u, t, p = v
        if held is not None:
            if t >= held[0] - max_future_us:
                accept(*held)
            else:
                counts["future"] += 1
            held = None
        if max_t is None or t > max_t + max_future_us:
            held = (t, u, pos, p)
        else:
            accept(t, u, pos, p)
    if held is not None:  # the end of the input confirms it
        accept(*held)
    rows = group_sessions(visits, gap_us, max_pages, counts, max_session_bytes, extra)
    return rows, counts


def group_sessions(visits, gap_us, max_pages=None, counts=None, max_session_bytes=None, extra=None):
    """The sessions of accepted visits, each (user, t, append_ts, partition,
    offset, page): per user, runs of times with gaps <= G; pages in (t,
    partition, offset) order, the longest run of the first ones that holds at
    most max_pages pages and max_session_bytes bytes of UTF-8 kept; the id
    from the earliest-appended visit by (append_ts, partition, offset).
    Returns {(session_id, user_id): pages}; adds visits and capped to counts,
    and with a dict extra, extra[(session_id, user_id)] = (first_t_us,
    last_t_us, visits) (visits: every member, those over the caps too)."""
    visits = sorted(visits, key=lambda v: (v[0], v[1], v[3], v[4]))
    rows = {}
    i = 0
    while i < len(visits):
        j = i + 1
        while j < len(visits) and visits[j][0] == visits[i][0] and visits[j][1] - visits[j - 1][1] <= gap_us:
            j += 1
        group = visits[i:j]
        first = min(group, key=lambda v: (v[2], v[3], v[4]))
        pages = [v[5] for v in group]
        kept = pages if max_pages is None else pages[:max_pages]
        if max_session_bytes is not None:
            total = 0
            for k, page in enumerate(kept):
                total += len(page.encode("utf-8"))
                if total > max_session_bytes:
                    kept = kept[:k]
                    break
        if counts is not None:
            counts["capped"] = counts.get("capped", 0) + len(pages) - len(kept)
            counts["visits"] = counts.get("visits", 0) + len(kept)
            counts["sessions"] = counts.get("sessions", 0) + 1
        key = (session_id(group[0][0], first[2], first[3], first[4]), group[0][0])
        rows[key] = kept
        if extra is not None:
            extra[key] = (group[0][1], group[-1][1], len(group))
        i = j
    return rows
