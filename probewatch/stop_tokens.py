"""Which token ids end a generated sequence: one rule for the attach client and the HTTP server.

A sequence ends at its first end-of-sequence token; in a batched `generate()` a finished sequence
is then filled with the pad token. Both come from the call's kwargs, else the model's generation
config, else the tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _ids(value: Any) -> Iterable[int]:
    if value is None:
        return ()
    if hasattr(value, "tolist"):  # a tensor
        value = value.tolist()
    return [int(x) for x in value] if isinstance(value, (list, tuple, set)) else [int(value)]


def stop_token_ids(generation_config: Any, tokenizer: Any = None, kwargs: Mapping[str, Any] | None = None) -> set[int]:
    """Token ids after which a generated sequence holds no more real tokens (eos and pad)."""
    kwargs = kwargs or {}
    ids: set[int] = set()
    for name in ("eos_token_id", "pad_token_id"):
        ids.update(_ids(kwargs.get(name)))
        ids.update(_ids(getattr(generation_config, name, None)))
    ids.update(_ids(getattr(tokenizer, "eos_token_id", None)))
    return ids
