"""`probewatch bench vllm` on a written model shape with random weights (`--model-config
deploy/bench/tiny-llama-shape --load-format dummy`): the path a GPU host runs for the 8B Llama shape
(deploy/bench/llama-8b-shape), here on CPU at a tiny size. Every monitored run comes back complete,
nothing dropped, the JSON names the runner the plugin engaged on; parity is skipped (no reference
with the same random weights)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.vllm_backend.conftest import REPO


def test_bench_vllm_runs_a_dummy_weight_shape(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "probewatch.cli.main", "bench", "vllm", "--json"]
    cmd += ["--model-config", "deploy/bench/tiny-llama-shape", "--load-format", "dummy", "--eager"]
    cmd += ["--batches", "2", "--repeats", "1", "--new-tokens", "8", "--configs", "off,probewatch", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == json.loads(out.read_text())
    assert report["runner"] == "vllm-v1" and report["load_format"] == "dummy" and report["device"] == "cpu"
    assert report["layers"] == [0, 1, 2]  # spread over the shape's 4 layers
    assert report["monitored_complete"] == {"rows": True, "pushdown": True}
    assert report["monitored_dropped"] == {"rows": 0, "pushdown": 0}
    assert report["parity_skipped"] and report["parity_cos_min"] is None
    assert report["ratio_rows"] > 0 and report["ratio_pushdown"] > 0
    assert out.with_suffix(".png").stat().st_size > 1000
