#!/usr/bin/env python3
"""Issue 13's goals against one `bench/benchmarks.sh` run: reads the run's results.json files
under OUT and prints a markdown table, each goal beside what the run measured.

    bench/goals.py bench-results/latest
"""
import json
import os
import sys


def runs(out, name):
    path = os.path.join(out, name, "results.json")
    if not os.path.exists(path):
        return {}
    return {r["target"]: r for r in json.load(open(path))["runs"]}


def ms(us):
    return f"{us / 1000:.0f} ms"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "bench-results/latest"
    rows = []

    def goal(name, want, got, met):
        rows.append((name, want, got, "met" if met else "not met"))

    hot = runs(out, "hot-items")
    redis = hot.get("redis")
    for target, share in (("ordo-1", 1.0), ("ordo-1-stream", 1.0), ("ordo-3", 0.5), ("ordo-3-stream", 0.5)):
        r = hot.get(target)
        if r and redis:
            ratio = r["throughput_ops_s"] / redis["throughput_ops_s"]
            p99 = r["latency_us"]["p99"]
            goal(
                f"hot-items {target} vs Redis (appendfsync always), p99",
                f"≥ {share:g}× Redis, p99 ≤ 20 ms",
                f"{ratio:.2f}× ({r['throughput_ops_s']:.0f} vs {redis['throughput_ops_s']:.0f} ops/s), p99 {ms(p99)}",
                ratio >= share and p99 <= 20_000,
            )
    for target in ("ordo-1", "ordo-1-stream"):
        r = hot.get(target)
        if r:
            cpu = r["server_cpu_us_per_op"]
            goal(f"server CPU per single-order call, {target} (hot-items)", "≤ 15 µs", f"{cpu:.0f} µs", cpu <= 15)

    for workload in ("uniform", "hot-items"):
        for batch in (100, 1000):
            b = runs(out, f"batched-{workload}-{batch}")
            for target, want in (("ordo-1-batch", 200_000), ("ordo-3-batch", 100_000)):
                r = b.get(target)
                if not r:
                    continue
                lines = r["throughput_ops_s"]
                cpu = r["server_cpu_us_per_op"]
                p99 = r["latency_us"]["p99"]
                goal(
                    f"batched {workload}, {batch} orders per call, {target}",
                    f"≥ {want:,} lines/s, ≤ 3 µs CPU per line" + (", p99 ≤ 50 ms" if batch == 1000 else ""),
                    f"{lines:,.0f} lines/s, {cpu:.0f} µs per line, p99 {ms(p99)}",
                    lines >= want and cpu <= 3 and (batch != 1000 or p99 <= 50_000),
                )

    browse = runs(out, "browse")
    if browse.get("ordo-1") and browse.get("redis"):
        r, base = browse["ordo-1"], browse["redis"]
        ratio = r["throughput_ops_s"] / base["throughput_ops_s"]
        cpu = r["server_cpu_us_per_op"]
        goal(
            "browse ordo-1 vs Redis, CPU per read",
            "≥ 1× Redis, ≤ 10 µs",
            f"{ratio:.2f}× ({r['throughput_ops_s']:.0f} vs {base['throughput_ops_s']:.0f} ops/s), {cpu:.0f} µs per operation",
            ratio >= 1 and cpu <= 10,
        )

    growth = sorted(
        (r for name in os.listdir(out) if name.startswith("growth-") for r in runs(out, name).values()),
        key=lambda r: r["dataset"]["stock_rows"],
    ) if os.path.isdir(out) else []
    if len(growth) >= 2:
        small, large = growth[0], growth[-1]
        ratio = large["throughput_ops_s"] / small["throughput_ops_s"]
        d = large["dataset"]
        goal(
            f"uniform ordo-1 with {d['stock_rows']:,} rows vs {small['dataset']['stock_rows']:,}",
            "within 20%",
            f"{ratio:.2f}× ({large['throughput_ops_s']:.0f} vs {small['throughput_ops_s']:.0f} ops/s); "
            f"RSS {d['server_rss_mib']:.0f} MiB ({d['server_rss_mib'] * 1e6 / d['stock_rows']:.0f} MiB per million rows); loaded in {d['load_s']:.0f} s",
            ratio >= 0.8,
        )

    print("| goal | wanted | measured in this run | verdict |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
