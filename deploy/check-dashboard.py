#!/usr/bin/env python3
"""Runs every query of the Grafana dashboard against a Prometheus server and says what each
returns: a query Prometheus refuses fails the check (exit 1); one with no series yet is listed
(a single node forwards nothing, a node that took no snapshot has no snapshot durations).

    deploy/check-dashboard.py http://127.0.0.1:9090 deploy/grafana-ordo.json
"""
import json
import sys
import urllib.parse
import urllib.request


def main():
    prometheus, dashboard = sys.argv[1], sys.argv[2]
    panels = json.load(open(dashboard))["panels"]
    failed = 0
    for panel in panels:
        for target in panel["targets"]:
            url = prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": target["expr"]})
            try:
                answer = json.load(urllib.request.urlopen(url, timeout=10))
            except Exception as e:  # an HTTP 400 is a query Prometheus refused
                print(f"FAIL  {panel['title']}: {target['expr']}: {e}")
                failed += 1
                continue
            series = answer.get("data", {}).get("result", [])
            state = "ok   " if series else "empty"
            print(f"{state} {panel['title']}: {len(series)} series")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
