"""The lexical-confound check (benchmarks/lexical.py) and its `bench quality --lexical-only` part: the
reference model answers benign requests that only mention a behaviour's subject, the shipped bundles score
them."""

from __future__ import annotations

import argparse
import json
import shutil
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from probewatch.benchmarks import quality
from probewatch.benchmarks.lexical import LEXICAL_CHECK, confound_requests, lexical_confounds
from probewatch.bundle_index import shipped_root

ROOT = Path(__file__).resolve().parents[2]


def test_every_checked_probe_is_a_quality_job_with_a_topic_of_requests():
    assert set(LEXICAL_CHECK) <= set(quality.JOBS)
    assert LEXICAL_CHECK["deception"] == "deception"  # the deception probe is checked on lying / honesty talk
    for topic in set(LEXICAL_CHECK.values()):
        mentions, requests = confound_requests(topic)
        assert mentions and len(requests) >= 16 and len(set(requests)) == len(requests), topic
    with pytest.raises(KeyError, match="no lexical confounds for topic 'refusal' \\(one of deception, monitoring\\)"):
        confound_requests("refusal")


def test_the_requests_are_never_training_data():
    """Benchmark only: no request appears in any other packaged dataset file (the pools are built from those)."""
    root = resources.files("probewatch.training.datasets")
    corpus = "\n".join(
        p.read_text(encoding="utf-8") for p in Path(str(root)).rglob("*.yaml") if p.name != "lexical_confounds.yaml"
    )
    for topic in set(LEXICAL_CHECK.values()):
        for request in confound_requests(topic)[1]:
            assert request not in corpus, request


@pytest.mark.integration
def test_the_check_counts_what_the_shipped_bundle_flags_and_records(reference):
    from probewatch.data.dialogue import Dialogue, Message
    from probewatch.probes import ProbeRuntime, load_bundle
    from probewatch.scoring import score_dialogues

    bundle_dir = shipped_root() / reference.model_id / "deception"
    requests = confound_requests("deception")[1][:3]
    got = lexical_confounds(reference, bundle_dir, "deception", requests)
    assert got["topic"] == "deception" and got["mentions"] == "lying, honesty, trust or deception" and got["n"] == 3
    assert [e["text"] for e in got["examples"]] == requests and all(e["answer"] for e in got["examples"])
    # the same dialogues scored directly: the numbers are the shipped scoring at the shipped threshold
    bundle = load_bundle(bundle_dir, expected_fingerprint=reference.fingerprint)
    dialogues = [Dialogue([Message("user", e["text"]), Message("assistant", e["answer"])], 0) for e in got["examples"]]
    done = score_dialogues(reference.model, reference.tokenizer, ProbeRuntime([bundle]), dialogues, progress=False)
    scores = np.array([r.aggregate["deception"] for r in done])
    np.testing.assert_allclose([e["score"] for e in got["examples"]], scores, atol=1e-5)
    t = bundle.manifest.threshold
    assert got["threshold"] == t.value and got["flagged"] == int((scores >= t.value).sum())
    assert got["uncertain"] == sum(t.in_band(float(s)) for s in scores)
    assert got["mean_score"] == pytest.approx(scores.mean())


@pytest.mark.integration
def test_lexical_only_part_updates_its_probe_and_keeps_the_others(reference, tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs" / "quality", docs / "quality")
    parser = argparse.ArgumentParser()
    quality.add_cli_args(parser)
    args = parser.parse_args(
        ["--lexical-only", "--probes", "monitored-framing", "refusal", "--quiet"]
        + ["--runs-dir", str(tmp_path / "runs"), "--doc", str(docs / "quality.md"), "--threads", "2"]
    )
    before = json.loads((docs / "quality" / "diagnostics.json").read_text())
    assert quality.main(args) == 0
    saved = json.loads((tmp_path / "runs" / "diagnostics.json").read_text())
    assert set(saved) == set(before) | {"monitored-framing"}  # refusal has no check: nothing for it
    assert saved["monitored-framing"]["topic"] == "monitoring" and saved["monitored-framing"]["n"] == 16
    assert json.loads((docs / "quality" / "diagnostics.json").read_text()) == saved  # published with the doc
    timing = json.loads((tmp_path / "runs" / "timing.json").read_text())  # its seconds count in the run time
    assert timing["other_s"]["lexical:monitored-framing"] > 0
    assert timing["total_s"] == pytest.approx(sum(timing["probes_s"].values()) + sum(timing["other_s"].values()))
    text = (docs / "quality.md").read_text()
    section = text.split("## `monitored-framing`")[1].split("\n## ")[0]
    mf = saved["monitored-framing"]
    assert (
        f"{mf['flagged']} of 16 benign requests that merely mention tests, monitoring, training or a free tier"
        in section
    )
    assert "## `alignment-faking`" in text  # a part documents every probe


def test_lexical_only_names_what_it_cannot_check(tmp_path):
    args = SimpleNamespace(probes=["refusal"], runs_dir=tmp_path)
    with pytest.raises(
        ValueError, match="--lexical-only checks deception, alignment-faking, eval-awareness, monitored"
    ):
        quality._lexical_only(args, SimpleNamespace(model_id="no-such-model"))
    args.probes = ["deception"]
    with pytest.raises(FileNotFoundError, match="no shipped bundle for deception under"):
        quality._lexical_only(args, SimpleNamespace(model_id="no-such-model"))
