"""`probewatch bench quality` in parts (`--probes` runs into one runs dir): each part updates its probes'
baseline, timing, diagnostics and evasion entries and keeps the others', so the document rendered after
the last part compares every probe with the run before it and states the whole run's time."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

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
    sae = {"sae-deception-l1": 30.0, "sae-refusal-l1": 20.0}
    documented = {k: {"seconds": 1.0} for k in sae}
    quality._save_timing(tmp_path, {"deception": report(100.0)}, 130.0, sae, info, documented)
    assert info.total_s == 180.0
    quality._save_timing(
        tmp_path, {"refusal": report(20.0), "refusal-mean-diff": report(5.0)}, 40.0, {}, info, documented
    )
    saved = json.loads((tmp_path / "timing.json").read_text())
    assert saved["probes_s"] == {"deception": 100.0, "refusal": 20.0, "refusal-mean-diff": 5.0}
    assert saved["other_s"] == {"deception": 30.0, "refusal,refusal-mean-diff": 15.0}
    assert saved["total_s"] == 170.0 and saved["sae_s"] == 50.0  # a part with --no-sae keeps the SAE time
    assert info.total_s == 220.0
    # the same part again replaces its own entries instead of adding them twice
    quality._save_timing(tmp_path, {"deception": report(90.0)}, 100.0, {}, info, documented)
    assert json.loads((tmp_path / "timing.json").read_text())["total_s"] == 90.0 + 10.0 + 20.0 + 5.0 + 15.0


def test_a_rerun_part_replaces_the_parts_it_covers_in_any_order():
    other = {"b,a": 10.0, "c": 5.0, "evasion:b,a": 7.0, "evasion:c": 3.0}
    evasion = quality.merge_part(other, "evasion:", ["a", "b", "c"], 4.0)
    assert evasion == {"b,a": 10.0, "c": 5.0, "evasion:a,b,c": 4.0}  # both earlier evasion parts covered
    training = quality.merge_part(other, "", ["a", "b"], 2.0)
    assert training == {"c": 5.0, "evasion:b,a": 7.0, "evasion:c": 3.0, "a,b": 2.0}  # evasion keys kept
    assert quality.merge_part({"a,b": 1.0}, "", ["a"], 2.0) == {"a,b": 1.0, "a": 2.0}  # part of a part: kept


def test_sae_seconds_add_up_per_probe_over_parts(tmp_path):
    """An SAE-only part refits some SAE probes: their seconds replace their own entries, the others' stay
    (it used to overwrite the whole SAE time with its own)."""
    documented = {"sae-refusal-l1": {"seconds": 2.9}, "sae-alignment-faking-l1": {"seconds": 383.4}}
    saved = {"sae_probes_s": {"sae-refusal-l1": 3.0, "sae-alignment-faking-l1": 380.0}}
    assert quality._merge_sae_seconds(saved, {"sae-alignment-faking-l1": 400.0}, documented) == 403.0
    assert saved["sae_probes_s"] == {"sae-refusal-l1": 3.0, "sae-alignment-faking-l1": 400.0}
    assert quality._sae_seconds({"a": {"bench_wall_s": 2}, "b": {}}) == {"a": 2.0}


def test_sae_seconds_never_drop_a_documented_part(tmp_path):
    """A timing.json from before the per-probe split held one `sae_s` (the alignment-faking part alone); a later
    part fitting deception's SAE probes used to make the run time count only those. Every SAE probe the doc
    shows is counted: by its recorded wall time, else by its report's own measured `seconds`."""
    documented = {
        "sae-alignment-faking-l1": {"seconds": 383.4},
        "sae-alignment-faking-named": {"seconds": 37.1},
        "sae-refusal-l1": {"seconds": 3.0},
        "sae-deception-l1": {"seconds": 50.0},
    }
    legacy = {"sae_s": 420.5}
    total = quality._merge_sae_seconds(legacy, {"sae-deception-l1": 55.0}, documented)
    assert total == 383.4 + 37.1 + 3.0 + 55.0
    assert legacy["sae_probes_s"]["sae-deception-l1"] == 55.0  # this part's wall time, not the report's
    # a retired SAE probe (no longer documented) stops counting; nothing documented keeps the old figure
    assert quality._merge_sae_seconds(legacy, {}, {"sae-refusal-l1": {"seconds": 3.0}}) == 3.0
    assert quality._merge_sae_seconds({"sae_s": 420.5}, {}, {}) == 420.5


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


