"""Residual capture: hook decoder layers of any HF decoder-only model and yield layer outputs.

Contract (docs/architecture.md, "Hook point"): "layer L residual" is the output hidden state of decoder layer L,
i.e. `hidden_states[L+1]` in HF transformers, taken before any final norm. Hook names follow
TransformerLens's dotted style: `blocks.{L}.hook_resid_post`.

One component serves every consumer:
- offline extraction: a padded batch forward, rows kept and gathered by a scored-region mask;
- live monitoring: `generate()` prefill and every decode step, rows handed to a sink callback
  (optionally projected on-device first: projection pushdown).

Each forward is tagged with the absolute position of its first token, so decode steps know where
they sit in the sequence. transformers has moved that information between releases (5.19-5.23 pass
`cache_position` and `past_key_values`; 5.24 passes only a `cache` object), so `forward_start`
reads whatever the running version provides, in this order: an explicit `cache_position`, the
length of the KV cache object under any of its names, and, for an opaque cache, the tokens this
capture has counted since the sequence began. A forward without any cache starts a new sequence
(position 0). Hooks are registered only while the capture is active; `detach()` (or leaving the
`with` block) removes every one of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from probewatch.errors import UnsupportedModelError

HOOK_POINT = "resid_post"

# Attribute paths to the decoder-layer ModuleList, most specific first.
_LAYER_PATHS: tuple[str, ...] = (
    "model.language_model.layers",  # Gemma3ForConditionalGeneration, Llava-style wrappers
    "model.layers",  # Llama, SmolLM, Qwen2, Mistral, Gemma/Gemma3 text, Phi
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # GPT-NeoX / Pythia
    "model.decoder.layers",  # OPT
    "language_model.model.layers",
    "layers",
)


def hook_name(layer: int) -> str:
    """TransformerLens-style dotted name of the layer-L residual hook point."""
    return f"blocks.{layer}.hook_{HOOK_POINT}"


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _num_layers_from_config(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = getattr(config, "text_config", None) or config
    return getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder layers; raises UnsupportedModelError with the tried paths."""
    for path in _LAYER_PATHS:
        layers = _get_path(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    expected = _num_layers_from_config(model)
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == expected]
    if expected and len(candidates) == 1:
        return candidates[0]
    raise UnsupportedModelError(
        f"cannot find the decoder layers of {type(model).__name__}; tried {', '.join(_LAYER_PATHS)}"
    )


def hidden_size(model: nn.Module) -> int:
    config = model.config
    text = getattr(config, "text_config", None) or config
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(text, key, None)
        if value:
            return int(value)
    raise UnsupportedModelError(f"cannot read the hidden size of {type(model).__name__} from its config")


@dataclass
class RowBlock:
    """The residual rows of one layer for one forward call.

    `hidden` is [batch, tokens, d] (or [batch, tokens, k] after a transform), detached, on the
    model's device. `start` is the absolute sequence position of token 0 of this forward
    (0 for a prefill / batch forward, the KV length for a decode step). `attention_mask` is the
    [batch, tokens] slice of the caller's mask (1 = real token), or None when no mask was given.
    """

    layer: int
    start: int
    hidden: torch.Tensor
    attention_mask: torch.Tensor | None

    @property
    def n_tokens(self) -> int:
        return int(self.hidden.shape[1])


class _StopForward(Exception):
    """Raised after the last wanted layer to skip the rest of an extraction forward."""


Transform = Callable[[int, torch.Tensor], torch.Tensor]
Sink = Callable[[RowBlock], None]


