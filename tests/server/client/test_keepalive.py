"""Client keepalive against a hung sidecar: a real `probewatch serve` process is frozen with SIGSTOP
(its socket stays open, nothing answers). The client must notice through HTTP/2 keepalive, report
it (`probewatch_client_monitoring_up` 0) within 20 s while generation goes on, and reconnect after
SIGCONT so that the next generation is monitored again."""

from __future__ import annotations

import signal
import time

import pytest
import torch

from probewatch.benchmarks.harness import SidecarProcess
from probewatch.server.client.hf_attach import attach

pytestmark = pytest.mark.compat


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("tiny-model-keepalive")
    tiny_model.save_pretrained(folder)
    return folder


def _generate(model, n=4):
    ids = torch.arange(3, 10).unsqueeze(0)
    with torch.inference_mode():
        return model.generate(input_ids=ids, max_new_tokens=n, do_sample=False, pad_token_id=0)


def _wait(predicate, timeout: float) -> float | None:
    """Seconds until `predicate()` held, or None after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def test_hung_sidecar_is_detected_reported_and_reconnected(tmp_path, tiny_folder, tiny_bundles, tiny_model):
    # the client pings every 2 s to keep the test short; the sidecar's default minimum (4 s) would GOAWAY it
    args = ["--model", str(tiny_folder), "--bundles", *map(str, tiny_bundles), "--metrics-port", "-1", "--no-incidents"]
    args += ["--min-ping-interval", "1"]
    sidecar = SidecarProcess(args, tmp_path)
    monitor = attach(
        tiny_model,
        sidecar=sidecar.address,
        wait_s=30,
        keepalive_time_s=2,
        keepalive_timeout_s=2,
        backoff_initial_s=0.2,
        backoff_max_s=1.0,
        connect_timeout_s=1.0,
    )
    up = lambda: monitor.metrics.registry.get_sample_value("probewatch_client_monitoring_up")
    try:
        assert monitor.up and up() == 1
        expected = _generate(tiny_model)
        assert monitor.last_generations[0].result(10).status == "closed"

        time.sleep(8)  # an idle stream with keepalive pings must stay up (no too_many_pings GOAWAY)
        assert monitor.up and up() == 1

        sidecar.proc.send_signal(signal.SIGSTOP)
        try:
            detected = _wait(lambda: up() == 0, 20)
            assert detected is not None, "a hung sidecar was not detected within 20 s"
            t0 = time.monotonic()
            assert torch.equal(_generate(tiny_model), expected)  # serving goes on, unmonitored, unblocked
            assert time.monotonic() - t0 < 5
            assert not monitor.last_generations[0].result(0).monitored
        finally:
            sidecar.proc.send_signal(signal.SIGCONT)
        assert _wait(lambda: up() == 1, 20) is not None, "no reconnect after SIGCONT"
        _generate(tiny_model)
        result = monitor.last_generations[0].result(10)
        assert result.monitored and result.status == "closed" and result.tokens_scored > 0
        assert monitor.link is not None and monitor.link.session == 2  # a second stream, not the old one
    finally:
        monitor.detach()
        sidecar.stop()
