"""probewatch.v1 wire contract: monitor.proto and its generated stubs (see proto/generate.py)."""
