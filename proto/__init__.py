"""The wire contract: probewatch/v1/*.proto and the generated Python stubs."""
