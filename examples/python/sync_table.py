#!/usr/bin/env python3
"""Keep a local availability table in sync from Ordo's change feed, across a node restart.

Generate the stubs first (from the repository root):

    pip install grpcio-tools
    python -m grpc_tools.protoc -I proto --python_out=examples/python \
        --grpc_python_out=examples/python proto/ordo/v1/*.proto

Then, with `ordo dev` running:

    python examples/python/sync_table.py --endpoint 127.0.0.1:50051 --duration 10

It reads a snapshot of some rows (GetAvailability, which names its epoch), then follows
Watch from the epoch after it, applying each stock event to its table; meanwhile a writer
thread places orders and restocks on those rows. When the stream breaks (restart the node
meanwhile: the program keeps retrying, then resumes from its last resume token), nothing is
lost or applied twice: every event must start from the row the table holds. At the end it
stops writing, reads GetAvailability again, follows the feed up to exactly that epoch and
checks that its table equals the answer, row by row. Exit 0 when it does. With
--expect-restart it also insists that the stream broke and resumed at least once.
"""

import argparse
import os
import sys
import threading
import time
import uuid

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ordo.v1 import ordo_pb2, ordo_pb2_grpc  # noqa: E402

DCS = [1, 2, 3]
SKUS = list(range(1, 11))


def snapshot(stub):
    """The rows and the epoch they are from, retrying while the node is away."""
    while True:
        try:
            r = stub.GetAvailability(ordo_pb2.GetAvailabilityRequest(dc_ids=DCS, skus=SKUS))
            table = {(d.dc_id, i.sku): (d.on_hand, d.reserved, d.available)
                     for i in r.items for d in i.dcs}
            return r.epoch, table
        except grpc.RpcError:
            time.sleep(0.2)


def writer(stub, stop):
    """Orders and restocks on the watched rows until told to stop (errors are expected while
    the node restarts; each write has its own request id)."""
    n = 0
    while not stop.is_set():
        n += 1
        dc, sku = DCS[n % len(DCS)], SKUS[n % len(SKUS)]
        try:
            if n % 3 == 0:
                stub.Restock(ordo_pb2.RestockRequest(
                    request_id=f"sync-{uuid.uuid4()}", dc_id=dc, sku=sku, delta=5))
            else:
                stub.PlaceOrder(ordo_pb2.PlaceOrderRequest(
                    request_id=f"sync-{uuid.uuid4()}",
                    lines=[ordo_pb2.OrderLine(dc_id=dc, sku=sku, qty=1)]))
        except grpc.RpcError:
            time.sleep(0.1)
        time.sleep(0.005)


class Follower:
    """Applies the feed to the table; resumes from its last token after any break."""

    def __init__(self, stub, epoch, table):
        self.stub = stub
        self.table = table
        self.token = None
        self.start_epoch = epoch + 1
        self.covered = epoch  # every event through this epoch is applied
        self.events = 0
        self.resumes = 0
        # The last event applied, as (epoch, index). A stream cut between the messages of one
        # epoch resumes from the token before that epoch, so the epoch comes again from its
        # first event: what was applied of it is skipped, never applied twice.
        self.applied_through = None

    def follow_until(self, done):
        while not done(self):
            if self.token:
                start = {"resume_token": self.token}
            else:
                start = {"from_epoch": self.start_epoch}
            request = ordo_pb2.WatchRequest(
                dc_ids=DCS, skus=SKUS, kinds=[ordo_pb2.EVENT_KIND_STOCK],
                progress_interval_ms=100, **start)
            try:
                for message in self.stub.Watch(request):
                    self.apply(message)
                    if done(self):
                        return
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                    raise
                self.resumes += 1
                print(f"stream broke ({e.code().name}); resuming from {self.token}")
                time.sleep(0.2)

    def apply(self, message):
        kind = message.WhichOneof("message")
        if kind == "progress":
            self.covered = message.progress.epoch
            self.token = message.progress.resume_token
            return
        batch = message.events
        for change in batch.events:
            if self.applied_through is not None and \
                    (batch.epoch, change.index) <= self.applied_through:
                continue
            self.applied_through = (batch.epoch, change.index)
            s = change.stock
            row = (s.dc_id, s.sku)
            before = (s.before.on_hand, s.before.reserved, s.before.available)
            assert self.table[row] == before, (
                f"epoch {batch.epoch} event {change.index}: {row} was {self.table[row]}, "
                f"the event starts from {before} (a gap or a repeat)")
            self.table[row] = (s.after.on_hand, s.after.reserved, s.after.available)
            self.events += 1
        if not batch.more:
            self.covered = batch.epoch
            self.token = batch.resume_token


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", default="127.0.0.1:50051")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--expect-restart", action="store_true")
    args = ap.parse_args()
    stub = ordo_pb2_grpc.OrdoStub(grpc.insecure_channel(args.endpoint))

    epoch, table = snapshot(stub)
    print(f"snapshot of {len(table)} rows at epoch {epoch}")
    follower = Follower(stub, epoch, table)
    stop = threading.Event()
    thread = threading.Thread(target=writer, args=(stub, stop), daemon=True)
    thread.start()
    deadline = time.monotonic() + args.duration
    follower.follow_until(lambda f: time.monotonic() >= deadline)
    stop.set()
    thread.join()

    final_epoch, final = snapshot(stub)
    follower.follow_until(lambda f: f.covered >= final_epoch)
    for row, want in sorted(final.items()):
        assert follower.table[row] == want, f"{row}: table {follower.table[row]}, Ordo {want}"
    print(f"{follower.events} stock events applied, {follower.resumes} resumes; the table "
          f"equals GetAvailability at epoch {final_epoch}")
    if args.expect_restart and follower.resumes == 0:
        print("the stream never broke: was the node restarted?")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
