"""The held-out-source stage inside `probewatch train`: report.json `sources`, its round trip, and the
docs/quality.md tables rendered from it (issue 22). Tiny random-init model, two data files = two sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probewatch.bundle_index import shipped_root
from probewatch.data.dialogue import Dialogue, Message
from probewatch.jsonio import dumps
from probewatch.training.pipeline import TrainConfig, train
from probewatch.training.quality_doc import RunInfo, render_markdown
from probewatch.training.report import TrainReport
from tests.training.helpers import write_two_sources

RUN = RunInfo("tiny-model", "pwfp1:" + "0" * 32, 4, 64, 90.0, "2026-12-01 00:00 UTC", 2, "x86_64")


def _negatives_lean_positive(dialogues: list[Dialogue]) -> list[Dialogue]:
    """The public source's honest answers also use some of the label-1 words: its negatives score higher than
    the written source's, so a threshold learnt without it flags more of them (a transfer limit is asked)."""
    out = []
    for i, d in enumerate(dialogues):
        if d.label == 0:
            user, answer = d.messages
            words = " ".join(f"t{100 + (i * 7 + j) % 50}" for j in range(4))
            d = Dialogue([user, Message("assistant", f"{words} {answer.content}")], 0, d.group, d.kind)
        out.append(d)
    return out


