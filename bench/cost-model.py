#!/usr/bin/env python3
"""Splits a node's CPU profile into the stages of an order (BENCHMARKS.md, issue 13).

Record the node with DWARF call graphs (the release build has line tables), then bucket:

    perf record -F 199 --call-graph dwarf,16384 -p "$(pgrep -f 'release/ordo server')" -- sleep 8
    perf script > node.txt
    bench/cost-model.py node.txt [--us-per-op 140]

Each sample goes to the first stage, in the order below, with a frame on its stack that
matches the stage's pattern; `--us-per-op` (a run's `server_cpu_us_per_op`) turns the shares
into microseconds per order.
"""
import argparse
import collections
import re

STAGES = [
    ("state store: the epoch's commit (into the overlay; sled before 2026-11-25)", r"ordo_storage::store::Store::commit"),
    ("state store: the checkpoint writer (sled's batch, behind the epochs)", r"ordo_storage::behind::write_loop"),
    ("execution: routing, locks, decisions, the rows they read", r"ordo_scheduler::exec::execute_epoch|ordo_scheduler::partition"),
    ("the rest of an epoch's apply (hash, feed, waiters)", r"StateMachine::apply_batch"),
    ("Raft log: append and fdatasync", r"ordo_storage::raft_log"),
    ("state store: sled's background flush", r"sled::threadpool|sled::pagecache::iobuf::maybe_seal|sled::flusher"),
    ("edge: validation and its reads", r"ordo::edge::"),
    ("sequencing: batcher, waiters", r"ordo_sequencer::(batcher|waiters)"),
    ("consensus: openraft", r"openraft::"),
    ("gRPC: tonic, hyper, h2 and the socket", r"\bh2::|hyper::|tonic::|hyper_util::|tokio::net|poll_write|poll_read"),
    ("tokio: scheduling, parking, timers", r"tokio::runtime|parking_lot|futex"),
]
OTHER = "other (kernel, unattributed)"


def samples(path):
    """Each sample's stack as one string of its frames (perf script's default output)."""
    stack = None
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if stack is not None:
                    yield " | ".join(stack)
                stack = None
            elif not line[0].isspace():
                stack = []
            elif stack is not None:
                parts = line.split(None, 1)
                if len(parts) == 2:
                    stack.append(parts[1].strip())
    if stack is not None:
        yield " | ".join(stack)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", help="perf script output")
    parser.add_argument("--us-per-op", type=float, help="server CPU µs per operation of the run")
    args = parser.parse_args()
    patterns = [(name, re.compile(pattern)) for name, pattern in STAGES]
    counts = collections.Counter()
    total = 0
    for stack in samples(args.script):
        total += 1
        counts[next((name for name, p in patterns if p.search(stack)), OTHER)] += 1
    if total == 0:
        raise SystemExit(f"{args.script}: no samples")
    print(f"| stage | share | µs/op |\n|---|---:|---:|")
    for name in [name for name, _ in STAGES] + [OTHER]:
        share = counts[name] / total
        us = f"{share * args.us_per_op:.0f}" if args.us_per_op else ""
        print(f"| {name} | {100 * share:.1f}% | {us} |")
    print(f"\n{total} samples")


if __name__ == "__main__":
    main()
