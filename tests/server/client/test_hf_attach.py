"""The HF attach client against a real sidecar: every generated token scored, live == offline,
pushdown == rows, batched generate with left padding and early-finishing sequences, fail-open
(sidecar down, sidecar gone, queue full), the kill switch and fingerprint refusal."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch
from prometheus_client import generate_latest

from probewatch.capture import find_decoder_layers, run_forward
from probewatch.probes import ProbeRuntime, load_bundles
from probewatch.server.client.hf_attach import attach
from tests.server.grpc_helpers import metric_value, scrape

pytestmark = pytest.mark.compat

ATOL = 1e-4  # fp32, KV-cached decode vs one full forward


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 256, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: sequence 1 has a 4-token prompt
    ids[1, :3] = 0
    return ids, mask


def _generate(model, ids, mask, n=6, **kw):
    with torch.inference_mode():
        return model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0, **kw
        )


def _offline(model, runtime, ids, mask, out, b, stop_ids) -> tuple[dict[str, dict[int, float]], int, list[int]]:
    """Per-probe {position: score} from one full forward over the sequence's real tokens."""
    prompt = ids[b][mask[b].bool()].tolist()
    generated = []
    for t in out[b, ids.shape[1] :].tolist():
        if t in stop_ids:
            break
        generated.append(t)
    full = torch.tensor([prompt + generated])
    hidden = run_forward(model, runtime.layers, full)
    scores: dict[str, dict[int, float]] = {}
    for layer, stack in runtime.stacks.items():
        s = runtime.score(layer, hidden[layer][0])
        for j, pid in enumerate(stack.probe_ids):
            scores[pid] = {p: float(s[p, j]) for p in range(full.shape[1])}
    return scores, len(prompt), generated


@pytest.fixture
def runtime(tiny_bundles, tiny_fp):
    return ProbeRuntime(load_bundles(tiny_bundles, expected_fingerprint=tiny_fp))


@pytest.mark.parametrize("mode", ["rows", "pushdown"])
def test_every_generated_token_scored_and_equal_to_offline(mode, tiny_model, start_sidecar, runtime):
    sidecar = start_sidecar()
    monitor = attach(tiny_model, sidecar=sidecar.address, mode=mode, wait_s=10)
    try:
        ids, mask = _batch()
        out = _generate(tiny_model, ids, mask, generation_ids=["a", "b"], probewatch_metadata={"t": 1})
        assert isinstance(out, torch.Tensor) and out.shape == (2, 13)  # the caller's return type is unchanged
        handles = monitor.last_generations
        assert [h.id for h in handles] == ["a", "b"]
        stop_ids = {0, 2}
        for b, handle in enumerate(handles):
            result = handle.result(10)
            assert result.monitored and result.status == "closed", result
            offline, n_prompt, generated = _offline(tiny_model, runtime, ids, mask, out, b, stop_ids)
            assert result.prompt_length == n_prompt
            response = list(range(n_prompt, n_prompt + len(generated)))
            for pid in ("dec", "avg"):  # response probes: every generated token, nothing else from the response
                got = result.token_scores[pid]
                assert sorted(p for p in got if p >= n_prompt) == response
                for p in response:
                    assert got[p] == pytest.approx(offline[pid][p], abs=ATOL)
            assert result.token_scores["ref"][n_prompt - 1] == pytest.approx(offline["ref"][n_prompt - 1], abs=ATOL)
            assert result.dropped_chunks == 0 and not result.errors
    finally:
        monitor.detach()
    assert "generate" not in tiny_model.__dict__


def test_pushdown_equals_rows_and_ships_k_floats(tiny_model, start_sidecar):
    sidecar = start_sidecar()
    ids, mask = _batch(seed=5)
    results = {}
    monitor = attach(tiny_model, sidecar=sidecar.address, wait_s=10)
    try:
        for mode in ("rows", "pushdown"):
            monitor.set_mode(mode)
            _generate(tiny_model, ids, mask)
            results[mode] = [h.result(10) for h in monitor.last_generations]
        plan, _ = monitor._current_plan()
        assert all(
            c.pushdown and c.projection.shape == (64, len(sidecar.runtime.stacks[c.layer].probe_ids))
            for c in plan.captures.values()
        )
    finally:
        monitor.detach()
    for rows_r, push_r in zip(results["rows"], results["pushdown"]):
        assert rows_r.token_scores.keys() == push_r.token_scores.keys()
        for pid, scores in rows_r.token_scores.items():
            assert scores.keys() == push_r.token_scores[pid].keys()
            for p, v in scores.items():
                assert push_r.token_scores[pid][p] == pytest.approx(v, abs=ATOL)
            assert push_r.scores[pid] == pytest.approx(rows_r.scores[pid], abs=ATOL, nan_ok=True)


