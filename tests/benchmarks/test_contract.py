"""Every `probewatch bench` subcommand is a module on one contract (`add_cli_args(parser)`,
`main(args) -> int`), imports light (no torch, gRPC or vLLM until it runs: `probewatch --help`
imports them all) and reports through the harness: human lines, the JSON report, and under --json
one JSON object as the last stdout line."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from probewatch.benchmarks.harness import emit, percentile_ms, rates, rotated
from probewatch.cli.bench_cmd import BENCHMARKS
from probewatch.cli.main import build_parser

NAMES = (
    "capture",
    "quality",
    "overhead",
    "ingest",
    "vllm",
    "soak",
    "review",
    "evasion",
    "selection",
    "threshold",
    "augmentation",
    "multiple-choice",
    "reading-by-source",
    "sweep",
)


def test_the_registry_keeps_every_subcommand():
    assert tuple(BENCHMARKS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_benchmark_module_follows_the_contract(name):
    module = importlib.import_module(BENCHMARKS[name][0])
    assert callable(module.add_cli_args) and callable(module.main)
    parser = argparse.ArgumentParser()
    module.add_cli_args(parser)
    args = parser.parse_args(["--json"])
    assert args.json is True and args.model  # the common flags, added by the module itself


@pytest.mark.parametrize("name", NAMES)
def test_the_cli_dispatches_to_the_module_main(name):
    args = build_parser().parse_args(["bench", name, "--json"])
    assert args.bench_command == name and callable(args.func)


def test_benchmark_modules_import_without_heavy_dependencies():
    code = (
        "import sys, importlib\n"
        f"for m in {[module for module, _ in BENCHMARKS.values()]!r}: importlib.import_module(m)\n"
        "import probewatch.benchmarks.harness, probewatch.benchmarks.soak_stream, probewatch.benchmarks.vllm_engine\n"
        "heavy = ('torch', 'grpc', 'vllm', 'transformers', 'matplotlib', 'numpy', 'probewatch.cli')\n"
        "print(sorted(m for m in sys.modules if m in heavy or m.startswith(heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_emit_writes_the_report_and_the_json_last_line(tmp_path, capsys):
    result = {"benchmark": "x", "value": 1.5, "nested": {"a": [1, 2]}}
    emit(result, True, ["a human line"], report=tmp_path / "sub" / "report.json")
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1]) == result and "a human line" in err
    assert json.loads((tmp_path / "sub" / "report.json").read_text()) == result
    emit(result, False, ["a human line"])
    out, _ = capsys.readouterr()
    assert out == "a human line\n"


def test_timing_helpers():
    assert [rotated("abc", r) for r in range(4)] == [list("abc"), list("bca"), list("cab"), list("abc")]
    medians, per_s, best = rates({"m": [2.0, 1.0, 4.0]}, lambda _k: 8)
    assert medians == {"m": 2.0} and per_s == {"m": 4.0} and best == {"m": 8.0}
    assert percentile_ms([0.001, 0.002, 0.003, 0.004], 0.5) == 3.0 and percentile_ms([], 0.5) is None
