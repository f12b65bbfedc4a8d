"""The HF attach client's `on_unmonitored` policy against a real sidecar: 'allow' serves a generation
that cannot be monitored and counts it by reason; 'reject' raises `UnmonitoredGenerationRefused`
(before generating when the sidecar is down or the input is unsupported; as soon as the sidecar
refuses the Open otherwise) and counts the refusal. The sidecar refuses an Open for real here: the
caller reuses generation ids (`generation_ids`, caller input) the sidecar has already seen."""

from __future__ import annotations

import socket

import pytest
import torch

from probewatch.server.client.hf_attach import UnmonitoredGenerationRefused, attach
from tests.waiting import wait_until

pytestmark = pytest.mark.compat


def _inputs():
    ids = torch.randint(3, 256, (2, 6), generator=torch.Generator().manual_seed(11))
    return ids, torch.ones_like(ids)


def _generate(model, n=4, **kw):
    ids, mask = _inputs()
    with torch.inference_mode():
        return model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0, **kw
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sample(monitor, name: str, **labels) -> float:
    return monitor.metrics.registry.get_sample_value(name, labels or None) or 0.0


class _Forwards:
    """Counts the model's forward calls (so a test can tell 'refused before generating')."""

    def __init__(self, model) -> None:
        self.n = 0
        self._hook = model.register_forward_pre_hook(self._count)

    def _count(self, *_):
        self.n += 1

    def remove(self) -> None:
        self._hook.remove()


def test_allow_serves_a_refused_open_unmonitored_and_counts_it(tiny_model, start_sidecar):
    expected = _generate(tiny_model)
    sidecar = start_sidecar()
    monitor = attach(tiny_model, sidecar=sidecar.address, wait_s=10)
    try:
        _generate(tiny_model, generation_ids=["g1", "g2"])
        assert all(h.result(10).status == "closed" for h in monitor.last_generations)
        out = _generate(tiny_model, generation_ids=["g1", "g2"])  # reused ids: the sidecar refuses the Opens
        assert torch.equal(out, expected)  # served, same output
        results = [h.result(10) for h in monitor.last_generations]
        assert [(r.monitored, r.status, r.code) for r in results] == [(False, "rejected", "rejected")] * 2
        assert "ALREADY_EXISTS" in results[0].reason  # the sidecar's words: for the operator's logs
        assert _sample(monitor, "probewatch_client_unmonitored_generations_total", reason="rejected") == 2
        assert _sample(monitor, "probewatch_client_refused_generations_total", reason="rejected") == 0
        assert _sample(monitor, "probewatch_client_generations_total") == 4
    finally:
        monitor.detach()


def test_reject_refuses_before_generating_when_the_sidecar_is_down(tiny_model):
    monitor = attach(tiny_model, sidecar=f"127.0.0.1:{_free_port()}", on_unmonitored="reject", connect_timeout_s=0.5)
    forwards = _Forwards(tiny_model)
    try:
        with pytest.raises(UnmonitoredGenerationRefused, match="sidecar_down") as info:
            _generate(tiny_model)
        assert info.value.reason == "sidecar_down" and forwards.n == 0  # nothing was generated
        assert _sample(monitor, "probewatch_client_unmonitored_generations_total", reason="sidecar_down") == 2
        assert _sample(monitor, "probewatch_client_refused_generations_total", reason="sidecar_down") == 2
    finally:
        forwards.remove()
        monitor.detach()


def test_reject_refuses_a_generation_whose_open_the_sidecar_refused(tiny_model, start_sidecar):
    sidecar = start_sidecar()
    monitor = attach(tiny_model, sidecar=sidecar.address, wait_s=10, on_unmonitored="reject")
    try:
        out = _generate(tiny_model, n=3, generation_ids=["r1", "r2"])  # monitored: returned, summaries in
        assert out.shape == (2, 9) and all(h.result(0).status == "closed" for h in monitor.last_generations)
        with pytest.raises(UnmonitoredGenerationRefused) as info:
            _generate(tiny_model, n=3, generation_ids=["r1", "r2"])  # reused ids: Opens refused
        assert info.value.reason == "rejected"
        # the refusal is raised at the first refused Open; the other's refusal may still be on its way
        wait_until(
            lambda: _sample(monitor, "probewatch_client_unmonitored_generations_total", reason="rejected") == 2,
            10,
            "both refused Opens counted",
        )
        assert _sample(monitor, "probewatch_client_refused_generations_total", reason="rejected") == 2  # once
    finally:
        monitor.detach()


def test_reject_refuses_unsupported_input_before_generating(tiny_model, start_sidecar):
    sidecar = start_sidecar()
    monitor = attach(tiny_model, sidecar=sidecar.address, wait_s=10, on_unmonitored="reject")
    forwards = _Forwards(tiny_model)
    try:
        with pytest.raises(UnmonitoredGenerationRefused, match="beam search") as info:
            _generate(tiny_model, num_beams=2)
        assert info.value.reason == "unsupported_input" and forwards.n == 0
        assert _sample(monitor, "probewatch_client_refused_generations_total", reason="unsupported_input") == 2
    finally:
        forwards.remove()
        monitor.detach()


def test_policy_setting_from_the_environment(monkeypatch):
    from probewatch.server.client.config import AttachConfig

    assert AttachConfig().on_unmonitored == "allow"  # fail-open by default
    monkeypatch.setenv("PROBEWATCH_ON_UNMONITORED", "reject")
    assert AttachConfig().on_unmonitored == "reject"
    monkeypatch.setenv("PROBEWATCH_ON_UNMONITORED", "maybe")
    with pytest.raises(ValueError, match="PROBEWATCH_ON_UNMONITORED must be 'allow' or 'reject'"):
        AttachConfig()
