"""Lists an Ordo node's services through gRPC server reflection, with Python's own reflection
client (grpcio-reflection, which speaks the v1alpha protocol), and checks what it sees: the
public services are there and the internal one is not.

    python reflection_list.py --endpoint 127.0.0.1:50051
"""

import argparse
import sys

import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="127.0.0.1:50051")
    args = parser.parse_args()
    with grpc.insecure_channel(args.endpoint) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        print("services:", ", ".join(services))
        # The descriptor of a public service resolves, with its methods.
        ordo = database.FindFileContainingSymbol("ordo.v1.Ordo")
        print("ordo.v1.Ordo is defined in", ordo.name)
    missing = {"ordo.v1.Ordo", "ordo.v1.Admin", "grpc.health.v1.Health"} - set(services)
    if missing:
        print("missing:", ", ".join(sorted(missing)), file=sys.stderr)
        return 1
    internal = [s for s in services if s.startswith("ordo.internal")]
    if internal:
        print("internal services exposed:", ", ".join(internal), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
