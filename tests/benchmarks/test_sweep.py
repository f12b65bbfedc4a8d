"""`probewatch bench sweep`: the layer sweep's time on a synthetic pool, and the row scoring it rests on."""

from __future__ import annotations

import json

import numpy as np

from probewatch.benchmarks.sweep import synthetic_layer
from probewatch.cli.main import main as cli_main


def test_synthetic_layer_keeps_pairs_together_and_every_kind_in_the_fit_split():
    data, pool, control = synthetic_layer(400, 5, 8, 0.05)
    assert data.n_examples == 400 and data.rows.shape[1] == 8 and control.n_examples == 336
    assert sorted(np.concatenate([pool.fit_idx, pool.val_idx, pool.test_idx]).tolist()) == list(range(400))
    for a, b in ((pool.fit_idx, pool.val_idx), (pool.fit_idx, pool.test_idx), (pool.val_idx, pool.test_idx)):
        assert not set(pool.groups[a]) & set(pool.groups[b])  # a pair never on both sides
    assert set(pool.kinds[pool.fit_idx]) == {f"kind{k}" for k in range(5)}
    assert (np.diff(data.offsets) == 1000).sum() > 0  # long transcripts are in


def test_bench_sweep_reports_every_configuration_and_equal_row_scores(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    argv = ["bench", "sweep", "--examples", "300", "--kinds", "4", "--d-model", "16", "--reps", "2"]
    assert cli_main([*argv, "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == json.loads(out.read_text())
    assert result["configurations"] == 4 * 8 + 2 * 8  # logistic at 4 Cs, mean_diff and LAT, 8 aggregations each
    assert result["shape"]["rows"] > 300 * 20 and result["sweep_layer_median_s"] > 0
    rows = result["row_scoring"]
    assert rows["max_abs_difference"] < 1e-9 and rows["speedup"] > 0
    assert set(rows["median_s"]) == {"whole_matrix", "blocked"}
