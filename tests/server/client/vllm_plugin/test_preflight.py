"""`probewatch vllm check`: passes when monitoring will engage, and exits 1 with one line naming the
reason for each case it checks — vLLM missing, kill switch, a runner's contract broken, a model
without auxiliary outputs, sidecar down, token refused, another model's bundles, layers out of
range, speculative decoding, pipeline parallelism. A real sidecar on loopback; the vLLM source is
the synthetic tree written from the plugin's own contract (tests/server/client/vllm_plugin/vllm_source.py)."""

from __future__ import annotations

import json

import pytest

from probewatch.cli.main import main
from tests.server.client.vllm_plugin.vllm_source import write_tree


@pytest.fixture(scope="module")
def vllm_tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("vllm-src"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model.save_pretrained(path)
    return path


def _check(capsys, *args: str) -> tuple[int, list[str], str]:
    rc = main(["vllm", "check", "--timeout", "2", *args])
    captured = capsys.readouterr()
    return rc, [ln for ln in captured.err.splitlines() if ln.startswith("probewatch vllm check:")], captured.out


def _base(vllm_tree, model_dir, sidecar) -> list[str]:
    return ["--vllm-source", str(vllm_tree), "--model", str(model_dir), "--sidecar", sidecar.address]


def test_all_checks_pass_and_json_lists_them(capsys, vllm_tree, model_dir, start_sidecar):
    sidecar = start_sidecar()
    rc, errors, out = _check(capsys, *_base(vllm_tree, model_dir, sidecar))
    assert rc == 0 and errors == [], out
    assert "monitoring will engage" in out
    rc, _, out = _check(capsys, *_base(vllm_tree, model_dir, sidecar), "--json")
    report = json.loads(out.strip().splitlines()[-1])
    names = {c["name"] for c in report["checks"]}
    assert report["ok"] and {"vllm", "plugin", "contract:vllm-v2", "model", "sidecar", "fingerprint", "layers"} <= names


def _failure(capsys, args, reason: str) -> str:
    rc, errors, _ = _check(capsys, *args)
    assert rc == 1
    (line,) = [e for e in errors if f"({reason})" in e]
    return line


def test_engine_settings_the_plugin_cannot_monitor(capsys, vllm_tree, model_dir, start_sidecar):
    base = _base(vllm_tree, model_dir, start_sidecar())
    line = _failure(capsys, [*base, "--speculative-config", '{"method": "eagle3"}'], "speculative_decoding")
    assert "eagle3" in line and "unmonitored" in line
    # a draft model reads the target's hidden states (V1 would hand it the aux outputs): refused too
    line = _failure(
        capsys, [*base, "--speculative-config", '{"method": "draft_model", "model": "m"}'], "speculative_decoding"
    )
    assert "draft_model: its drafter reads the model's hidden or auxiliary outputs" in line
    # a drafter that reads only token ids: scored once accepted, on the V1 runner
    rc, errors, out = _check(capsys, *base, "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}')
    assert rc == 0 and errors == [] and "ngram: draft rows scored once accepted" in out
    assert "2 stages" in _failure(capsys, [*base, "--pipeline-parallel-size", "2"], "pipeline_parallel")


def test_kill_switch_and_broken_contract(capsys, monkeypatch, tmp_path, vllm_tree, model_dir, start_sidecar):
    from probewatch.server.client.vllm_plugin.adapters.v2 import V2Adapter

    sidecar = start_sidecar()
    monkeypatch.setenv("PROBEWATCH_DISABLE", "1")
    assert "PROBEWATCH_DISABLE" in _failure(capsys, _base(vllm_tree, model_dir, sidecar), "disabled")
    monkeypatch.delenv("PROBEWATCH_DISABLE")
    broken = write_tree(tmp_path / "broken", drop=[r for r in V2Adapter.contract if r.name == "execute_model"])
    line = _failure(capsys, _base(broken, model_dir, sidecar), "contract")
    assert "contract:vllm-v2" in line and "execute_model" in line and "unmonitored" in line


def test_model_without_auxiliary_outputs(capsys, tmp_path, vllm_tree, model_dir, start_sidecar):
    import shutil

    other = tmp_path / "gpt2ish"
    shutil.copytree(model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (other / "config.json").write_text(json.dumps(config))
    line = _failure(capsys, _base(vllm_tree, other, start_sidecar()), "model_without_aux_outputs")
    assert "GPT2LMHeadModel: no auxiliary outputs" in line


def test_sidecar_down_refused_token_other_model_and_layers(
    capsys, monkeypatch, tmp_path, vllm_tree, model_dir, start_sidecar
):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    args = ["--vllm-source", str(vllm_tree), "--model", str(model_dir), "--sidecar", dead]
    assert "unreachable" in _failure(capsys, args, "sidecar_down")

    tokens = tmp_path / "tokens"
    tokens.write_text("the-right-token-0123456789\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("a-wrong-token-abcdefghijkl\n")
    guarded = start_sidecar(auth_token_file=tokens)
    monkeypatch.setenv("PROBEWATCH_AUTH_TOKEN_FILE", str(wrong))
    assert "UNAUTHENTICATED" in _failure(capsys, _base(vllm_tree, model_dir, guarded), "sidecar_auth")
    monkeypatch.setenv("PROBEWATCH_AUTH_TOKEN_FILE", str(tokens))
    rc, errors, out = _check(capsys, *_base(vllm_tree, model_dir, guarded))
    assert rc == 0 and "token accepted" in out, errors
    monkeypatch.delenv("PROBEWATCH_AUTH_TOKEN_FILE")

    sidecar = start_sidecar()
    monkeypatch.setenv("PROBEWATCH_FINGERPRINT", "pwfp1:" + "cd" * 16)
    assert "the sidecar's bundles are for" in _failure(capsys, _base(vllm_tree, model_dir, sidecar), "fingerprint")
    monkeypatch.delenv("PROBEWATCH_FINGERPRINT")

    # a model with fewer layers than the bundles read (its fingerprint overridden to the bundles')
    import shutil

    from probewatch.models import fingerprint_folder

    short = tmp_path / "short"
    shutil.copytree(model_dir, short)
    monkeypatch.setenv("PROBEWATCH_FINGERPRINT", fingerprint_folder(model_dir))
    config = json.loads((short / "config.json").read_text())
    config["num_hidden_layers"] = 2
    (short / "config.json").write_text(json.dumps(config))
    assert "layers [2] out of range for a model with 2 decoder layers" in _failure(
        capsys, _base(vllm_tree, short, sidecar), "layers_out_of_range"
    )


def test_vllm_not_installed(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    line = _failure(capsys, ["--sidecar", "127.0.0.1:1"], "vllm_missing")
    assert "not installed" in line