def test_the_doc_inputs_published_next_to_it_seed_a_fresh_runs_folder(tmp_path):
    """A fresh clone has no runs folder: the inputs published in docs/quality/ after a render come back, so a
    part run or a re-render there documents every probe, the family, SAE probes, evasion and the baseline."""
    from probewatch.benchmarks.quality_inputs import input_files, publish_inputs, seed_runs_dir

    runs, docs, fresh = tmp_path / "runs", tmp_path / "docs", tmp_path / "fresh"
    files = {
        "deception/report.json": {"r": "d"},
        "deception/family_report.json": {"family_id": "deception-family"},
        "refusal/report.json": {"r": "r"},
        "sae/sae-deception-l1/report.json": {"behaviour": "deception"},
        "evasion.json": [{"probe_id": "deception"}],
        "diagnostics.json": {},
        "baseline.json": {"deception": {"r": "old"}},
        "timing.json": {"total_s": 1.0},
    }
    for rel, value in files.items():
        (runs / rel).parent.mkdir(parents=True, exist_ok=True)
        (runs / rel).write_text(json.dumps(value))
    (runs / "deception" / "weights.safetensors").write_bytes(b"x")  # bundles are shipped, not doc inputs
    published = publish_inputs(runs, docs, quality.JOBS)
    assert sorted(map(str, published)) == sorted(files) and not (docs / "deception" / "weights.safetensors").exists()
    assert sorted(map(str, seed_runs_dir(fresh, docs, quality.JOBS))) == sorted(files)
    assert all(json.loads((fresh / rel).read_text()) == value for rel, value in files.items())
    # the runs folder wins where it has a file: seeding never overwrites this machine's newer part
    (fresh / "refusal" / "report.json").write_text(json.dumps({"r": "newer"}))
    assert seed_runs_dir(fresh, docs, quality.JOBS) == []
    assert json.loads((fresh / "refusal" / "report.json").read_text()) == {"r": "newer"}
    assert set(map(str, input_files(fresh, ["refusal"]))) == {
        "refusal/report.json",
        *[f for f in files if "/" not in f or f.startswith("sae/")],
    }


def test_parts_a_render_has_no_input_for_are_named_in_the_doc_not_dropped():
    from probewatch.training.quality_doc import render_markdown
    from tests.training.test_quality_doc import RUN

    missing = quality.missing_parts({"deception": {}, "refusal": {}}, {}, {"s": {"behaviour": "refusal"}})
    assert missing == [
        "the `deception` family (`deception/family_report.json`)",
        "the SAE-feature probes of deception (`sae/sae-deception-*`)",
    ]
    assert quality.missing_parts({"eval-awareness": {}}, {}, {}) == []  # neither a family nor SAE probes
    text = render_markdown({}, {}, RUN, missing=missing)
    assert "**Not in this render:** the `deception` family (`deception/family_report.json`); the SAE" in text
    assert "Not in this render" not in render_markdown({}, {}, RUN)


def test_recorded_train_command_reproduces_the_job_and_a_narrowed_sweep():
    """docs/quality.md prints each bundle's `probewatch train` line as its recipe: parsed by the real `train`
    CLI it must give the job's behaviour, method, id, family and the `--layers` override the bench ran with."""
    import argparse

    from probewatch.cli.train_cmd import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))

    def parsed(command: str):
        assert command.startswith("probewatch train ")
        return config_from_args(parser.parse_args(command.split()[1:]))

    bench = argparse.ArgumentParser()
    quality.add_cli_args(bench)
    narrowed = bench.parse_args(["--layers", "7,11,21"]).layers
    deception = parsed(quality._train_command(quality.JOBS["deception"], narrowed))
    assert (deception.behaviour, deception.family, list(deception.layers)) == ("deception", True, [7, 11, 21])
    ranged = parsed(quality._train_command(quality.JOBS["deception"], bench.parse_args(["--layers", "4-6"]).layers))
    assert list(ranged.layers) == [4, 5, 6]  # the bench reads the train CLI's layer forms, ranges included
    with pytest.raises(SystemExit):
        bench.parse_args(["--layers", "7,x"])  # refused at parse time with the forms it takes, not mid-run
    full = parsed(quality._train_command(quality.JOBS["deception"], bench.parse_args([]).layers))
    assert full.layers is None and "--layers" not in quality._train_command(quality.JOBS["deception"])
    mean_diff = parsed(quality._train_command(quality.JOBS["refusal-mean-diff"]))
    assert (mean_diff.behaviour, mean_diff.probe_id, list(mean_diff.methods), mean_diff.family) == (
        "refusal",
        "refusal-mean-diff",
        ["mean_diff"],
        False,
    )


def test_a_run_rendered_elsewhere_keeps_its_reports_beside_that_doc(tmp_path):
    """The runs folder wins over the published inputs, so a trial run (`--doc /tmp/x.md`) writing into
    runs/quality would be rendered into the checkout's doc by the next part run there (it happened: another
    probe's stale report and a baseline of one probe). Its default runs folder is beside its own doc."""
    root = tmp_path / "checkout"
    (root / "docs").mkdir(parents=True)
    assert quality.default_runs_dir(root / "docs" / "quality.md", root) == Path("runs/quality")
    elsewhere = tmp_path / "trial" / "quality.md"
    assert quality.default_runs_dir(elsewhere, root) == tmp_path / "trial" / "runs" / "quality"
