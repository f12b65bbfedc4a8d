"""Generated protobuf packages (protoc package `probewatch.*`)."""
