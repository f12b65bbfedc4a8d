"""docs/quality.md rendering from training reports (the benchmark itself is slow and not a test)."""

from __future__ import annotations

import json

import pytest

from probewatch.training.bench_quality import render_markdown
from probewatch.training.pipeline import TrainConfig, train
from tests.training.helpers import control_dialogues, synthetic_dialogues


@pytest.fixture(scope="module")
def deception_report(tiny_loaded, tmp_path_factory):
    """report.json of a deception probe trained on synthetic dialogues with the tiny model."""
    from probewatch.data.dialogue import write_dialogues

    tmp = tmp_path_factory.mktemp("quality")
    data, control = tmp / "d.jsonl", tmp / "c.jsonl"
    write_dialogues(data, synthetic_dialogues(n_groups=24))
    write_dialogues(control, control_dialogues())
    result = train(
        TrainConfig(
            behaviour="deception",
            data_files=[data],
            control_file=control,
            out=tmp / "b",
            progress=False,
            command="probewatch train --behaviour deception",
        ),
        loaded=tiny_loaded,
    )
    return json.loads(result.report_path.read_text())


def test_quality_markdown_tabulates_every_required_number(tiny_loaded, deception_report, tmp_path):
    report = deception_report
    diag = {"n": 4, "flagged": 1, "mean_score": -1.0, "threshold": 2.0}
    text = render_markdown(
        {"deception": report, "alignment-faking": {**report, "probe_id": "af"}},
        {"alignment-faking": diag},
        90.0,
        tiny_loaded,
        tmp_path / "quality.md",
    )
    chosen = report["selection"]["chosen"]
    header = [line for line in text.splitlines() if line.startswith("| probe |")][0]
    for column in (
        "in-distribution AUROC",
        "held-out-kind AUROC",
        "recall @1% FPR on control",
        "layer",
        "method",
        "aggregation",
    ):
        assert column in header
    row = [line for line in text.splitlines() if line.startswith("| `deception` |")][0]
    assert f"{report['metrics']['auroc']:.3f}" in row and f"| {chosen['layer']} |" in row and chosen["method"] in row
    assert "Layer sweep" in text and "quality/deception/roc.png" in text and "1 of 4 benign requests" in text
    assert "probewatch train --behaviour deception" in text


def test_quality_markdown_puts_sae_feature_probes_beside_the_linear_probe(tiny_loaded, deception_report, tmp_path):
    """The SAE section lists the linear probe first, then each SAE-feature probe of that behaviour,
    and its reading sentence is computed from the numbers (not fixed prose)."""
    report = deception_report
    lin = report["metrics"]["auroc"]

    def sae_summary(probe_id: str, auroc: float, n: int) -> dict:  # the shape fit_and_export_sae_probe returns
        return {
            "probe_id": probe_id,
            "behaviour": "deception",
            "probe_type": "l1_logistic",
            "sae": "l1-topk-test",
            "layer": 1,
            "n_latents": n,
            "command": f"probewatch sae probe --behaviour deception ({probe_id})",
            "metrics": {
                "auroc": auroc,
                "auroc_heldout_kind": 0.61,
                "auroc_heldout_kind_per_kind": {"a": 0.6, "b": 0.62},
                "auroc_ood": {},
                "recall_at_fpr_control": 0.2,
                "fpr_control_heldout": 0.01,
            },
        }

    sae = {
        "sae-deception-l1": sae_summary("sae-deception-l1", lin - 0.2, 40),
        "sae-deception-named": sae_summary("sae-deception-named", lin - 0.3, 8),
    }
    text = render_markdown({"deception": report}, {}, 60.0, tiny_loaded, tmp_path / "quality.md", sae)
    section = text.split("## SAE-feature probes vs linear probes")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| deception |")]
    assert len(rows) == 3 and "(linear," in rows[0] and "`sae-deception-l1`" in rows[1] and "| 40 latents |" in rows[1]
    assert f"{lin - 0.2:.3f}" in rows[1] and "0.610 (0.60–0.62)" in rows[1]
    assert (
        "`sae-deception-l1`, 40 latents) trails the linear probe" in section and "alert on the linear probes" in section
    )
    assert "probewatch sae probe --behaviour deception (sae-deception-named)" in text

    better = {"sae-deception-l1": sae_summary("sae-deception-l1", min(1.0, lin + 0.005), 40)}
    text = render_markdown({"deception": report}, {}, 60.0, tiny_loaded, tmp_path / "quality.md", better)
    assert "matches the linear probe" in text and "alert on the linear probes" not in text
    assert "## SAE-feature probes" not in render_markdown(
        {"deception": report}, {}, 60.0, tiny_loaded, tmp_path / "q.md"
    )
