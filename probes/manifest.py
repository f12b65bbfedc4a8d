"""The probe-bundle manifest (`manifest.json`): what a probe reads, how it scores, how it was made.

Plain dataclasses (no pydantic): this module is on the serving path, which imports only torch,
safetensors and numpy. `Manifest.from_dict` validates and raises CorruptBundleError naming the
field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from probewatch.behaviours import BEHAVIOURS
from probewatch.probes.errors import CorruptBundleError, UnsupportedFormatVersionError

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
KINDS = ("linear", "mean_diff", "lat", "contrast", "sae_feature", "attention")
TOKEN_SELECTIONS = ("response", "prompt_last", "all", "answer")
#: the selections that read a sequence of rows per example (an attention probe pools over one)
ROW_SELECTIONS = ("response", "answer")
AGGREGATIONS = (
    "mean",
    "max",
    "last",
    "ema",
    "rolling_mean_max",
    "softmax",
    "attention",
    "max_norm",
    "rolling_mean_max_norm",
)
#: maxima with a length penalty (`Aggregation.length_scale`): what each one takes the maximum of
LENGTH_NORMALISED = {"max_norm": "max", "rolling_mean_max_norm": "rolling_mean_max"}
#: the learned attention-pooling probe: kind and aggregation name each other (probes/attention.py)
ATTENTION = "attention"
HOOK_POINT = "resid_post"
#: kinds that may read several layers (`layers`): one direction per layer, summed per token (the linear family)
MULTI_LAYER_KINDS = ("linear", "mean_diff", "lat", "contrast")


@dataclass
class ModelRef:
    """The model a bundle was trained on; `fingerprint` is what the runtime checks."""

    id: str
    fingerprint: str
    d_model: int
    n_layers: int | None = None


@dataclass
class Aggregation:
    """How per-token scores become one per-generation score.

    `window` is used by rolling_mean_max (max over generation of the mean of the last `window`
    token scores); `alpha` by ema (s_t = alpha * x_t + (1 - alpha) * s_{t-1}); `temperature` by
    softmax (sum_t softmax(x / temperature)_t * x_t, in the score's own units). `attention` is
    only for kind `attention` probes, whose tokens carry two numbers (a_t, v_t): sum_t softmax(a)_t v_t.

    `max_norm` / `rolling_mean_max_norm` are `max` / `rolling_mean_max` minus a length penalty,
    `length_scale * sqrt(2 ln n)` with n the tokens (max) or tokens / window (rolling mean; at least
    1): the expected growth of the maximum of n draws of spread `length_scale`. Without it a long
    honest transcript crosses a threshold set on short answers by length alone. `length_scale` is
    the spread of the probe's token scores (or window means) on its training examples.
    """

    method: str = "mean"
    window: int = 8
    alpha: float = 0.2
    temperature: float = 1.0
    length_scale: float = 0.0


@dataclass
class Threshold:
    """Decision threshold on the aggregated score, with how it was calibrated.

    `uncertain_from` (optional): the lower edge of an uncertainty band [uncertain_from, value). A
    generation whose aggregate ends inside it does not alert; the sidecar records it as `uncertain`
    (a counter and a low-priority incident for review). Set where one threshold cannot hold on every
    kind of data: e.g. the threshold is the stricter one the behaviour's own negatives ask for, and the
    band reaches down to what production-like traffic alone would flag. None: no band (older bundles).
    """

    value: float
    method: str = "fpr"  # fpr | fixed | youden
    fpr: float | None = 0.01
    calibration_set: str | None = None
    n_calibration: int | None = None
    uncertain_from: float | None = None

    def in_band(self, score: float) -> bool:
        """True when `score` lies in the uncertainty band (never with no band; NaN never does)."""
        return self.uncertain_from is not None and self.uncertain_from <= score < self.value

    def problem(self) -> str | None:
        """Why the threshold (with its band) is invalid, or None."""
        band = self.uncertain_from
        if band is None:
            return None
        if isinstance(band, bool) or not isinstance(band, int | float) or not math.isfinite(band):
            return f"threshold.uncertain_from must be a finite number or null, got {band!r}"
        if isinstance(self.value, bool) or not isinstance(self.value, int | float) or not math.isfinite(self.value):
            return f"threshold.value must be a finite number when it has an uncertainty band, got {self.value!r}"
        if not band < self.value:
            return f"threshold.uncertain_from ({band!r}) must be below threshold.value ({self.value!r})"
        return None


@dataclass
class Manifest:
    id: str
    behaviour: str
    kind: str
    model: ModelRef
    layer: int  # the probe's (first) layer; with `layers`, layers[0]
    threshold: Threshold
    aggregation: Aggregation = field(default_factory=Aggregation)
    token_selection: str = "response"
    hook_point: str = HOOK_POINT
    normalization: str = "none"  # none | standardize  (mean/scale tensors in the weights file)
    version: str = "1"
    description: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific settings (e.g. SAE path)
    weights_file: str = "weights.safetensors"
    weights_sha256: str = ""
    format_version: int = FORMAT_VERSION
    created_at: str = ""
    probewatch_version: str = ""
    #: a multi-layer linear probe: the layers it reads, sorted and unique (None: just `layer`); its token score is
    #: sum_l w_l . h_l + b, the weight (and mean/scale) stored as [len(layers) * d_model] in this order
    layers: list[int] | None = None

    @property
    def all_layers(self) -> list[int]:
        """Every layer the probe reads: `layers`, or [layer]."""
        return list(self.layers) if self.layers is not None else [self.layer]

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.hook_point}"

    @property
    def hook_names(self) -> list[str]:
        """The hook point of every layer the probe reads (one for a single-layer probe)."""
        return [f"blocks.{layer}.hook_{self.hook_point}" for layer in self.all_layers]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["threshold"].get("uncertain_from") is None:  # no band: the manifest older runtimes read
            del out["threshold"]["uncertain_from"]
        if out.get("layers") is None:  # single-layer: the manifest older runtimes read
            out.pop("layers", None)
        if not out["aggregation"].get("length_scale"):  # no length penalty: the manifest older runtimes read
            out["aggregation"].pop("length_scale", None)
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest.json") -> Manifest:
        if not isinstance(data, dict):
            raise CorruptBundleError(f"{source}: manifest must be a JSON object")
        version = data.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise UnsupportedFormatVersionError(
                f"{source}: format_version {version!r} is not supported by this runtime "
                f"(supported: {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); upgrade probewatch or re-export the bundle"
            )
        try:
            raw = dict(data)
            model = ModelRef(**raw.pop("model"))
            threshold = Threshold(**raw.pop("threshold"))
            aggregation = Aggregation(**raw.pop("aggregation", {}))
            if "layer" not in raw and isinstance(raw.get("layers"), list) and raw["layers"]:
                raw["layer"] = raw["layers"][0]  # a multi-layer manifest may name only `layers`
            manifest = cls(model=model, threshold=threshold, aggregation=aggregation, **raw)
        except KeyError as exc:
            raise CorruptBundleError(f"{source}: missing field {exc.args[0]!r}") from exc
        except TypeError as exc:
            raise CorruptBundleError(f"{source}: {exc}") from exc
        manifest.validate(source)
        return manifest

    def validate(self, source: str = "manifest.json") -> None:
        """Raise CorruptBundleError naming the first invalid field (checked in the order below)."""
        for check in (self._choice_problem, self._aggregation_problem, self._layout_problem, self.threshold.problem):
            problem = check()
            if problem:
                raise CorruptBundleError(f"{source}: {problem}")

    def _choice_problem(self) -> str | None:
        """The id and the fields that name one of a fixed set of choices."""
        if not self.id or not isinstance(self.id, str):
            return "id must be a non-empty string"
        if self.behaviour not in BEHAVIOURS:
            return f"behaviour {self.behaviour!r} not one of {BEHAVIOURS}"
        if self.kind not in KINDS:
            return f"kind {self.kind!r} not one of {KINDS}"
        if self.token_selection not in TOKEN_SELECTIONS:
            return f"token_selection {self.token_selection!r} not one of {TOKEN_SELECTIONS}"
        return None

    def _aggregation_problem(self) -> str | None:
        agg = self.aggregation
        if agg.method not in AGGREGATIONS:
            return f"aggregation.method {agg.method!r} not one of {AGGREGATIONS}"
        if agg.window < 1 or not 0 < agg.alpha <= 1:
            return "aggregation.window must be >= 1 and 0 < aggregation.alpha <= 1"
        if not agg.temperature > 0 or agg.temperature == float("inf"):
            return f"aggregation.temperature must be a positive finite number, got {agg.temperature!r}"
        scale = agg.length_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 <= scale < math.inf:
            return f"aggregation.length_scale must be a finite number >= 0, got {scale!r}"
        if (self.kind == ATTENTION) != (agg.method == ATTENTION):
            return (
                f"kind {self.kind!r} with aggregation.method {agg.method!r}: an attention probe (kind 'attention') "
                "pools with its own query direction and must use aggregation.method 'attention', which no other "
                "kind can use"
            )
        return None

    def _layout_problem(self) -> str | None:
        """Where the probe reads the residual stream and the model it was trained on."""
        if self.normalization not in ("none", "standardize"):
            return f"normalization {self.normalization!r} not one of ('none', 'standardize')"
        if self.hook_point != HOOK_POINT:
            return f"hook_point {self.hook_point!r} unsupported (only {HOOK_POINT!r})"
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            return f"layer must be a non-negative int, got {self.layer!r}"
        if not isinstance(self.model.d_model, int) or self.model.d_model <= 0:
            return f"model.d_model must be a positive int, got {self.model.d_model!r}"
        problem = self._layers_problem()
        if problem:
            return problem
        if not self.model.fingerprint:
            return "model.fingerprint is empty"
        return None

    def _layers_problem(self) -> str | None:
        """`layers` (a multi-layer linear probe): sorted unique ints, starting at `layer`, inside the model."""
        layers = self.layers
        if layers is not None:
            if (
                not isinstance(layers, list)
                or not layers
                or any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in layers)
            ):
                return f"layers must be a non-empty list of non-negative ints, got {layers!r}"
            if any(a >= b for a, b in zip(layers, layers[1:])):
                return f"layers must be sorted and unique, got {layers!r}"
            if layers[0] != self.layer:
                return f"layer ({self.layer!r}) must be the first of layers {layers!r}"
            if len(layers) > 1 and self.kind not in MULTI_LAYER_KINDS:
                return f"kind {self.kind!r} reads one layer; only {MULTI_LAYER_KINDS} probes may name several layers"
        n_layers = self.model.n_layers
        if isinstance(n_layers, int) and not isinstance(n_layers, bool):
            outside = [x for x in self.all_layers if x >= n_layers]
            if outside:
                return f"layer(s) {outside} outside the model (model.n_layers={n_layers}: layers 0..{n_layers - 1})"
        return None
