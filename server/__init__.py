"""Live monitoring: gRPC sidecar, Prometheus metrics, alerts, incidents, attach clients, HTTP server."""
