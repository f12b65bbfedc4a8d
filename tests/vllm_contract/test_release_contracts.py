"""The plugin's contract holds on every supported vLLM release (their wheels' source, read from the
zip), and breaks by name on a copy of the newest release's real source with one wrapped method renamed.

`make test-vllm-contract` downloads the wheels first (`probewatch vllm contract --version ...`);
`PROBEWATCH_VLLM_CONTRACT_VERSIONS` lists them (default 0.32.0 0.33.0 0.34.0)."""

from __future__ import annotations

import os
import shutil

import pytest

from probewatch.server.client.vllm_plugin.contract import SourceTree, check_all, wheel_cache
from tests.components import missing

VERSIONS = os.environ.get("PROBEWATCH_VLLM_CONTRACT_VERSIONS", "0.32.0 0.33.0 0.34.0").split()
# which runners each release ships (feature detection must find exactly these)
RUNNERS = {
    "0.32.0": {"vllm-v1", "vllm-v2"},
    "0.33.0": {"vllm-v1", "vllm-v2"},
    "0.34.0": {"vllm-v2", "vllm-cpu-standalone"},
}


def _wheel(version: str):
    found = sorted(wheel_cache().glob(f"vllm-{version}-*.whl"))
    if not found:
        missing(f"no vLLM {version} wheel in {wheel_cache()}: run `make test-vllm-contract`")
    return found[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_supported_release_has_what_the_plugin_wraps(version):
    tree = SourceTree(_wheel(version))
    assert tree.version() == version
    results = check_all(tree)
    failed = {part: [str(v) for v in r.violations] for part, r in results.items() if not r.ok}
    assert failed == {}
    if version in RUNNERS:
        assert set(results) - {"engine"} == RUNNERS[version]


def test_a_renamed_method_in_the_real_source_is_caught(release_source, tmp_path):
    """vLLM 0.34's own source with `sample_tokens` renamed in the V2 runner: the V2 part fails by name."""
    copy = tmp_path / "vllm-src"
    shutil.copytree(release_source / "vllm", copy / "vllm")
    path = copy / "vllm/v1/worker/gpu/model_runner.py"
    text = path.read_text()
    assert "    def sample_tokens(" in text
    path.write_text(text.replace("    def sample_tokens(", "    def sample_next_tokens("))
    results = check_all(SourceTree(copy))
    assert results["engine"].ok and results["vllm-cpu-standalone"].ok
    (violation,) = results["vllm-v2"].violations
    assert str(violation).startswith("vllm.v1.worker.gpu.model_runner.GPUModelRunner.sample_tokens(grammar_output)")
    assert violation.problem == "method not found (class and vLLM bases)"
