"""The typed training report (`TrainReport`): what `probewatch train` writes as report.json.

The JSON layout is a contract (users and the shipped bundles' reports read it): `to_json` must give
back exactly the keys, order and values a report.json holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probewatch.bundle_index import shipped_root
from probewatch.jsonio import dumps
from probewatch.training.pipeline import TrainConfig, train
from probewatch.training.report import REPORT_FILENAME, Metrics, OperatingSummary, TrainReport, as_report
from tests.training.helpers import write_synthetic

SHIPPED_REPORTS = sorted(shipped_root().glob(f"*/*/{REPORT_FILENAME}"))


def _keys(obj: object) -> object:
    """Every key path, in order (values aside)."""
    if isinstance(obj, dict):
        return [(k, _keys(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return [_keys(v) for v in obj]
    return None


@pytest.mark.parametrize("path", SHIPPED_REPORTS, ids=lambda p: p.parent.name)
def test_shipped_reports_round_trip_through_the_typed_report(path: Path):
    text = path.read_text()
    raw = json.loads(text)
    report = TrainReport.from_json(raw)
    assert isinstance(report.metrics, Metrics) and isinstance(report.operating_point, OperatingSummary)
    assert report.probe_id == path.parent.name and report.chosen == raw["selection"]["chosen"]
    again = report.to_json()
    assert _keys(again) == _keys(raw)
    assert dumps(again, indent=2) + "\n" == text  # the same file, byte for byte (as write_json_atomic writes it)
    assert as_report(raw) == report and as_report(report) is report


def test_the_per_kind_and_transfer_fields_round_trip_where_a_run_sets_them():
    """Reports written before these fields omit them (the test above); a run that sets them keeps them."""
    path = next(p for p in SHIPPED_REPORTS if "sources" in json.loads(p.read_text()))
    raw = json.loads(path.read_text())
    op = raw["operating_point"]
    op |= {"hard_negative_kind": "af_long", "hard_negatives_per_kind": True}
    op |= {"transfer_fpr": 0.0, "transfer_threshold": op["threshold"] + 1.0, "transfer_recall_floor": 0.25}
    nested = raw["sources"]["nested"]
    nested["transfer_fpr"] = 0.05
    for outer in nested["outer"].values():
        if outer["at_threshold"] is not None:
            outer["at_threshold"] |= {"transfer_rate": 0.05, "transfer": None}
            outer["at_threshold"]["transfer"] = {
                "rate": 0.05, "threshold": 1.0, "recall": 0.5, "fpr_negatives": 0.1, "fpr_control_heldout": 0.0
            }  # fmt: skip
    report = TrainReport.from_json(raw)
    assert report.operating_point.transfer_fpr == 0.0 and report.operating_point.hard_negative_kind == "af_long"
    assert report.operating_point.transfer_recall_floor == 0.25
    assert report.sources is not None and report.sources.nested is not None
    assert report.sources.nested.transfer_fpr == 0.05
    assert report.to_json() == raw


def test_shipped_reports_exist():
    assert len(SHIPPED_REPORTS) >= 6


def test_trained_report_is_typed_and_written_as_its_json(tiny_loaded, tmp_path):
    data, control = write_synthetic(tmp_path, n_groups=24)
    result = train(
        TrainConfig(
            behaviour="deception",
            data_files=[data],
            control_file=control,
            layers=[1, 3],
            out=tmp_path / "b",
            progress=False,
            plots=False,
            multi_layer=0,
        ),
        loaded=tiny_loaded,
    )
    report = result.report
    assert isinstance(report, TrainReport) and result.report_path == tmp_path / "b" / REPORT_FILENAME
    on_disk = json.loads(result.report_path.read_text())
    assert on_disk == json.loads(dumps(report.to_json()))
    assert on_disk["config"]["augment"] == []  # resolved: user --data files get no copies unless asked
    assert list(on_disk) == [
        "probe_id",
        "behaviour",
        "bundle",
        "model",
        "command",
        "config",
        "data",
        "splits",
        "selection",
        "metrics",
        "test",
        "heldout_kinds",
        "ood",
        "operating_point",
        "multi_layer",
        "threshold",
        "aggregation",
        "platt",
        "parity",
        "sweep",
        "timings",
    ]  # no "plots" key without plots
    assert "total_s" in on_disk["timings"]  # written after the last stage
    reread = TrainReport.read(result.report_path)
    assert _keys(reread.to_json()) == _keys(on_disk) and reread.to_json() == on_disk
    # the manifest records the same headline metrics
    manifest = json.loads((result.bundle_path / "manifest.json").read_text())
    assert manifest["metrics"] == on_disk["metrics"]
    assert report.metrics.operating_point == {k: v for k, v in on_disk["operating_point"].items() if k != "per_kind"}


def test_report_json_refuses_unknown_fields():
    raw = json.loads(SHIPPED_REPORTS[0].read_text())
    raw["metrics"]["surprise"] = 1
    with pytest.raises(TypeError):
        TrainReport.from_json(raw)
