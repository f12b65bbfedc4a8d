"""`probewatch bench quality` in parts (`--probes` runs into one runs dir): each part updates its probes'
baseline, timing, diagnostics and evasion entries and keeps the others', so the document rendered after
the last part compares every probe with the run before it and states the whole run's time."""

from __future__ import annotations

import json
from types import SimpleNamespace

from probewatch.benchmarks import quality
from probewatch.benchmarks.quality_extras import save_evasion, saved_evasion


def _doc_reports(root, reports: dict[str, dict]) -> None:
    for name, report in reports.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "report.json").write_text(json.dumps(report))


def test_baseline_of_a_part_keeps_the_other_probes(tmp_path):
    plots, runs = tmp_path / "docs", tmp_path / "runs"
    runs.mkdir()
    _doc_reports(plots, {"deception": {"v": "old-d"}, "refusal": {"v": "old-r"}})
    first = quality._previous_reports(plots, runs, ["deception"])
    assert first == {"deception": {"v": "old-d"}}
    _doc_reports(plots, {"deception": {"v": "new-d"}})  # the first part replaced deception's doc report
    second = quality._previous_reports(plots, runs, ["refusal"])
    assert second == {"deception": {"v": "old-d"}, "refusal": {"v": "old-r"}}
    assert json.loads((runs / "baseline.json").read_text()) == second
    # a probe trained again takes the doc report it replaces; one without a doc report is dropped
    assert quality._previous_reports(plots, runs, ["deception", "eval-awareness"])["deception"] == {"v": "new-d"}


def test_timing_adds_up_the_parts(tmp_path):
    def report(seconds: float):
        return SimpleNamespace(timings={"bench_wall_s": seconds})

    info = SimpleNamespace(total_s=0.0)
    quality._save_timing(tmp_path, {"deception": report(100.0)}, 130.0, 50.0, info)
    assert info.total_s == 180.0
    quality._save_timing(tmp_path, {"refusal": report(20.0), "refusal-mean-diff": report(5.0)}, 40.0, 0.0, info)
    saved = json.loads((tmp_path / "timing.json").read_text())
    assert saved["probes_s"] == {"deception": 100.0, "refusal": 20.0, "refusal-mean-diff": 5.0}
    assert saved["other_s"] == {"deception": 30.0, "refusal,refusal-mean-diff": 15.0}
    assert saved["total_s"] == 170.0 and saved["sae_s"] == 50.0  # a part with --no-sae keeps the SAE time
    assert info.total_s == 220.0
    # the same part again replaces its own entries instead of adding them twice
    quality._save_timing(tmp_path, {"deception": report(90.0)}, 100.0, 50.0, info)
    assert json.loads((tmp_path / "timing.json").read_text())["total_s"] == 90.0 + 10.0 + 20.0 + 5.0 + 15.0


def test_diagnostics_merge_over_parts(tmp_path):
    path = tmp_path / "diagnostics.json"
    quality._merge_json(path, {"alignment-faking": {"flagged": 1}})
    merged = quality._merge_json(path, {"eval-awareness": {"flagged": 0}, "alignment-faking": {"flagged": 2}})
    assert merged == {"alignment-faking": {"flagged": 2}, "eval-awareness": {"flagged": 0}}
    path.write_text("{corrupt")
    assert quality._merge_json(path, {"a": 1}) == {"a": 1}


def test_evasion_of_other_probes_survives_a_part(tmp_path):
    save_evasion(tmp_path, [{"probe_id": "deception", "x": 1}, {"probe_id": "refusal", "x": 2}])
    merged = save_evasion(tmp_path, [{"probe_id": "refusal", "x": 3}, {"probe_id": "refusal-mean-diff", "x": 4}])
    assert merged == saved_evasion(tmp_path)
    assert [(r["probe_id"], r["x"]) for r in merged] == [("deception", 1), ("refusal", 3), ("refusal-mean-diff", 4)]
