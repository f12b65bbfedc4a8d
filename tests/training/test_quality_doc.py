"""docs/quality.md rendering from training reports (the benchmark itself is slow and not a test)."""

from __future__ import annotations

import json

from probewatch.training.bench_quality import render_markdown
from probewatch.training.pipeline import TrainConfig, train
from tests.training.helpers import control_dialogues, synthetic_dialogues


def test_quality_markdown_tabulates_every_required_number(tiny_loaded, tmp_path):
    from probewatch.data.dialogue import write_dialogues

    data, control = tmp_path / "d.jsonl", tmp_path / "c.jsonl"
    write_dialogues(data, synthetic_dialogues(n_groups=24))
    write_dialogues(control, control_dialogues())
    result = train(TrainConfig(behaviour="deception", data_files=[data], control_file=control, out=tmp_path / "b",
                               progress=False, command="probewatch train --behaviour deception"), loaded=tiny_loaded)
    report = json.loads(result.report_path.read_text())
    diag = {"n": 4, "flagged": 1, "mean_score": -1.0, "threshold": 2.0}
    text = render_markdown({"deception": report, "alignment-faking": {**report, "probe_id": "af"}},
                           {"alignment-faking": diag}, 90.0, tiny_loaded, tmp_path / "quality.md")
    chosen = report["selection"]["chosen"]
    header = [line for line in text.splitlines() if line.startswith("| probe |")][0]
    for column in ("in-distribution AUROC", "held-out-kind AUROC", "recall @1% FPR on control", "layer", "method", "aggregation"):
        assert column in header
    row = [line for line in text.splitlines() if line.startswith("| `deception` |")][0]
    assert f"{report['metrics']['auroc']:.3f}" in row and f"| {chosen['layer']} |" in row and chosen["method"] in row
    assert "Layer sweep" in text and "quality/deception/roc.png" in text and "1 of 4 benign requests" in text
    assert "probewatch train --behaviour deception" in text