def test_sequences_that_finish_early_stop_being_scored(tiny_model, start_sidecar):
    sidecar = start_sidecar()
    ids, mask = _batch(seed=9)
    plain = _generate(tiny_model, ids, mask)[0, ids.shape[1] :].tolist()
    # sequence 0's first generated token that did not occur before becomes its end-of-sequence token
    k = next(i for i in range(1, len(plain)) if plain[i] not in plain[:i])
    eos = plain[k]
    monitor = attach(tiny_model, sidecar=sidecar.address, wait_s=10)
    try:
        out = _generate(tiny_model, ids, mask, eos_token_id=eos)
        r0 = monitor.last_generations[0].result(10)
    finally:
        monitor.detach()
    assert out[0, ids.shape[1] :].tolist().index(eos) == k
    assert sorted(r0.token_scores["dec"]) == list(range(7, 7 + k))  # prompt of 7; k tokens before the end


def test_kill_switch_means_no_hooks_no_threads_no_traffic(tiny_model, monkeypatch):
    monkeypatch.setenv("PROBEWATCH_DISABLE", "1")
    layers = find_decoder_layers(tiny_model)
    before_threads = {t.name for t in threading.enumerate()}
    monitor = attach(tiny_model, sidecar="127.0.0.1:1", wait_s=1)
    assert not monitor.enabled and not monitor.up
    assert "generate" not in tiny_model.__dict__
    seen = []
    probe = tiny_model.register_forward_pre_hook(
        lambda m, a, k: seen.append(
            (sum(len(layer._forward_hooks) for layer in layers), len(tiny_model._forward_pre_hooks))
        ),
        with_kwargs=True,
    )
    try:
        ids, mask = _batch()
        _generate(tiny_model, ids, mask, n=2)
    finally:
        probe.remove()
    assert seen and all(hooks == 0 and pre == 1 for hooks, pre in seen)  # only our counting hook
    assert not {t.name for t in threading.enumerate()} - before_threads
    assert monitor.last_generations == []
    monitor.detach()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fail_open_sidecar_down_then_up_then_gone(tiny_model, start_sidecar, caplog):
    port = _free_port()
    ids, mask = _batch(seed=2)
    expected = _generate(tiny_model, ids, mask)
    monitor = attach(
        tiny_model,
        sidecar=f"127.0.0.1:{port}",
        wait_s=0,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        connect_timeout_s=0.5,
    )
    try:
        with caplog.at_level("WARNING", logger="probewatch.server.client.hf_attach"):
            t0 = time.monotonic()
            out = _generate(tiny_model, ids, mask)
            assert torch.equal(out, expected)  # generation goes on, same output
            assert time.monotonic() - t0 < 5
            result = monitor.last_generations[0].result(0)
            assert not result.monitored and result.reason == "sidecar_down"
            deadline = time.monotonic() + 5
            while "monitoring OFF" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
        assert "monitoring OFF" in caplog.text and f"127.0.0.1:{port}" in caplog.text
        reg = monitor.metrics.registry
        assert reg.get_sample_value("probewatch_client_monitoring_up") == 0
        assert reg.get_sample_value("probewatch_client_unmonitored_generations_total", {"reason": "sidecar_down"}) == 2

        sidecar = start_sidecar(port=port)  # the sidecar comes (back) up: reconnect
        assert monitor.wait_ready(10)
        assert reg.get_sample_value("probewatch_client_monitoring_up") == 1
        _generate(tiny_model, ids, mask)
        assert all(h.result(10).status == "closed" for h in monitor.last_generations)

        sidecar.stop(0)  # ... and goes away again
        deadline = time.monotonic() + 10
        while monitor.up and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not monitor.up and reg.get_sample_value("probewatch_client_monitoring_up") == 0
        assert torch.equal(_generate(tiny_model, ids, mask), expected)
        assert all(not h.result(0).monitored for h in monitor.last_generations)
    finally:
        monitor.detach()


def test_full_capture_queue_drops_counts_and_never_blocks(tiny_model, start_sidecar):
    sidecar = start_sidecar()
    monitor = attach(tiny_model, sidecar=sidecar.address, wait_s=10, queue_size=0)
    try:
        ids, mask = _batch(seed=4)
        _generate(tiny_model, ids, mask)
        results = [h.result(10) for h in monitor.last_generations]
    finally:
        monitor.detach()
    assert all(r.status == "closed" and r.dropped_chunks > 0 and r.tokens_scored == 0 for r in results)
    assert (
        monitor.metrics.registry.get_sample_value("probewatch_client_dropped_chunks_total", {"reason": "queue_full"})
        > 0
    )
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_dropped_chunks_total", reason="client_dropped") > 0


def test_sidecar_for_another_model_is_refused(tmp_path, tiny_model, caplog):
    from probewatch.server.sidecar.config import SidecarConfig
    from probewatch.server.sidecar.process import Sidecar
    from tests.probes.helpers import make_bundle

    other = "pwfp1:" + "cd" * 16
    path, _ = make_bundle(tmp_path, "x", layer=1, d=64, fingerprint=other)
    with (
        Sidecar(
            SidecarConfig(
                model_id="other", fingerprint=other, bundle_paths=[path], host="127.0.0.1", port=0, metrics_port=None
            )
        ) as sidecar,
        caplog.at_level("WARNING", logger="probewatch.server.client.hf_attach"),
    ):
        monitor = attach(tiny_model, sidecar=sidecar.address, wait_s=1.5)
        try:
            assert not monitor.up
            ids, mask = _batch()
            _generate(tiny_model, ids, mask, n=2)
            assert not monitor.last_generations[0].result(0).monitored
        finally:
            monitor.detach()
    assert "fingerprint" in caplog.text and other in caplog.text


