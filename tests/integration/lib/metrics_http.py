"""The metrics endpoint (--metrics-listen) as the integration tests read it:
one GET, the Prometheus text format parsed, and the port a job says it
serves on. Shared by metrics_test.py, monitoring_test.py and scaleout_test.py."""
import re
import urllib.error
import urllib.request

SERVING = re.compile(r"serving http://127\.0\.0\.1:(\d+)/metrics")


def http_get(url, timeout=5):
    """(status, body) of GET url: an HTTP error's own status and body, and
    (0, the reason) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def get(port, path="/metrics"):
    """(status, body) of GET http://127.0.0.1:port/path."""
    return http_get(f"http://127.0.0.1:{port}{path}")


def parse_metrics(text):
    """{'name{labels}': value} of the exposition text."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def scrape(port):
    """The job's metrics as parse_metrics gives them; raises when /metrics
    does not answer 200."""
    status, body = get(port)
    if status != 200:
        raise AssertionError(f"GET /metrics on port {port}: {status} {body[:200]}")
    return parse_metrics(body)


def served_port(log_text):
    """The port of the job's 'serving http://127.0.0.1:PORT/metrics' log
    line, or None before it."""
    m = SERVING.search(log_text)
    return int(m.group(1)) if m else None
