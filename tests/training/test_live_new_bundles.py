"""Bundles the training pipeline now produces score live exactly as offline: `softmax` aggregation,
`all` (prompt + response) token selection and contrast-pair probes (kind `contrast`), through a real
sidecar on localhost and the attach client (the engine picks them up from probewatch.probes; nothing in
the server is specific to them)."""

from __future__ import annotations

import pytest
import torch

from probewatch.capture import run_forward
from probewatch.data.chat import render
from probewatch.probes import ProbeRuntime, aggregate, load_bundles
from probewatch.probes.selection import selection_mask
from probewatch.training.pipeline import TrainConfig, train
from tests.training.helpers import write_synthetic

ATOL = 1e-4  # fp32, KV-cached decode vs one full forward


@pytest.fixture(scope="module")
def new_bundles(tiny_loaded, tmp_path_factory):
    root = tmp_path_factory.mktemp("new-bundles")
    data, control = write_synthetic(root, n_groups=24)
    paths = []
    for probe_id, selection, agg, method in (
        ("soft", "response", "softmax", "logistic"),
        ("whole", "all", "mean", "logistic"),
        ("pairs", "response", "max", "contrast"),  # kind `contrast`: a linear direction fitted on pair differences
    ):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PROBEWATCH_HOME", str(root / "home"))
            result = train(
                TrainConfig(
                    behaviour="deception",
                    data_files=[data],
                    control_file=control,
                    layers=[1, 3],
                    token_selections=[selection],
                    aggregations=[agg],
                    methods=[method],
                    per_token=False,
                    probe_id=probe_id,
                    out=root / probe_id,
                    progress=False,
                    plots=False,
                ),
                loaded=tiny_loaded,
            )
        m = result.report
        assert (
            m.chosen["aggregation"] == agg
            and m.chosen["method"] == method
            and m.parity is not None
            and m.parity.max_abs_diff < 1e-4
        )
        paths.append(result.bundle_path)
    return paths


def test_softmax_and_prompt_plus_response_bundles_score_live_as_offline(tiny_loaded, new_bundles, tmp_path):
    from probewatch.server.client.hf_attach import attach
    from probewatch.server.sidecar.config import SidecarConfig
    from probewatch.server.sidecar.process import Sidecar

    bundles = load_bundles(new_bundles, expected_fingerprint=tiny_loaded.fingerprint)
    assert {b.manifest.aggregation.method for b in bundles} == {"softmax", "mean", "max"}
    assert {b.manifest.kind for b in bundles} == {"linear", "contrast"}
    soft = next(b for b in bundles if b.id == "soft")
    assert soft.manifest.aggregation.temperature > 0 and soft.manifest.aggregation.temperature != 1.0
    runtime = ProbeRuntime(bundles)
    config = SidecarConfig(
        model_id="tiny-model",
        fingerprint=tiny_loaded.fingerprint,
        bundle_paths=list(new_bundles),
        host="127.0.0.1",
        port=0,
        metrics_host="127.0.0.1",
        metrics_port=0,
        incident_db=tmp_path / "incidents.sqlite3",
    )
    model, tok = tiny_loaded.model, tiny_loaded.tokenizer
    text = render(tok, [{"role": "user", "content": "t12 t13 t40 t41 t19"}], add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    sidecar = Sidecar(config).start()
    try:
        monitor = attach(model, sidecar=sidecar.address, mode="rows", wait_s=10)
        try:
            with torch.inference_mode():
                out = model.generate(
                    input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id
                )
            live = monitor.last_generations[0].result(10)
        finally:
            monitor.detach()
    finally:
        sidecar.stop(0)
    assert live.monitored and live.status == "closed", live
    stop = {tok.pad_token_id, model.generation_config.eos_token_id}
    generated = []
    for t in out[0, len(prompt) :].tolist():
        if t in stop:
            break
        generated.append(t)
    full = torch.tensor([prompt + generated])
    hidden = run_forward(model, runtime.layers, full)
    scores = runtime.score_layers({layer: h[0] for layer, h in hidden.items()})
    positions = torch.arange(full.shape[1]).numpy()
    for b in bundles:
        mask = selection_mask(b.manifest.token_selection, positions, len(prompt))
        expected = aggregate(scores[b.id].numpy()[mask], b.manifest.aggregation)
        assert live.scores[b.id] == pytest.approx(expected, abs=ATOL), b.id
    # `all` read every prompt token too: the client sent the prompt rows it needs
    assert len(live.token_scores["whole"]) == full.shape[1]
