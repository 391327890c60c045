#!/usr/bin/env python3
"""A flash sale through a Python client generated from Ordo's .proto files.

Generate the stubs first (from the repository root):

    pip install grpcio-tools
    python -m grpc_tools.protoc -I proto --python_out=examples/python \
        --grpc_python_out=examples/python proto/ordo/v1/*.proto

Then, with `ordo dev` running:

    python examples/python/flash_sale.py --endpoint 127.0.0.1:50051 --buyers 200

It sets DC 1 / SKU 1 to --stock units, has --buyers threads each order one unit at once, and
checks that exactly --stock orders committed and the stock ended at zero. Exit 0 when it holds.
"""

import argparse
import os
import sys
import threading
import uuid

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ordo.v1 import ordo_pb2, ordo_pb2_grpc  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", default="127.0.0.1:50051")
    ap.add_argument("--buyers", type=int, default=200)
    ap.add_argument("--stock", type=int, default=50)
    ap.add_argument("--dc", type=int, default=1)
    ap.add_argument("--sku", type=int, default=1)
    args = ap.parse_args()

    channel = grpc.insecure_channel(args.endpoint)
    stub = ordo_pb2_grpc.OrdoStub(channel)

    now = stub.GetStock(ordo_pb2.GetStockRequest(dc_id=args.dc, sku=args.sku))
    delta = args.stock - now.on_hand
    if delta != 0:
        r = stub.Restock(ordo_pb2.RestockRequest(
            request_id=f"py-setup-{uuid.uuid4()}", dc_id=args.dc, sku=args.sku, delta=delta))
        assert r.applied, r.reason
    print(f"dc {args.dc} sku {args.sku}: {args.stock} units; {args.buyers} buyers")

    results = []
    lock = threading.Lock()
    start = threading.Barrier(args.buyers)

    def buy(i: int) -> None:
        own = ordo_pb2_grpc.OrdoStub(grpc.insecure_channel(args.endpoint))
        request = ordo_pb2.PlaceOrderRequest(
            request_id=f"py-buyer-{uuid.uuid4()}",
            lines=[ordo_pb2.OrderLine(dc_id=args.dc, sku=args.sku, qty=1)],
        )
        start.wait()
        response = own.PlaceOrder(request)
        with lock:
            results.append(response.result)

    threads = [threading.Thread(target=buy, args=(i,)) for i in range(args.buyers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    committed = [r for r in results if r.status == ordo_pb2.ORDER_STATUS_COMMITTED]
    rejected = [r for r in results if r.status == ordo_pb2.ORDER_STATUS_REJECTED]
    after = stub.GetStock(ordo_pb2.GetStockRequest(dc_id=args.dc, sku=args.sku))
    print(f"committed {len(committed)}, rejected {len(rejected)}, stock now {after.on_hand}")
    if rejected:
        print(f"a rejection: {rejected[0].reason}")
    expected = min(args.stock, args.buyers)
    ok = len(committed) == expected and after.on_hand == args.stock - expected
    print("OK: nothing oversold" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