@pytest.fixture(scope="module")
def two_source_report(tiny_loaded, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sources")
    a, b, control = write_two_sources(tmp, _negatives_lean_positive)
    result = train(
        TrainConfig(
            behaviour="deception",
            data_files=[a, b],
            control_file=control,
            layers=[1, 3],
            methods=["logistic", "mean_diff"],
            out=tmp / "bundle",
            progress=False,
            plots=False,
            multi_layer=0,
            nested_top_k=3,
            family=True,
            command="probewatch train --behaviour deception --data written.jsonl --data public.jsonl",
        ),
        loaded=tiny_loaded,
    )
    return result


def test_train_chooses_by_held_out_source_and_reports_the_nested_estimate(two_source_report):
    report = two_source_report.report
    s = report.sources
    assert s is not None and list(s.counts) == ["written.jsonl", "public.jsonl"]
    assert s.mapping == {"ka": "written.jsonl", "kb": "written.jsonl", "kc": "public.jsonl", "kd": "public.jsonl"}
    assert s.counts["written.jsonl"].kinds == ["ka", "kb"] and s.counts["written.jsonl"].n == 40
    # the shipped configuration is the held-out-source choice, and the report says so
    assert s.selection is not None and s.selection.basis == "heldout_source"
    assert s.selection.folds == ["public.jsonl", "written.jsonl"]
    assert s.selection.n_configurations == 4  # the pre-screen's top 3, then mean_diff's best row
    assert s.selection.n_eligible is not None and 1 <= s.selection.n_eligible <= 4
    assert report.selection.basis == "heldout_source"
    chosen = {k: report.chosen[k] for k in s.selection.chosen.config}
    assert chosen == s.selection.chosen.config
    nested = s.nested
    assert nested is not None and set(nested.outer) == {"written.jsonl", "public.jsonl"}
    for outer in nested.outer.values():
        # one source left: the inner folds are its kinds
        assert outer.selection.basis == "heldout_kind" and len(outer.selection.folds) == 2
        assert outer.n_pos == 20 and outer.n_neg == 20 and outer.against == "own_negatives"
        assert outer.auroc is not None and outer.gap == pytest.approx(outer.selection.chosen.mean - outer.auroc)
        assert outer.at_threshold is not None and 0.0 <= outer.at_threshold.fpr_control_heldout <= 1.0
    assert nested.selected_on_basis == "heldout_source" and nested.selected_on == s.selection.chosen.mean
    assert nested.optimism_gap == pytest.approx(nested.selected_on - nested.mean)
    # 20 negatives per source: each asks for a transfer rate and is checked with the other's
    rates = {name: o.at_threshold.transfer_rate for name, o in nested.outer.items() if o.at_threshold}
    assert len(rates) == 2 and all(r is not None and 0.0 <= r <= 0.2 for r in rates.values())
    for name, outer in nested.outer.items():
        (other,) = set(rates) - {name}
        check = outer.at_threshold.transfer
        assert check is not None and check.rate == (rates[other] if rates[other] < 0.2 else None)
    asked = min(rates.values())
    assert rates["public.jsonl"] < 0.2  # its negatives lean positive: the written source's threshold fails there
    op = report.operating_point
    assert nested.transfer_fpr == (asked if asked < 0.2 else None) and op.transfer_fpr == nested.transfer_fpr
    assert op.transfer_fpr is not None and op.transfer_threshold is not None  # the limit is shipped ...
    assert op.threshold >= op.transfer_threshold
    manifest = json.loads((two_source_report.bundle_path / "manifest.json").read_text())
    shipped = manifest["extra"]["operating_point"]  # ... and the bundle says where its threshold came from
    assert shipped["transfer_fpr"] == op.transfer_fpr and shipped["transfer_threshold"] == op.transfer_threshold
    assert manifest["threshold"]["value"] == pytest.approx(op.threshold)
    family = json.loads((two_source_report.bundle_path / "family_report.json").read_text())["threshold"]
    assert family["transfer_fpr"] == op.transfer_fpr  # the family takes the same share of its own negatives
    assert family["value"] >= family["transfer_threshold"]
    # the shipped threshold per source, on the test split
    test_sizes = {name: at.n_pos + at.n_neg for name, at in s.at_threshold.items()}
    assert sum(test_sizes.values()) == report.splits["test"]
    for at in s.at_threshold.values():
        assert at.recall is None or 0.0 <= at.recall <= 1.0
    assert "sources_s" in report.timings


def test_report_with_sources_round_trips_byte_for_byte(two_source_report):
    text = two_source_report.report_path.read_text()
    raw = json.loads(text)
    assert list(raw)[-2:] == ["timings", "sources"]  # appended after every field a shipped report has
    report = TrainReport.from_json(raw)
    assert report.sources == two_source_report.report.sources and report.to_json() == raw
    assert dumps(report.to_json(), indent=2) + "\n" == text
    # reports written before sources existed keep their exact layout (no "sources" key appears)
    shipped = json.loads(next(iter(sorted(shipped_root().glob("*/*/report.json")))).read_text())
    shipped.pop("sources", None)
    old = TrainReport.from_json(shipped)
    assert old.sources is None and old.to_json() == shipped and "sources" not in old.to_json()


def test_quality_markdown_renders_the_per_source_tables(two_source_report):
    raw = json.loads(two_source_report.report_path.read_text())
    text = render_markdown({"deception": raw}, {}, RUN)
    nested = raw["sources"]["nested"]
    section = text.split("## Held-out sources: the nested estimate")[1].split("\n## ")[0]
    for name, outer in nested["outer"].items():
        row = next(line for line in section.splitlines() if line.startswith(f"| `deception` | {name} |"))
        tied = f" (tied choices {outer['tied'][0]:.3f}–{outer['tied'][-1]:.3f})" if outer.get("tied") else ""
        assert f"| {outer['auroc']:.3f}{tied} |" in row and f"| {outer['gap']:+.3f} |" in row
        sel = outer["selection"]["chosen"]
        assert f"{sel['mean']:.3f} / {sel['worst']:.3f}" in row and f"layer {sel['config']['layer']} " in row
        at = outer["at_threshold"]
        assert f"{100 * at['fpr_control_heldout']:.0f}%" in row
    summary = next(line for line in section.splitlines() if "**mean over sources**" in line)
    ties = nested.get("tie_range")
    tie_cell = f" (every tie broken the worst / best way: {ties[0]:.3f} / {ties[1]:.3f})" if ties else ""
    assert (
        f"**{nested['mean']:.3f}**{tie_cell} |" in summary and f"optimism gap {nested['optimism_gap']:+.3f}" in summary
    )
    assert "held-out source (worst source first)" in summary
    thresholds = text.split("## Thresholds per source")[1].split("\n## ")[0]
    for name, at in raw["sources"]["at_threshold"].items():
        row = next(line for line in thresholds.splitlines() if line.startswith(f"| `deception` | {name} |"))
        assert f"| {at['n_pos']} / {at['n_neg']} |" in row
        assert f"| {at['recall']:.3f} | {100 * at['fpr_negatives']:.0f}% |" in row
    assert "{{" not in text and "{%" not in text


def test_quality_markdown_without_sources_has_no_source_sections():
    reports = {p.parent.name: json.loads(Path(p).read_text()) for p in sorted(shipped_root().glob("*/*/report.json"))}
    for report in reports.values():  # as written by a run on a one-source pool (or before sources existed)
        report.pop("sources", None)
    text = render_markdown(reports, {}, RUN)
    assert "## Held-out sources" not in text and "## Thresholds per source" not in text


def test_replay_reproduces_the_recorded_choice_and_the_bench_flags_a_changed_one(
    two_source_report, tiny_loaded, tiny_folder, tmp_path
):
    """`probewatch bench selection` replays a report's held-out-source choice with today's code on the same pool
    (training/replay.py): the run's own report replays to the same configuration and fold scores; a record
    that differs is reported as changed and `--check` fails; a report of another model is refused."""
    import argparse

    from probewatch.benchmarks import selection
    from probewatch.training.replay import replay_selection

    raw = json.loads(two_source_report.report_path.read_text())
    recorded = raw["sources"]["selection"]
    replay = replay_selection(raw, tiny_loaded)
    assert replay.now is not None and not replay.changed
    assert replay.now.chosen.config == recorded["chosen"]["config"]
    assert replay.now.chosen.mean == pytest.approx(recorded["chosen"]["mean"], abs=1e-9)
    assert replay.now.n_configurations == recorded["n_configurations"] and replay.nested is None

    altered = json.loads(json.dumps(raw))
    altered["sources"]["selection"]["chosen"]["config"]["layer"] += 100  # a record today's code cannot reproduce
    paths = {"same": tmp_path / "same.json", "altered": tmp_path / "altered.json"}
    paths["same"].write_text(json.dumps(raw))
    paths["altered"].write_text(json.dumps(altered))
    parser = argparse.ArgumentParser()
    selection.add_cli_args(parser)

    def bench(*names: str, nested: bool = False) -> tuple[int, dict]:
        argv = ["--model", str(tiny_folder), "--out", str(tmp_path / "out.json"), "--check"] + ["--nested"] * nested
        args = parser.parse_args(argv + [x for n in names for x in ("--report", str(paths[n]))])
        assert selection.report_paths(args) == [paths[n] for n in names]  # only these: no published report
        code = selection.main(args)
        return code, json.loads((tmp_path / "out.json").read_text())

    one_source = json.loads(json.dumps(raw))
    one_source["sources"] = {}  # as a pool of one data source records it
    paths["one_source"] = tmp_path / "one_source.json"
    paths["one_source"].write_text(json.dumps(one_source))
    refused = parser.parse_args(["--model", str(tiny_folder), "--report", str(paths["one_source"])])
    with pytest.raises(SystemExit, match="one_source.json records no held-out-source choice"):
        selection.report_paths(refused)  # never a "same" for a report there was nothing to replay of

    code, out = bench("same")
    assert code == 0 and out["changed"] == [] and out["replays"][0]["now"] == recorded["chosen"]["config"]
    code, out = bench("same", "altered")
    assert code == 1 and [r["changed"] for r in out["replays"]] == [False, True] and out["changed"] == ["deception"]
    code, out = bench("same", nested=True)  # the nested estimate again, with each held-out source's inner choice
    nested, published = out["replays"][0]["nested"], raw["sources"]["nested"]
    assert code == 0 and nested["mean"] == pytest.approx(published["mean"], abs=1e-9)
    for name, outer in published["outer"].items():
        assert nested["outer"][name]["chosen"] == outer["selection"]["chosen"]["config"]
        assert nested["outer"][name]["auroc"] == pytest.approx(outer["auroc"], abs=1e-9)

    unguarded = replay_selection(raw, tiny_loaded, margin=float("inf"))  # another margin on the same candidates
    assert unguarded.now is not None and unguarded.now.n_eligible == unguarded.now.n_configurations
    assert raw["config"]["selection_margin"] == 0.1
    off = json.loads(json.dumps({**raw, "config": {**raw["config"], "selection_margin": None}}))
    recorded_off = replay_selection(off, tiny_loaded)  # a run with `--selection-margin inf` (written as null)
    assert recorded_off.now is not None and recorded_off.now.n_eligible == unguarded.now.n_eligible
    strict = replay_selection(raw, tiny_loaded, margin=0.0)  # only the best validation AUROC may be chosen
    assert strict.now is not None and strict.now.n_eligible is not None
    assert strict.now.n_eligible <= replay.now.n_eligible <= unguarded.now.n_eligible

    foreign = json.loads(json.dumps(raw))
    foreign["model"]["fingerprint"] = "pwfp1:" + "f" * 32
    with pytest.raises(ValueError, match="was trained on pwfp1:f+, not on the loaded model"):
        replay_selection(foreign, tiny_loaded)


def test_bench_threshold_sets_the_same_threshold_again_and_names_a_record_it_cannot_reproduce(
    two_source_report, tiny_loaded, tiny_folder, tmp_path
):
    """`probewatch bench threshold` (training/rethreshold.py): the run's own bundle, scored through the live path
    on its rebuilt splits, gets the recorded threshold back from today's rules, with the transfer share of its
    nested estimate, and the same recall and flagged shares as the report; a record that differs is reported as
    changed and `--check` fails; a report of another model is refused."""
    import argparse
    import shutil

    from probewatch.benchmarks import threshold
    from probewatch.training.rethreshold import rethreshold

    raw = json.loads(two_source_report.report_path.read_text())
    op = raw["operating_point"]
    assert op["set_by"] == "transfer"  # the public source asked for a lower share: the case with every rule
    again = rethreshold(two_source_report.bundle_path, tiny_loaded)
    assert not again.changed and again.point.set_by == "transfer" and again.recorded_set_by == "transfer"
    assert again.now.threshold == pytest.approx(op["threshold"], abs=1e-4)
    assert again.point.transfer_fpr == raw["sources"]["nested"]["transfer_fpr"]
    assert again.point.control_threshold == pytest.approx(op["control_threshold"], abs=1e-4)
    shipped = op["shipped"]
    assert again.recorded.test_recall == pytest.approx(shipped["recall"])
    assert again.recorded.test_flagged_negatives == pytest.approx(shipped["fpr_negatives"])
    assert again.recorded.control_heldout_flagged == pytest.approx(shipped["fpr_control_heldout"])
    assert again.now.calibration_recall is not None and 0.0 <= again.now.calibration_recall <= 1.0

    altered = tmp_path / "altered"
    shutil.copytree(two_source_report.bundle_path, altered)
    changed = json.loads(json.dumps(raw))
    changed["operating_point"]["threshold"] += 1.0  # a record today's rules do not reproduce
    (altered / "report.json").write_text(json.dumps(changed))
    parser = argparse.ArgumentParser()
    threshold.add_cli_args(parser)

    def bench(*dirs: Path) -> tuple[int, dict]:
        argv = ["--model", str(tiny_folder), "--out", str(tmp_path / "out.json"), "--check", "--json"]
        args = parser.parse_args(argv + [x for d in dirs for x in ("--bundle", str(d))])
        assert threshold.bundle_dirs(args, tmp_path / "no-shipped") == list(dirs)  # only these
        code = threshold.main(args)
        return code, json.loads((tmp_path / "out.json").read_text())

    code, out = bench(two_source_report.bundle_path)
    assert code == 0 and out["changed"] == [] and out["bundles"][0]["now"]["set_by"] == "transfer"
    code, out = bench(two_source_report.bundle_path, altered)
    assert code == 1 and [b["changed"] for b in out["bundles"]] == [False, True] and out["changed"] == ["deception"]
    assert out["bundles"][1]["recorded"]["threshold"] == pytest.approx(op["threshold"] + 1.0)

    without = json.loads(json.dumps(raw))
    without["sources"]["nested"]["transfer_fpr"] = None  # no share asked: the negatives rule sets it
    (altered / "report.json").write_text(json.dumps(without))
    plain = rethreshold(altered, tiny_loaded)
    assert plain.point.transfer_threshold is None and plain.point.set_by != "transfer" and plain.changed
    assert plain.now.threshold < again.now.threshold

    foreign = json.loads(json.dumps(raw))
    foreign["model"]["fingerprint"] = "pwfp1:" + "f" * 32
    (altered / "report.json").write_text(json.dumps(foreign))
    with pytest.raises(ValueError, match="was trained on pwfp1:f+, not on the loaded model"):
        rethreshold(altered, tiny_loaded)


def test_a_bundles_split_is_rebuilt_from_its_report_and_a_changed_pool_gets_none(
    two_source_report, tiny_loaded, tmp_path
):
    """`training/bundle_split.py`: the report's config rebuilds the run's pool and grouped split (the test split
    has the recorded size and shares no group with the fit split); a report whose pool differs from today's
    (a kind resized) says so, and the evasion benchmark then has no held-out groups for it."""
    import shutil

    from probewatch.benchmarks.evasion import bundle_test_groups
    from probewatch.training.bundle_split import rebuild_split, report_of

    raw = report_of(two_source_report.bundle_path)
    rebuilt = rebuild_split(raw, tiny_loaded)
    assert rebuilt.same_pool and len(rebuilt.splits.pool.test_idx) == raw["splits"]["test"]
    groups = rebuilt.test_groups()
    fitted = {str(rebuilt.pool[i].group) for i in rebuilt.splits.pool.fit_idx}
    assert groups and not groups & fitted
    assert bundle_test_groups(two_source_report.bundle_path, tiny_loaded, None) == groups

    altered = tmp_path / "altered"
    shutil.copytree(two_source_report.bundle_path, altered)
    changed = json.loads(json.dumps(raw))
    changed["data"]["kinds"][sorted(changed["data"]["kinds"])[0]]["n"] += 2
    (altered / "report.json").write_text(json.dumps(changed))
    assert rebuild_split(changed, tiny_loaded).same_pool is False
    assert bundle_test_groups(altered, tiny_loaded, None) is None
    (altered / "report.json").unlink()
    assert bundle_test_groups(altered, tiny_loaded, None) is None  # no report: nothing to rebuild