def test_beam_search_runs_unmonitored_instead_of_misattributing_rows(tiny_model, start_sidecar, caplog):
    sidecar = start_sidecar()
    ids, mask = _batch(seed=6)
    expected = _generate(tiny_model, ids, mask, num_beams=2)
    monitor = attach(tiny_model, sidecar=sidecar.address, wait_s=10)
    try:
        with caplog.at_level("WARNING", logger="probewatch.server.client.hf_attach"):
            out = _generate(tiny_model, ids, mask, num_beams=2)
        assert torch.equal(out, expected)
        result = monitor.last_generations[0].result(0)
        assert not result.monitored and result.reason == "unsupported_input"
        assert "beam search" in caplog.text
        assert (
            monitor.metrics.registry.get_sample_value(
                "probewatch_client_unmonitored_generations_total", {"reason": "unsupported_input"}
            )
            == 2
        )
    finally:
        monitor.detach()


def test_capture_self_check_stops_a_generation_whose_positions_are_wrong(
    tiny_model, start_sidecar, monkeypatch, caplog
):
    """The transformers 5.24 failure mode (every decode step placed at position 0), simulated: the
    client must stop monitoring the generation, loudly, instead of sending rows at wrong positions."""
    import probewatch.capture as capture_mod

    sidecar = start_sidecar()
    monitor = attach(tiny_model, sidecar=sidecar.address, wait_s=10)
    try:
        monkeypatch.setattr(capture_mod, "forward_start", lambda kwargs, counted=0: 0)
        ids, mask = _batch()
        with caplog.at_level("ERROR", logger="probewatch.server.client.hf_attach"):
            _generate(tiny_model, ids, mask, generation_ids=["bad-a", "bad-b"])
        results = [h.result(10) for h in monitor.last_generations]
        client_metrics = generate_latest(monitor.metrics.registry).decode()
        errors = metric_value(client_metrics, "probewatch_client_capture_errors_total", reason="position")
        monkeypatch.undo()
        _generate(tiny_model, ids, mask, generation_ids=["ok-a", "ok-b"])  # the next call is monitored again
        healthy = [h.result(10) for h in monitor.last_generations]
    finally:
        monitor.detach()
    assert errors == 2  # one per generation of the call
    for r, n_prompt in zip(results, (7, 4)):
        assert r.status == "aborted" and "capture self-check failed (position)" in r.reason
        # the prompt rows were right and were scored; no generated position was ever sent
        assert all(p < n_prompt for s in r.token_scores.values() for p in s), r.token_scores
    assert "monitoring STOPPED for generations bad-a, bad-b" in caplog.text
    assert all(r.status == "closed" and r.reason is None for r in healthy)
    aborted = metric_value(scrape(sidecar.metrics_port), "probewatch_generations_total", status="aborted")
    assert aborted == 2


def test_a_summary_that_never_comes_back_is_named_not_waited_for(caplog):
    from probewatch.server.client.hf_attach import GenerationHandle

    handle = GenerationHandle("g-slow", prompt_length=3)
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="probewatch.server.client.hf_attach"):
        result = handle.result(0.05)
    assert time.monotonic() - t0 < 1.0
    assert result.status == "pending" and result.reason == "no summary from the sidecar within 0.05s"
    assert "generation g-slow: no summary from the sidecar within 0.05s" in caplog.text


def test_bearer_token_from_the_token_file_reaches_an_authenticated_sidecar(tiny_model, start_sidecar, tmp_path):
    token = "attach-token-0123456789abcdef"
    server_tokens = tmp_path / "server-tokens"
    server_tokens.write_text(f"{token}\n")
    sidecar = start_sidecar(auth_token_file=server_tokens)
    client_token = tmp_path / "client-token"
    client_token.write_text(f"# the first token is sent\n{token}\nanother-token-0123456789\n")
    ids, mask = _batch(seed=4)

    anonymous = attach(tiny_model, sidecar=sidecar.address, wait_s=1.5, auth_token_file=None)
    try:
        assert not anonymous.up  # refused, and generation still runs (fail-open)
        assert _generate(tiny_model, ids, mask, n=2).shape[1] == ids.shape[1] + 2
        assert not anonymous.last_generations[0].result(0).monitored
    finally:
        anonymous.detach()
    assert metric_value(scrape(sidecar.metrics_port), "probewatch_rejected_messages_total", code="UNAUTHENTICATED") >= 1

    monitor = attach(tiny_model, sidecar=sidecar.address, wait_s=10, auth_token_file=str(client_token))
    try:
        assert monitor.up
        _generate(tiny_model, ids, mask, n=3)
        result = monitor.last_generations[0].result(10)
    finally:
        monitor.detach()
    assert result.status == "closed" and len(result.token_scores["dec"]) == 3
