#!/usr/bin/env python3
"""/metrics checked by a strict parser, and the Grafana dashboard checked against it.

Starts a local 3-node cluster, makes a VM and live-migrates it (so migration series exist),
scrapes /metrics on the plain-HTTP listener and on the HTTPS API listener of every node,
parses each with prometheus-client's OpenMetrics parser (which refuses what the format does
not allow), checks the Content-Type, that the series the operations guide promises exist, and
that every metric docs/grafana/paddock.json queries is served.
Usage: tests/metrics/check.py [target/debug]
"""

import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug"))
BASE = 8201

try:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
except ImportError:
    print("SKIP metrics check: python prometheus-client is not installed (pip install prometheus-client)")
    sys.exit(0)

REQUIRED = [
    "paddock_raft_term", "paddock_raft_is_leader", "paddock_raft_applied_index", "paddock_raft_last_log_index",
    "paddock_raft_leader_changes_total", "paddock_raft_snapshot_index",
    "paddock_proposal_batch_size_bucket", "paddock_commit_seconds_bucket", "paddock_client_writes_total",
    "paddock_node_capacity", "paddock_node_allocated", "paddock_node_state", "paddock_node_heartbeat_age_seconds",
    "paddock_vms", "paddock_events_total", "paddock_ha_recovery_seconds_bucket",
    "paddock_migrations_active", "paddock_migrations_ended_total", "paddock_migration_bytes_total",
    "paddock_migration_duration_seconds_bucket", "paddock_migration_downtime_seconds_bucket",
    "paddock_api_requests_total", "paddock_api_request_seconds_bucket",
]


def scrape(url, context=None, token=None):
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        return response.headers.get("Content-Type"), response.read().decode()


def parse(text, where):
    names = set()
    families = list(text_string_to_metric_families(text))
    for family in families:
        for sample in family.samples:
            names.add(sample.name)
    if not families:
        raise SystemExit("%s: no metric families" % where)
    return names


def main():
    workdir = tempfile.mkdtemp(prefix="paddock-metrics-")
    paddock = os.path.join(BIN, "paddock")
    subprocess.run([paddock, "dev", "up", "--dir", workdir, "--base-port", str(BASE), "--detach"],
                   check=True, capture_output=True, timeout=120)
    try:
        env = dict(os.environ, PADDOCK_ENDPOINT="127.0.0.1:%d" % BASE, PADDOCK_CERTS_DIR=os.path.join(workdir, "certs"))
        run = lambda *args: subprocess.run([paddock, *args], env=env, check=True, capture_output=True, text=True)
        run("vm", "create", "m1", "--cpus", "1", "--memory", "64MiB", "--ha", "--wait")
        run("vm", "migrate", "m1")
        deadline = time.time() + 60
        while "completed" not in run("migration", "list", "--all").stdout:
            if time.time() > deadline:
                raise SystemExit("the migration did not complete")
            time.sleep(0.3)
        token = open(os.path.join(workdir, "token")).read().strip()
        tls = ssl.create_default_context(cafile=os.path.join(workdir, "certs", "ca.crt"))
        served = set()
        for i in range(3):
            # One API request first, so the API's own series exist on every node.
            scrape("https://127.0.0.1:%d/api/v1/cluster" % (BASE + 200 + i), tls, token)
            for url, context in [("http://127.0.0.1:%d/metrics" % (BASE + 100 + i), None),
                                 ("https://127.0.0.1:%d/metrics" % (BASE + 200 + i), tls)]:
                content_type, text = scrape(url, context)
                if not content_type.startswith("application/openmetrics-text; version=1.0.0"):
                    raise SystemExit("%s: Content-Type %r is not OpenMetrics" % (url, content_type))
                served |= parse(text, url)
        missing = [name for name in REQUIRED if name not in served]
        if missing:
            raise SystemExit("missing series: %s" % ", ".join(missing))
        # The Grafana dashboard queries only what exists.
        dashboard = json.load(open(os.path.join(ROOT, "docs", "grafana", "paddock.json")))
        queried = set()
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                queried |= set(re.findall(r"paddock_[a-z_]+", target["expr"]))
        unknown = sorted(q for q in queried if q not in served)
        if unknown:
            raise SystemExit("docs/grafana/paddock.json queries metrics no node serves: %s" % ", ".join(unknown))
        print("metrics check passed: %d series names parsed strictly on 6 endpoints; the dashboard's %d metrics all exist"
              % (len(served), len(queried)))
    finally:
        subprocess.run([paddock, "dev", "down", "--dir", workdir], capture_output=True)


if __name__ == "__main__":
    main()
