"""A length-normalised maximum scored live by a real sidecar equals the offline aggregate after every
chunk, and (not monotone) it alerts on its final value, not on an early crossing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probewatch.probes import Aggregation, ProbeRuntime, aggregate, load_bundles
from probewatch.probes.synthetic import write_synthetic_bundle
from tests.probes.helpers import make_manifest
from tests.server.conftest import D_TINY
from tests.server.grpc_helpers import StreamClient, chunk_msg, close_msg, open_msg

RNG = np.random.default_rng(7)


@pytest.fixture
def norm_bundle(tmp_path, tiny_fp):
    manifest = make_manifest("long", layer=1, d=D_TINY, aggregation="max", threshold=1.5, fingerprint=tiny_fp)
    manifest.aggregation = Aggregation("max_norm", length_scale=0.8)
    path, _ = write_synthetic_bundle(tmp_path / "long", manifest, seed=4, weight_scale="none", bias=0.25)
    return path


def test_live_equals_offline_and_alerts_on_the_final_value(start_sidecar, tiny_fp, norm_bundle):
    runtime = ProbeRuntime(load_bundles([norm_bundle], expected_fingerprint=tiny_fp))
    sidecar = start_sidecar(bundles=[norm_bundle])
    client = StreamClient(sidecar.address)
    steps = (RNG.standard_normal((60, D_TINY)) * 0.02).astype(np.float32)  # token scores near the bias 0.25
    w = runtime.bundle("long").tensors["weight"].reshape(-1).numpy()
    steps[0] += (2.75 / float(w @ w)) * w  # one early hot token at ~3.0: over 1.5 alone, under it after 60 tokens
    token_scores = runtime.score(1, torch.from_numpy(steps)).numpy()[:, 0]
    assert 2.5 < token_scores[0] < 3.5 and token_scores[1:].max() < 1.0
    spec = runtime.bundle("long").manifest.aggregation
    client.send(
        open_msg("g", tiny_fp, prompt_length=2),
        *[chunk_msg("g", 1, steps[i : i + 6], list(range(2 + i, 8 + i))) for i in range(0, 60, 6)],
        close_msg("g", prompt="p", response="r"),
    )
    summary = client.wait_summary("g")
    result = {r.probe_id: r for r in summary.results}["long"]
    assert result.n_tokens == 60
    assert result.score == pytest.approx(aggregate(token_scores, spec), abs=1e-5)
    assert result.score == pytest.approx(token_scores.max() - 0.8 * np.sqrt(2 * np.log(60)), abs=1e-5)
    assert result.score < 1.5 and not result.flagged  # ~3 - 0.8 * sqrt(2 ln 60) = ~0.9
    assert client.of("alert", "g") == []  # no early alert: a plain `max` would have alerted at the first token
    client.close()
