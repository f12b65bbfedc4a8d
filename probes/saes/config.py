"""SAE configuration: the fields of SAELens's `cfg.json`, plus the hook-name -> layer mapping.

The dataclasses mirror SAELens 6.x (`SAEConfig` and one subclass per architecture) so that
`to_dict()` writes a cfg.json SAELens reads as-is, and `from_dict()` reads SAELens's files,
including the flat pre-6.0 layout (`hook_name`, `hook_layer`, `activation_fn_str`, ... at the top
level). SAE-independent facts about how it was made (model, hook, dataset, context size) live in
`metadata`, as in SAELens 6.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from probewatch.probes.saes.errors import SAEConfigError, SAEHookError

#: Normalisations this runtime can apply at encode time. SAELens folds `expected_average_only_in`
#: (and `covariance_whitening`) into the weights when it saves a trained SAE, and treats
#: `expected_average_only_in` as identity at inference; we do the same.
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
DTYPES = ("float32", "float64", "float16", "bfloat16")

#: Keys SAELens 6 keeps under `metadata` (pre-6.0 files have them at the top level).
METADATA_KEYS = (
    "model_name",
    "hook_name",
    "model_class_name",
    "hook_head_index",
    "model_from_pretrained_kwargs",
    "prepend_bos",
    "exclude_special_tokens",
    "neuronpedia_id",
    "context_size",
    "seqpos_slice",
    "dataset_path",
    "sae_lens_version",
    "sae_lens_training_version",
    "hook_name_out",
    "hook_head_index_out",
    "hf_hook_name",
    "hf_hook_name_out",
)


@dataclass
class SAEConfig:
    """Architecture-independent SAE settings (SAELens `SAEConfig`)."""

    d_in: int
    d_sae: int
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    metadata: dict[str, Any] = field(default_factory=dict)

    ARCHITECTURE: ClassVar[str] = ""

    @classmethod
    def architecture(cls) -> str:
        return cls.ARCHITECTURE

    # -- identity -------------------------------------------------------------------------------
    @property
    def hook_name(self) -> str | None:
        return self.metadata.get("hook_name") or self.metadata.get("hf_hook_name")

    @property
    def model_name(self) -> str | None:
        return self.metadata.get("model_name")

    @property
    def layer(self) -> int:
        """Decoder layer whose output (our `blocks.{L}.hook_resid_post`) this SAE reads."""
        if self.metadata.get("hook_name"):
            return layer_from_hook_name(self.metadata["hook_name"])
        if self.metadata.get("hf_hook_name"):
            return layer_from_hook_name(self.metadata["hf_hook_name"])
        if isinstance(self.metadata.get("hook_layer"), int):
            return int(self.metadata["hook_layer"])
        raise SAEHookError("cfg.json names no hook point (metadata.hook_name / hook_name / hf_hook_name)")

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """SAELens 6 layout: dataclass fields, `metadata` sub-dict and `architecture`."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "metadata"}
        out["metadata"] = dict(self.metadata)
        out["architecture"] = self.architecture()
        return out

    def validate(self, source: str = "cfg.json") -> None:
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SAEConfigError(f"{source}: {name} must be a positive integer, got {value!r}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise SAEConfigError(
                f"{source}: normalize_activations {self.normalize_activations!r} is not supported at serving time "
                f"(supported: {', '.join(NORMALIZATIONS)}); fold it into the weights first (SAELens does this on save)"
            )
        if self.reshape_activations != "none":
            raise SAEHookError(
                f"{source}: reshape_activations {self.reshape_activations!r} means an attention-head (hook_z) SAE; "
                "probewatch serves residual-stream SAEs only"
            )
        if self.dtype.replace("torch.", "") not in DTYPES:
            raise SAEConfigError(f"{source}: dtype {self.dtype!r} not one of {DTYPES}")
        if not isinstance(self.apply_b_dec_to_input, bool):
            raise SAEConfigError(f"{source}: apply_b_dec_to_input must be true or false")


_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")
# HF module paths whose output is the decoder layer's output (EleutherAI sparsify, nnsight users).
_HF_LAYER = re.compile(
    r"^(?:model\.(?:language_model\.)?layers|layers|transformer\.h|gpt_neox\.layers|model\.decoder\.layers)\.(\d+)(?:\.output)?$"
)


def layer_from_hook_name(hook_name: str) -> int:
    """Map a hook name onto our layer contract (layer L residual = output of decoder layer L).

    - `blocks.{L}.hook_resid_post` (TransformerLens; SAELens, Gemma Scope, Llama Scope) -> L
    - `blocks.{L}.hook_resid_pre` is the input of block L, i.e. the output of block L-1 -> L-1
    - HF module paths `model.layers.{L}`, `layers.{L}`, `transformer.h.{L}`, ... -> L
    Anything else (attention/MLP outputs, hook_z) is not a point probewatch captures.
    """
    if not isinstance(hook_name, str):
        raise SAEHookError(f"hook name must be a string, got {hook_name!r}")
    name = hook_name.strip()
    for pattern in (_RESID_POST, _HF_LAYER):
        match = pattern.match(name)
        if match:
            return int(match.group(1))
    match = _RESID_PRE.match(name)
    if match:
        layer = int(match.group(1)) - 1
        if layer < 0:
            raise SAEHookError(
                f"hook {hook_name!r} reads the embeddings (input of block 0); probewatch captures decoder-layer outputs only"
            )
        return layer
    raise SAEHookError(
        f"hook {hook_name!r} is not a residual-stream point probewatch captures; supported: "
        "blocks.{L}.hook_resid_post, blocks.{L}.hook_resid_pre (= layer L-1), model.layers.{L} / layers.{L}"
    )


def hook_names_for_layer(layer: int) -> dict[str, str]:
    """The metadata hook names we write for layer L (TransformerLens and HF spellings)."""
    return {"hook_name": f"blocks.{layer}.hook_resid_post", "hf_hook_name": f"model.layers.{layer}"}
