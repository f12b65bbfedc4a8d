"""A small bidirectional-stream client for tests: send requests, collect responses in the background."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import grpc
import numpy as np

from probewatch.proto.codec import encode_array
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc

_END = object()


def open_msg(gid: str, fingerprint: str, prompt_length: int = 0, **metadata) -> pb.MonitorRequest:
    return pb.MonitorRequest(
        open=pb.Open(generation_id=gid, model_fingerprint=fingerprint, prompt_length=prompt_length, metadata=metadata)
    )


def chunk_msg(
    gid: str, layer: int, rows: np.ndarray, positions, kind: int = pb.PAYLOAD_KIND_RESIDUAL_ROWS, dtype: str = "float32"
) -> pb.MonitorRequest:
    return pb.MonitorRequest(
        chunk=pb.ActivationChunk(
            generation_id=gid, layer=layer, kind=kind, positions=list(positions), payload=encode_array(rows, dtype)
        )
    )


def close_msg(gid: str, prompt: str = "", response: str = "", dropped: int = 0) -> pb.MonitorRequest:
    return pb.MonitorRequest(
        close=pb.Close(generation_id=gid, prompt_text=prompt, response_text=response, dropped_chunks=dropped)
    )


class StreamClient:
    def __init__(self, address: str, token: str | None = None) -> None:
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 256 * 1024 * 1024)])
        self.stub = pb_grpc.MonitorStub(self.channel)
        self._requests: queue.Queue = queue.Queue()
        self.responses: list[pb.MonitorResponse] = []
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self._cv = threading.Condition()
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.call = self.stub.Monitor(iter(self._requests.get, _END), metadata=metadata)
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        try:
            for response in self.call:
                with self._cv:
                    self.responses.append(response)
                    self._cv.notify_all()
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.ended.set()
            with self._cv:
                self._cv.notify_all()

    def send(self, *messages: pb.MonitorRequest) -> StreamClient:
        for m in messages:
            self._requests.put(m)
        return self

    def done_sending(self) -> None:
        self._requests.put(_END)

    def wait_for(self, predicate: Callable[[list[pb.MonitorResponse]], bool], timeout: float = 15.0) -> list:
        deadline = time.monotonic() + timeout
        with self._cv:
            while not predicate(self.responses):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.ended.is_set() and not predicate(self.responses)):
                    raise AssertionError(
                        f"timed out; responses so far: {[r.WhichOneof('msg') for r in self.responses]}"
                        f" error={self.error}"
                    )
                self._cv.wait(min(remaining, 0.1))
        return self.responses

    def of(self, kind: str, gid: str | None = None) -> list:
        with self._cv:
            return [
                getattr(r, kind)
                for r in self.responses
                if r.WhichOneof("msg") == kind and (gid is None or getattr(r, kind).generation_id == gid)
            ]

    def wait_summary(self, gid: str, timeout: float = 15.0) -> pb.GenerationSummary:
        self.wait_for(
            lambda rs: any(r.WhichOneof("msg") == "summary" and r.summary.generation_id == gid for r in rs), timeout
        )
        return self.of("summary", gid)[0]

    def wait_error(self, gid: str, n: int = 1, timeout: float = 15.0) -> list[pb.Error]:
        self.wait_for(
            lambda rs: sum(r.WhichOneof("msg") == "error" and r.error.generation_id == gid for r in rs) >= n, timeout
        )
        return self.of("error", gid)

    def close(self) -> None:
        self.done_sending()
        self.ended.wait(10)
        self.channel.close()


def scrape(port: int) -> str:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def metric_value(text: str, name: str, **labels) -> float:
    """The value of one sample in a Prometheus text exposition (0.0 when absent).

    Parsed with prometheus-client's own parser, so label values holding commas, quotes or escaped
    newlines (SAE feature descriptions) match exactly. Without labels, only an unlabelled sample counts.
    """
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {k: str(v) for k, v in labels.items()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (
                sample.labels == wanted if not labels else all(sample.labels.get(k) == v for k, v in wanted.items())
            ):
                return float(sample.value)
    return 0.0
