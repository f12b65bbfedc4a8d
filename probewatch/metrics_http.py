"""Expose a Prometheus registry over HTTP (both the sidecar and the inference-server client use it)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

__all__ = ["serve_metrics"]


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1"):
    """Start prometheus-client's HTTP server for `registry`; returns (server, thread); port 0 = ephemeral."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host, registry=registry)
