#!/usr/bin/env python3
"""Carts through a Python client generated from Ordo's .proto files.

Generate the stubs first (from the repository root):

    pip install grpcio-tools
    python -m grpc_tools.protoc -I proto --python_out=examples/python \
        --grpc_python_out=examples/python proto/ordo/v1/*.proto

Then, with `ordo dev` running:

    python examples/python/cart.py --endpoint 127.0.0.1:50051

On DC 1 / SKU 2 it holds units in a cart and checks they leave `available`; confirms them as
an order; holds again and cancels; holds with a 1-second TTL and checks the units come back by
themselves and a late confirm is refused as expired; and retries a reserve with the same
request id to check it holds once. Exit 0 when all of it holds.
"""

import argparse
import os
import sys
import time
import uuid

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ordo.v1 import ordo_pb2, ordo_pb2_grpc  # noqa: E402

LIVE = ordo_pb2.RESERVATION_STATUS_LIVE


def rid(what: str) -> str:
    return f"py-{what}-{uuid.uuid4()}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", default="127.0.0.1:50051")
    ap.add_argument("--dc", type=int, default=1)
    ap.add_argument("--sku", type=int, default=2)
    args = ap.parse_args()
    stub = ordo_pb2_grpc.OrdoStub(grpc.insecure_channel(args.endpoint))
    dc, sku = args.dc, args.sku

    def stock():
        return stub.GetStock(ordo_pb2.GetStockRequest(dc_id=dc, sku=sku))

    def reserve(qty, ttl_s=0, request_id=None, cart=""):
        return stub.Reserve(ordo_pb2.ReserveRequest(
            request_id=request_id or rid("reserve"), cart_id=cart, ttl_s=ttl_s,
            lines=[ordo_pb2.OrderLine(dc_id=dc, sku=sku, qty=qty)])).reservation

    start = stock()
    if start.available < 10:
        stub.Restock(ordo_pb2.RestockRequest(request_id=rid("restock"), dc_id=dc, sku=sku,
                                             delta=10))
        start = stock()
    print(f"dc {dc} sku {sku}: {start.available} available, {start.reserved} reserved")

    cart = f"py-cart-{uuid.uuid4()}"
    held = reserve(3, cart=cart)
    assert held.status == LIVE, held
    assert stock().available == start.available - 3
    confirmed = stub.ConfirmReservation(ordo_pb2.ConfirmReservationRequest(
        request_id=rid("confirm"), reservation_id=held.reservation_id))
    assert confirmed.result.status == ordo_pb2.ORDER_STATUS_COMMITTED, confirmed
    assert confirmed.epoch_time_ms < held.expires_at_ms
    after = stock()
    assert (after.on_hand, after.reserved) == (start.on_hand - 3, start.reserved), after
    print(f"held 3 in {cart} and confirmed them as order {confirmed.result.order_id}")

    held = reserve(2)
    cancelled = stub.CancelReservation(ordo_pb2.CancelReservationRequest(
        request_id=rid("cancel"), reservation_id=held.reservation_id)).reservation
    assert cancelled.status == ordo_pb2.RESERVATION_STATUS_CANCELLED, cancelled
    assert stock().available == after.available
    print("held 2 and cancelled them")

    same = rid("retry")
    once = reserve(1, request_id=same)
    twice = reserve(1, request_id=same)
    assert once.reservation_id == twice.reservation_id
    assert stock().reserved == start.reserved + 1
    print("a reserve sent twice holds once")

    short = reserve(4, ttl_s=1)
    assert stock().available == after.available - 1 - 4
    time.sleep(1.5)
    assert stock().available == after.available - 1, stock()
    late = stub.ConfirmReservation(ordo_pb2.ConfirmReservationRequest(
        request_id=rid("late"), reservation_id=short.reservation_id))
    assert late.result.status == ordo_pb2.ORDER_STATUS_REJECTED, late
    assert late.result.rejection.code == ordo_pb2.REJECT_CODE_RESERVATION_EXPIRED, late
    print("a 1-second hold lapsed by itself; its late confirm was refused as expired")
    return 0


if __name__ == "__main__":
    sys.exit(main())