class ResidualCapture:
    """Hook `layers` of `model`; collect RowBlocks and/or pass them to `sink`.

    Args:
        model: an HF causal LM (the top-level module whose forward receives the kwargs).
        layers: decoder-layer indices (negative indices count from the end).
        sink: called with every RowBlock as it is produced (live monitoring).
        keep: also append blocks to `self.blocks` (extraction, tests).
        transform: `(layer, hidden[B,T,d]) -> [B,T,k]` run on the model's device before the
            block is emitted; projection pushdown uses it.
        stop_after_last: abort the forward once the highest wanted layer ran (extraction only;
            use `run_forward`, which swallows the stop).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int],
        sink: Sink | None = None,
        keep: bool = True,
        transform: Transform | None = None,
        stop_after_last: bool = False,
    ) -> None:
        self.model = model
        self.decoder_layers = find_decoder_layers(model)
        n = len(self.decoder_layers)
        resolved = sorted({layer % n if -n <= layer < n else _bad_layer(layer, n) for layer in layers})
        if not resolved:
            raise ValueError("ResidualCapture needs at least one layer")
        self.layers: list[int] = resolved
        self.sink = sink
        self.keep = keep
        self.transform = transform
        self.stop_after_last = stop_after_last
        self.blocks: list[RowBlock] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._start = 0
        self._counted = 0  # tokens fed since the current sequence began (for opaque caches)
        self._mask: torch.Tensor | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return bool(self._handles)

    def attach(self) -> ResidualCapture:
        if self.active:
            return self
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True))
        for layer in self.layers:
            self._handles.append(self.decoder_layers[layer].register_forward_hook(self._make_hook(layer)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> ResidualCapture:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def clear(self) -> None:
        self.blocks.clear()

    # -- hooks -----------------------------------------------------------------------------------
    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        fed = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if fed is None:
            raise UnsupportedModelError("a model forward without input_ids or inputs_embeds cannot be captured")
        n_tokens = int(fed.shape[1])
        self._start = forward_start(kwargs, self._counted)
        self._counted = self._start + n_tokens
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            self._mask = mask[:, self._start : self._start + n_tokens].detach()
        else:
            self._mask = None

    def _make_hook(self, layer: int) -> Callable:
        last = self.layers[-1]

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.detach()
            if self.transform is not None:
                hidden = self.transform(layer, hidden)
            block = RowBlock(layer=layer, start=self._start, hidden=hidden, attention_mask=self._mask)
            if self.keep:
                self.blocks.append(block)
            if self.sink is not None:
                self.sink(block)
            if self.stop_after_last and layer == last:
                raise _StopForward

        return hook

    # -- conveniences ------------------------------------------------------------------------------
    def stacked(self, layer: int) -> torch.Tensor:
        """All kept rows of `layer` concatenated over forward calls: [batch, tokens, d]."""
        parts = [b.hidden for b in self.blocks if b.layer == layer]
        if not parts:
            raise KeyError(f"no rows captured for layer {layer} (captured layers: {self.layers})")
        return torch.cat(parts, dim=1)


def _bad_layer(layer: int, n: int) -> int:
    raise ValueError(f"layer {layer} out of range for a model with {n} decoder layers")


# Names under which transformers has passed the KV cache to a model's forward (5.24: `cache`).
CACHE_KWARGS: tuple[str, ...] = ("cache", "past_key_values", "cache_params")


def cache_argument(kwargs: dict) -> Any:
    """The KV cache object a forward was given, whatever the running transformers calls it."""
    for name in CACHE_KWARGS:
        value = kwargs.get(name)
        if value is not None:
            return value
    return None


def cache_length(cache: Any) -> int | None:
    """Tokens already held by `cache` (a `Cache` object or the legacy tuple of (k, v)); None if opaque."""
    get_seq_length = getattr(cache, "get_seq_length", None)
    if callable(get_seq_length):
        return int(get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)) and cache[0]:
        key = cache[0][0]
        if isinstance(key, torch.Tensor) and key.dim() >= 2:
            return int(key.shape[-2])
    return None


def forward_start(kwargs: dict, counted: int = 0) -> int:
    """Absolute position of the first token of a model forward, from what this transformers provides.

    `counted` is the number of tokens the caller has seen fed since the sequence began; it is used
    only when a cache is passed that reveals neither `cache_position` nor its own length.
    """
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    cache = cache_argument(kwargs)
    if cache is None:
        return 0  # no cache: the model builds a fresh one, the sequence starts here
    length = cache_length(cache)
    return counted if length is None else length


@torch.inference_mode()
def run_forward(
    model: nn.Module,
    layers: Sequence[int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    row_mask: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """One batch forward that returns the wanted layers' residuals and skips the rest.

    Without `row_mask`: {layer: [batch, tokens, d]}. With a boolean `row_mask` [batch, tokens]:
    {layer: [n_selected_rows, d]} in row-major order (batch, then position).
    """
    capture = ResidualCapture(model, layers, keep=True, stop_after_last=True)
    with capture, contextlib.suppress(_StopForward):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    out: dict[int, torch.Tensor] = {}
    for layer in capture.layers:
        hidden = capture.stacked(layer)
        out[layer] = hidden[row_mask.to(hidden.device)] if row_mask is not None else hidden
    return out
