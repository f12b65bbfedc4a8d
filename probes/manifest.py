"""The probe-bundle manifest (`manifest.json`): what a probe reads, how it scores, how it was made.

Plain dataclasses (no pydantic): this module is on the serving path, which imports only torch,
safetensors and numpy. `Manifest.from_dict` validates and raises CorruptBundleError naming the
field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from probewatch.behaviours import BEHAVIOURS
from probewatch.probes.errors import CorruptBundleError, UnsupportedFormatVersionError

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
KINDS = ("linear", "mean_diff", "lat", "sae_feature")
TOKEN_SELECTIONS = ("response", "prompt_last", "all")
AGGREGATIONS = ("mean", "max", "last", "ema", "rolling_mean_max", "softmax")
HOOK_POINT = "resid_post"


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
    softmax (sum_t softmax(x / temperature)_t * x_t, in the score's own units).
    """

    method: str = "mean"
    window: int = 8
    alpha: float = 0.2
    temperature: float = 1.0


@dataclass
class Threshold:
    """Decision threshold on the aggregated score, with how it was calibrated."""

    value: float
    method: str = "fpr"  # fpr | fixed | youden
    fpr: float | None = 0.01
    calibration_set: str | None = None
    n_calibration: int | None = None


@dataclass
class Manifest:
    id: str
    behaviour: str
    kind: str
    model: ModelRef
    layer: int
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

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.hook_point}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
            manifest = cls(model=model, threshold=threshold, aggregation=aggregation, **raw)
        except KeyError as exc:
            raise CorruptBundleError(f"{source}: missing field {exc.args[0]!r}") from exc
        except TypeError as exc:
            raise CorruptBundleError(f"{source}: {exc}") from exc
        manifest.validate(source)
        return manifest

    def validate(self, source: str = "manifest.json") -> None:
        """Raise CorruptBundleError naming the first invalid field (checked in the order below)."""
        for check in (self._choice_problem, self._aggregation_problem, self._layout_problem):
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
        return None

    def _layout_problem(self) -> str | None:
        """Where the probe reads the residual stream and the model it was trained on."""
        if self.normalization not in ("none", "standardize"):
            return f"normalization {self.normalization!r} not one of ('none', 'standardize')"
        if self.hook_point != HOOK_POINT:
            return f"hook_point {self.hook_point!r} unsupported (only {HOOK_POINT!r})"
        if not isinstance(self.layer, int) or self.layer < 0:
            return f"layer must be a non-negative int, got {self.layer!r}"
        if not isinstance(self.model.d_model, int) or self.model.d_model <= 0:
            return f"model.d_model must be a positive int, got {self.model.d_model!r}"
        if not self.model.fingerprint:
            return "model.fingerprint is empty"
        return None
