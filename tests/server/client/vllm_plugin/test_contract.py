"""The vLLM version contract's checker (`probewatch.server.client.vllm_plugin.contract`) on synthetic vLLM source:
it passes on a tree with every required symbol, fails naming exactly the one a release dropped,
renamed or re-signed, follows base classes and imports, reads wheels straight from the zip, and
`probewatch vllm contract` exits 1 with one line per violation. The real releases (0.32, 0.33, 0.34)
are checked by `make test-vllm-contract` (tests/vllm_contract)."""

from __future__ import annotations

import dataclasses

import pytest

from probewatch.cli.main import main
from probewatch.server.client.vllm_plugin.adapters import ADAPTERS
from probewatch.server.client.vllm_plugin.adapters.v2 import V2Adapter
from probewatch.server.client.vllm_plugin.contract import ENGINE_CONTRACT, Requirement, SourceTree, check, check_all
from tests.server.client.vllm_plugin.vllm_source import ALL, write_tree, zip_tree


def _req(adapter: str, name: str, cls: str | None = None) -> Requirement:
    contract = ENGINE_CONTRACT if adapter == "engine" else next(a for a in ADAPTERS if a.name == adapter).contract
    return next(r for r in contract if r.name == name and (cls is None or r.cls == cls))


def test_every_part_passes_on_a_complete_tree(tmp_path):
    results = check_all(SourceTree(write_tree(tmp_path)))
    assert set(results) == {"engine", "vllm-v1", "vllm-v2", "vllm-cpu-standalone"}
    assert all(r.ok for r in results.values()), {k: r.violations for k, r in results.items()}
    assert sum(r.checked for r in results.values()) == len(ALL)


@pytest.mark.parametrize(
    ("adapter", "name", "cls"),
    [
        ("vllm-v2", "execute_model", None),  # a wrapped method removed
        ("vllm-v2", "num_computed_tokens_np", "InputBatch"),  # a bookkeeping field renamed away
        ("vllm-v1", "input_batch", None),  # an attribute assigned on self
        ("vllm-cpu-standalone", "sample_tokens", None),
        ("engine", "_free_request", None),
        ("engine", "supports_eagle3", None),  # a module-level function
    ],
)
def test_a_missing_symbol_fails_and_is_named(tmp_path, adapter, name, cls):
    req = _req(adapter, name, cls)
    results = check_all(SourceTree(write_tree(tmp_path, drop=[req])))
    failed = {part: r.violations for part, r in results.items() if not r.ok}
    assert list(failed) == [adapter]
    (violation,) = failed[adapter]
    assert violation.requirement == req
    assert name in str(violation) and ("not found" in violation.problem)


def test_a_reordered_signature_fails(tmp_path):
    """The V2 wrapper reads dummy_run as the third positional parameter: a release that moves it fails."""
    write_tree(tmp_path)
    path = tmp_path / "vllm/v1/worker/gpu/model_runner.py"
    text = path.read_text()
    assert "def execute_model(self, scheduler_output, intermediate_tensors, dummy_run)" in text
    path.write_text(
        text.replace(
            "def execute_model(self, scheduler_output, intermediate_tensors, dummy_run)",
            "def execute_model(self, scheduler_output, dummy_run, intermediate_tensors)",
        )
    )
    result = check(V2Adapter.contract, SourceTree(tmp_path))
    (violation,) = result.violations
    assert violation.requirement.name == "execute_model"
    assert "the plugin needs (scheduler_output, intermediate_tensors, dummy_run)" in violation.problem


def test_methods_and_attributes_are_found_on_vllm_base_classes(tmp_path):
    """The V2 CPU runner inherits everything from the GPU runner through an import; a subclass that
    overrides a wrapped method would bypass the class-level patch and fails `not_overridden`."""
    (tmp_path / "vllm/base").mkdir(parents=True)
    (tmp_path / "vllm/__init__.py").write_text("")
    (tmp_path / "vllm/base/__init__.py").write_text("")
    (tmp_path / "vllm/base/runner.py").write_text(
        "class Mixin:\n    def helper(self, a, b, **kw):\n        self.state: int = 0\n\n"
        "class Runner(Mixin):\n    field: int\n    def step(self, x):\n        pass\n"
    )
    (tmp_path / "vllm/cpu.py").write_text(
        "from vllm.base.runner import Runner as Base\n\nclass CPURunner(Base):\n    def step(self, x):\n        pass\n"
    )
    tree = SourceTree(tmp_path)
    ok = [
        Requirement("vllm.cpu", "helper", "CPURunner", prefix=("a", "b"), params=("anything",)),  # **kw absorbs
        Requirement("vllm.cpu", "state", "CPURunner", "attr"),
        Requirement("vllm.cpu", "field", "CPURunner", "attr"),
        Requirement("vllm.cpu", "helper", "CPURunner", "not_overridden"),
    ]
    assert check(ok, tree).ok
    bad = [
        Requirement("vllm.cpu", "step", "CPURunner", "not_overridden"),
        Requirement("vllm.cpu", "helper", "CPURunner", prefix=("b",)),
        Requirement("vllm.cpu", "missing", "CPURunner", "attr"),
        Requirement("vllm.cpu", "step", "Nope"),
        Requirement("vllm.gone", "step", "CPURunner"),
    ]
    problems = [v.problem for v in check(bad, tree).violations]
    assert len(problems) == 5
    assert problems[0].startswith("redefined in the class")
    assert problems[1].startswith("signature starts (a)")
    assert problems[2].startswith("attribute not found")
    assert problems[3] == "class Nope not found"
    assert problems[4] == "module not found"


def test_wheels_are_read_from_the_zip_and_the_cli_fails_on_a_violation(tmp_path, capsys):
    good = zip_tree(write_tree(tmp_path / "good", version="0.50.0"), tmp_path / "vllm-0.50.0-py3-none-any.whl")
    drop = _req("vllm-v2", "sample_tokens")
    bad = zip_tree(
        write_tree(tmp_path / "bad", drop=[drop], version="0.51.0"), tmp_path / "vllm-0.51.0-py3-none-any.whl"
    )
    assert SourceTree(good).version() == "0.50.0"
    assert main(["vllm", "contract", "--wheel", str(good)]) == 0
    out = capsys.readouterr().out
    assert "vLLM 0.50.0 vllm-v2: ok" in out and "vLLM 0.50.0 vllm-cpu-standalone: ok" in out
    assert main(["vllm", "contract", "--wheel", str(good), "--wheel", str(bad)]) == 1
    captured = capsys.readouterr()
    assert "vLLM 0.51.0 vllm-v2: FAIL" in captured.out
    (line,) = [ln for ln in captured.err.splitlines() if ln.startswith("probewatch vllm contract:")]
    assert "vLLM 0.51.0 vllm-v2: vllm.v1.worker.gpu.model_runner.GPUModelRunner.sample_tokens" in line
    assert "method not found" in line


def test_every_requirement_says_where_it_lives():
    for req in ALL:
        assert req.module.startswith("vllm"), req
        assert req.kind == "function" or req.cls, req
        assert dataclasses.replace(req) == req
