"""A model's tokenizer without its weights (the review app and `incidents export` need only this)."""

from __future__ import annotations

import functools
from typing import Any

from probewatch import envs
from probewatch.errors import ModelUnavailableError


@functools.lru_cache(maxsize=8)
def load_tokenizer(spec: str, fetch_if_missing: bool = False) -> Any:
    """The tokenizer of a registry name, local HF folder or hub id (cached per spec).

    `fetch_if_missing=False` (the default here) never downloads the reference model: callers that
    only decorate a page fall back to showing token ids instead.
    """
    from transformers import AutoTokenizer

    from probewatch.models.loading import resolve_model_path

    path = resolve_model_path(spec, fetch_if_missing=fetch_if_missing)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=envs.offline() or not fetch_if_missing)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"cannot load the tokenizer of {spec!r}: {str(exc).splitlines()[0]}") from exc
