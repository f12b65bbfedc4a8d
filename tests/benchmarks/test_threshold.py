"""`probewatch bench threshold`'s choice of bundles (the re-thresholding itself runs on a trained tiny bundle in
tests/training/test_sources_pipeline.py)."""

from __future__ import annotations

import argparse

import pytest

from probewatch.benchmarks import threshold
from probewatch.bundle_index import shipped_root


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    threshold.add_cli_args(parser)
    return parser.parse_args(list(argv))


def test_default_is_every_shipped_bundle_with_a_report():
    root = shipped_root() / "smollm2-135m-instruct"
    dirs = threshold.bundle_dirs(_args(), root)
    names = [d.name for d in dirs]
    assert names == sorted(names) and {"deception", "refusal", "alignment-faking", "eval-awareness"} <= set(names)
    assert all((d / "report.json").is_file() for d in dirs)
    assert threshold.bundle_dirs(_args("--probes", "refusal"), root) == [root / "refusal"]


def test_a_probe_without_a_trained_bundle_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no trained bundle with a report.json at .*no-such-probe"):
        threshold.bundle_dirs(_args("--probes", "no-such-probe"), tmp_path)
