"""Turn a `--model` value into a loaded HF model + tokenizer + fingerprint.

A model spec is one of: a registry name (`smollm2-135m-instruct`, provisioned on first use),
a local HF folder, or a hub id (loaded with `from_pretrained`, so users with a hub or a local
HF cache get exactly the usual behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probewatch import envs
from probewatch.errors import ModelUnavailableError
from probewatch.models import fetch as fetch_mod
from probewatch.models.registry import REFERENCE_MODEL, resolve_name


@dataclass
class LoadedModel:
    """A model ready for capture: weights, tokenizer and the identity bundles are bound to."""

    spec: str
    path: str
    model: Any
    tokenizer: Any
    fingerprint: str

    @property
    def model_id(self) -> str:
        entry = resolve_name(self.spec)
        return entry.name if entry else self.spec

    @property
    def d_model(self) -> int:
        from probewatch.capture import hidden_size

        return hidden_size(self.model)

    @property
    def n_layers(self) -> int:
        from probewatch.capture import find_decoder_layers

        return len(find_decoder_layers(self.model))


def resolve_model_path(spec: str | None, fetch_if_missing: bool = True) -> str:
    """Local folder (or hub id) that `from_pretrained` should load for `spec`."""
    spec = spec or REFERENCE_MODEL
    entry = resolve_name(spec)
    if entry is not None:
        if fetch_mod.is_cached(entry):
            return str(fetch_mod.cached_folder(entry))
        if not fetch_if_missing:
            raise ModelUnavailableError(
                f"reference model '{entry.name}' is not provisioned yet; run `probewatch models fetch`"
            )
        return str(fetch_mod.ensure_model(entry))
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelUnavailableError(f"{path} exists but holds no config.json: not an HF model folder")
        return str(path)
    if spec.startswith((".", "/", "~")):
        raise ModelUnavailableError(f"model folder not found: {spec}")
    return spec  # a hub id


def model_id_for(spec: str | None) -> str:
    """The name bundles record for `spec` (registry name, else the spec as given)."""
    spec = spec or REFERENCE_MODEL
    entry = resolve_name(spec)
    return entry.name if entry else spec


def load_model(spec: str | None = None, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """Load model + tokenizer in eval mode and compute the fingerprint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from probewatch.models.fingerprint import fingerprint_model

    path = resolve_model_path(spec)
    # use_kernels=False: transformers 5.25 turned hub kernels on by default (they replace layer forwards
    # with kernels fetched from the hub and need `kernels>=0.19.1`); capture hooks the plain torch modules.
    # 5.19-5.24 accept the kwarg with the same default.
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), "use_kernels": False}
    if envs.offline():
        kwargs["local_files_only"] = True
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=kwargs.get("local_files_only", False))
    except OSError as exc:
        raise ModelUnavailableError(
            f"cannot load model '{path}': {str(exc).splitlines()[0]} "
            f"(no hub access? pass a local HF folder, or use the embedded default '{REFERENCE_MODEL}')"
        ) from exc
    model.to(device).eval()  # type: ignore[arg-type]  # transformers types `to` through a wrapper
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        spec=spec or REFERENCE_MODEL, path=path, model=model, tokenizer=tokenizer, fingerprint=fingerprint_model(model)
    )
