#!/usr/bin/env python3
"""Browse near me through a Python client generated from Ordo's .proto files.

Generate the stubs first (from the repository root):

    pip install grpcio-tools
    python -m grpc_tools.protoc -I proto --python_out=examples/python \
        --grpc_python_out=examples/python proto/ordo/v1/*.proto

Then, with `ordo dev` running (its demo dark stores):

    python examples/python/nearby.py --endpoint 127.0.0.1:50051

In central Bengaluru it finds the stores within 10 km, nearest first, and the merged menu of
a SKU over them; searches the catalogue with availability nearby; places an order too big for
any one store and checks it was split across stores and taken from each; retries it with the
same request id and gets the same order; and checks that far from every store (the middle of
the Atlantic, the North Pole, across the antimeridian) nothing is found and an order is
rejected. Exit 0 when all of it holds.
"""

import argparse
import os
import sys
import uuid

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ordo.v1 import ordo_pb2, ordo_pb2_grpc  # noqa: E402

BENGALURU = (12.9716, 77.5946)
NOWHERE = [(40.0, -40.0), (90.0, 0.0), (-16.5, 179.999), (-16.5, -179.999)]
COMMITTED = ordo_pb2.ORDER_STATUS_COMMITTED


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", default="127.0.0.1:50051")
    ap.add_argument("--sku", type=int, default=1)
    args = ap.parse_args()
    stub = ordo_pb2_grpc.OrdoStub(grpc.insecure_channel(args.endpoint))
    lat, lon = BENGALURU

    near = stub.FindNearbyDcs(ordo_pb2.FindNearbyDcsRequest(lat=lat, lon=lon, radius_m=10_000,
                                                            limit=100))
    distances = [d.distance_m for d in near.dcs]
    assert len(near.dcs) >= 10, near
    assert distances == sorted(distances) and distances[-1] <= 10_000, distances
    print(f"{len(near.dcs)} stores within 10 km, the nearest {near.dcs[0].name} "
          f"at {near.dcs[0].distance_m} m")

    menu = stub.GetNearbyAvailability(ordo_pb2.GetNearbyAvailabilityRequest(
        lat=lat, lon=lon, radius_m=10_000, skus=[args.sku]))
    item = menu.items[0]
    assert item.available_total == sum(d.available for d in item.dcs), item
    most = max(d.available for d in item.dcs)
    print(f"sku {args.sku}: {item.available_total} available nearby, at most {most} in one store")

    found = stub.SearchItems(ordo_pb2.SearchItemsRequest(query="potato chips", near=True,
                                                         lat=lat, lon=lon, limit=5))
    assert found.items and all("Potato Chips" in i.name for i in found.items), found
    print("search 'potato chips': " + ", ".join(
        f"{i.name} ({i.available_nearby} nearby)" for i in found.items))

    # One more than any single store has: the order must be split.
    want = most + 1
    assert item.available_total >= want, "not enough stock nearby to split; restart ordo dev"
    request = ordo_pb2.PlaceOrderNearbyRequest(
        request_id=f"py-nearby-{uuid.uuid4()}", lat=lat, lon=lon, radius_m=10_000,
        lines=[ordo_pb2.ItemQty(sku=args.sku, qty=want)])
    placed = stub.PlaceOrderNearby(request)
    assert placed.result.status == COMMITTED, placed
    assert len(placed.shipments) >= 2, placed
    assert sum(l.qty for s in placed.shipments for l in s.lines) == want
    for s in placed.shipments:
        row = stub.GetStock(ordo_pb2.GetStockRequest(dc_id=s.dc_id, sku=args.sku))
        before = next(d.available for d in item.dcs if d.dc_id == s.dc_id)
        assert row.available == before - s.lines[0].qty, (s, row)
    print(f"{want} units split over {len(placed.shipments)} stores: " + ", ".join(
        f"{s.name} x{s.lines[0].qty}" for s in placed.shipments))
    again = stub.PlaceOrderNearby(request)
    assert again.result.order_id == placed.result.order_id, again
    print("the same request again: the same order, nothing taken twice")

    for (plat, plon) in NOWHERE:
        none = stub.FindNearbyDcs(ordo_pb2.FindNearbyDcsRequest(lat=plat, lon=plon))
        assert not none.dcs, none
        lost = stub.PlaceOrderNearby(ordo_pb2.PlaceOrderNearbyRequest(
            request_id=f"py-nowhere-{uuid.uuid4()}", lat=plat, lon=plon,
            lines=[ordo_pb2.ItemQty(sku=args.sku, qty=1)]))
        assert lost.result.status == ordo_pb2.ORDER_STATUS_REJECTED, lost
    print("far from every store: nothing nearby, orders rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
