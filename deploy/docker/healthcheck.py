#!/usr/bin/env python3
"""gRPC health check for the probewatch sidecar (the image's HEALTHCHECK and the chart's exec probe).

Calls the standard `grpc.health.v1.Health/Check` of the sidecar and exits 0 only when it answers
SERVING. It exists because `grpc_health_probe` is a Go binary fetched from a release page at build
time, while this needs nothing beyond grpcio + grpcio-health-checking, which the image already has
(they are probewatch runtime dependencies). Kubernetes' native `grpc:` probe is preferred in the
chart; this script covers TLS (the native probe cannot present a CA) and plain Docker.

    probewatch-healthcheck [--address 127.0.0.1:50051] [--service ""] [--timeout 3]
                           [--tls --ca /tls/ca.crt [--server-name NAME] [--cert C --key K]]

Exit codes: 0 SERVING, 1 anything else (NOT_SERVING, unreachable, timeout), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="probewatch-healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051", help="host:port of the sidecar's gRPC server")
    parser.add_argument("--service", default="", help="health service name ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds before giving up")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ca", type=Path, default=None, help="PEM CA bundle to verify the server (with --tls)")
    parser.add_argument("--cert", type=Path, default=None, help="PEM client certificate for mutual TLS")
    parser.add_argument("--key", type=Path, default=None, help="PEM client key for mutual TLS")
    parser.add_argument("--server-name", default=None, help="TLS server name override (certificate's DNS name)")
    return parser.parse_args(argv)


def check(args: argparse.Namespace) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if args.tls:
        creds = grpc.ssl_channel_credentials(
            root_certificates=args.ca.read_bytes() if args.ca else None,
            private_key=args.key.read_bytes() if args.key else None,
            certificate_chain=args.cert.read_bytes() if args.cert else None,
        )
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        channel = grpc.secure_channel(args.address, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.address)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as exc:  # UNAVAILABLE, DEADLINE_EXCEEDED, NOT_FOUND (unknown service) ...
        return False, f"{exc.code().name}: {exc.details()}"
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (args.cert is None) != (args.key is None):
        print("probewatch-healthcheck: --cert and --key go together", file=sys.stderr)
        return 2
    ok, status = check(args)
    print(
        f"probewatch-healthcheck: {args.address} service={args.service!r}: {status}",
        file=sys.stdout if ok else sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
