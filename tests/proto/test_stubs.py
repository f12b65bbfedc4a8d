"""The wire contract: committed stubs are protoc's output for the .proto, importable under probewatch.proto."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from probewatch.proto import generate
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc


def test_committed_stubs_match_a_fresh_generation():
    """Regenerates into a temp dir with grpcio-tools; `make proto` fixes a failure here."""
    assert generate.drift() == []


def test_stubs_import_under_the_probewatch_namespace():
    text = (generate.PROTO_ROOT / "probewatch/v1/monitor_pb2_grpc.py").read_text()
    assert "from probewatch.proto.probewatch.v1 import monitor_pb2" in text
    assert "\nfrom probewatch.v1 import" not in text
    assert pb_grpc.MonitorStub and pb_grpc.MonitorServicer


def test_service_shape():
    service = pb.DESCRIPTOR.services_by_name["Monitor"]
    assert service.full_name == "probewatch.v1.Monitor"
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"Monitor", "Score", "ListProbes"}
    assert methods["Monitor"].client_streaming and methods["Monitor"].server_streaming
    assert not methods["Score"].client_streaming and not methods["Score"].server_streaming


def test_tensors_are_raw_bytes_never_repeated_floats():
    tensor = pb.Tensor.DESCRIPTOR
    assert tensor.fields_by_name["data"].type == FieldDescriptor.TYPE_BYTES
    floats = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)

    def walk(message, seen):
        if message.full_name in seen:
            return
        seen.add(message.full_name)
        for field in message.fields:
            is_repeated = getattr(field, "is_repeated", None)
            repeated = is_repeated if isinstance(is_repeated, bool) else field.label == FieldDescriptor.LABEL_REPEATED
            assert not (repeated and field.type in floats), f"{message.full_name}.{field.name} is a repeated float"
            if field.message_type is not None:
                walk(field.message_type, seen)

    seen: set[str] = set()
    for message in pb.DESCRIPTOR.message_types_by_name.values():
        walk(message, seen)
    chunk = pb.ActivationChunk.DESCRIPTOR.fields_by_name
    assert chunk["payload"].message_type is tensor and {"generation_id", "layer", "kind", "positions"} <= set(chunk)
