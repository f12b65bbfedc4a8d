"""`TrainConfig` (what `probewatch train` is asked to do), its checks, defaults and `--init-from`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probewatch.behaviours import DEFAULT_PROBE_IDS
from probewatch.errors import ProbewatchError
from probewatch.probes.errors import FingerprintMismatchError
from probewatch.training.augment import AUGMENTATIONS, default_augment, unknown_augmentations
from probewatch.training.calibration import BAND_CONTROL_FPR, CONTROL_FPR, MAX_FLAGGED_NEGATIVES
from probewatch.training.export import METHOD_BY_KIND
from probewatch.training.report_sources import VAL_MARGIN

#: attention: the attention-pooling probe (training/attention_sweep.py), tried on the best response layer
METHODS = ("logistic", "mean_diff", "lat", "contrast", "attention")
#: what `--method auto` sweeps. Contrast pairs are opt-in: they score lower inside a pool, so only a held-out-source
#: choice (two or more sources, `run_sources`) can judge them, and on the deception pool that choice picked them
#: without a gain in the nested estimate and with a threshold that kept 3% recall
DEFAULT_METHODS = ("logistic", "mean_diff", "lat", "attention")
DEFAULT_IDS = DEFAULT_PROBE_IDS
#: C values swept (and chosen by held-out kind) for logistic and contrast probes when the pool has kinds
HELDOUT_CS = (1e-4, 1e-3, 1e-2, 1e-1)
#: behaviours whose built-in data is read on the model's own text, where reading the prompt too
#: (`all`: prompt + response, mean) is compared with the response alone
RESPONSE_BEHAVIOURS = ("deception", "alignment_faking", "eval_awareness")
#: behaviours whose builders take the model's own answers (`respond`): the response behaviours, and
#: monitored framing for the multi-turn prompts of its plain-traffic negatives
RESPONDING_BEHAVIOURS = (*RESPONSE_BEHAVIOURS, "monitored_framing")


class TrainingError(ProbewatchError):
    """Training cannot proceed as configured (bad flags, unusable data)."""


@dataclass
class TrainConfig:
    behaviour: str | None = None
    model: str | None = None
    data_dir: str | Path | None = None
    data_files: Sequence[Path] = ()
    ood_files: Sequence[Path] = ()
    extra_files: Sequence[Path] = ()  # labelled additions to the pool (e.g. reviewed incidents), own kinds
    control_file: Path | None = None
    layers: Sequence[int] | None = None
    methods: Sequence[str] = DEFAULT_METHODS
    aggregations: Sequence[str] | None = None
    token_selections: Sequence[str] | None = None
    per_token: bool | None = None  # None: per-example sweep, per-token tried on the best config
    standardize: bool | None = None  # None: logistic standardised, mean_diff/lat raw
    fpr: float = CONTROL_FPR
    hard_negative_fpr: float | None = MAX_FLAGGED_NEGATIVES  # None: threshold from the control set alone
    hard_negatives_per_kind: bool = True  # the limit also holds per kind (calibration.negatives_threshold)
    # raise the threshold to the calibration-negatives rate the nested estimate's held-out sources asked for
    # (calibration.transfer_rate; needs two or more sources and nested_top_k > 0)
    transfer_threshold: bool = True
    # where the negatives raise the threshold, scores from the control threshold up to it are `uncertain`; where
    # the threshold keeps under half the calibration positives, scores down to where half are kept, recording at
    # most `band_control_fpr` of the control set (calibration.uncertainty_band)
    uncertainty_band: bool = True
    band_control_fpr: float = BAND_CONTROL_FPR
    family: bool = False  # also train the per-type family (training/family_export.py), written to <out>-family
    heldout_Cs: Sequence[float] | None = HELDOUT_CS  # None: C by grouped CV on the fit split
    multi_layer: int = 3  # best layers compared as a concatenated / ensembled probe (0: skip)
    nested_top_k: int = 8  # configurations the held-out-source choice and nested estimate fit (0: skip both)
    # the held-out-source choice's guard: only candidates whose validation AUROC is within this of the best
    # candidate's may be chosen (training/nested.py `eligible`; inf: off)
    selection_margin: float = VAL_MARGIN
    select_by_source: bool = True  # ship the held-out-source choice (>= 2 sources) instead of the sweep's
    seed: int = 0
    probe_id: str | None = None
    version: str | None = None
    out: Path | None = None
    force: bool = False
    init_from: Path | None = None
    #: existing bundles (e.g. the shipped one a regeneration replaces) scored on this run's test split and OOD sets
    compare_with: list[Path] = field(default_factory=list)
    test_size: float = 0.2
    cal_size: float = 0.25
    balance_kinds: bool = True
    control_n: int = 400
    control_max_new_tokens: int = 64
    production_control: bool = True
    batch_size: int = 16
    max_tokens: int | None = 1024
    cache_dtype: str = "float32"
    window: int = 8
    alpha: float = 0.2
    plots: bool = True
    parity_check: int = 8
    progress: bool = True
    builder_options: dict[str, Any] = field(default_factory=dict)
    # labelled copies added to the pool (training/augment.py); None: the behaviour's default (`DEFAULT_AUGMENT`,
    # none for --data files), () for none
    augment: Sequence[str] | None = None
    command: str | None = None


def default_layers(n_layers: int) -> list[int]:
    """Every other layer from 1 (the sweep default; extraction stores only these)."""
    return list(range(1, n_layers, 2)) or [0]


def default_out(model_id: str, probe_id: str) -> Path:
    from probewatch import envs

    return envs.user_bundles_dir() / model_id.replace("/", "--") / probe_id


def apply_init_from(config: TrainConfig, fingerprint: str) -> dict[str, Any]:
    """Take settings from an existing bundle being updated; refuse one made for another model."""
    from probewatch.probes import load_bundle

    assert config.init_from is not None  # train() calls this only with --init-from
    bundle = load_bundle(config.init_from)
    m = bundle.manifest
    if m.model.fingerprint != fingerprint:
        raise FingerprintMismatchError(
            f"--init-from {config.init_from}: bundle {m.id!r} was trained on model {m.model.id!r} ({m.model.fingerprint}), "
            f"but --model has fingerprint {fingerprint}; refusing to update a bundle with another model's activations "
            "(train a new bundle without --init-from instead)"
        )
    if config.behaviour and config.behaviour != m.behaviour:
        raise TrainingError(f"--behaviour {config.behaviour} contradicts --init-from bundle behaviour {m.behaviour}")
    config.behaviour = m.behaviour
    config.layers = config.layers or [m.layer]
    if tuple(config.methods) == DEFAULT_METHODS:
        config.methods = [METHOD_BY_KIND.get(m.kind, "logistic")]
    config.aggregations = config.aggregations or [m.aggregation.method]
    config.token_selections = config.token_selections or [m.token_selection]
    config.window, config.alpha = m.aggregation.window, m.aggregation.alpha
    if config.standardize is None:
        config.standardize = m.normalization == "standardize"
    config.probe_id = config.probe_id or m.id
    config.version = config.version or (str(int(m.version) + 1) if str(m.version).isdigit() else f"{m.version}+1")
    return {
        "init_from": str(config.init_from),
        "previous_version": m.version,
        "previous_weights_sha256": m.weights_sha256,
    }


def check_config(config: TrainConfig, n_layers: int, model_id: str) -> list[int]:
    """Refuse bad flags before any work; returns the sorted sweep layers."""
    require_behaviour(config)
    for method in config.methods:
        if method not in METHODS:
            raise TrainingError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if config.hard_negative_fpr is not None and not 0.0 <= config.hard_negative_fpr < 1.0:
        raise TrainingError(f"--hard-negative-fpr must be in [0, 1), got {config.hard_negative_fpr}")
    if not config.fpr <= config.band_control_fpr < 1.0:
        raise TrainingError(f"--band-control-fpr must be in [--fpr, 1), got {config.band_control_fpr}")
    if config.heldout_Cs is not None and not all(0.0 < float(c) < float("inf") for c in config.heldout_Cs):
        raise TrainingError(f"--c-grid values must be positive finite numbers, got {list(config.heldout_Cs)}")
    if not config.selection_margin >= 0.0:
        raise TrainingError(f"--selection-margin must be >= 0 (inf: no guard), got {config.selection_margin}")
    unknown = unknown_augmentations(config.augment or ())
    if unknown:
        raise TrainingError(f"unknown --augment {', '.join(unknown)}; known: {', '.join(AUGMENTATIONS)} (or none)")
    if config.nested_top_k < 0:
        raise TrainingError(
            f"--nested-top-k must be >= 0 (0 skips the held-out-source stage), got {config.nested_top_k}"
        )
    layers = sorted({int(layer) for layer in (config.layers or default_layers(n_layers))})
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise TrainingError(f"layers {bad} out of range for {model_id} ({n_layers} layers: 0..{n_layers - 1})")
    return layers


def resolve_augment(config: TrainConfig) -> tuple[str, ...]:
    """The augmentations this run applies: `--augment` as given, else the behaviour's default (none for --data)."""
    if config.augment is not None:
        return tuple(config.augment)
    return default_augment(config.behaviour, bool(config.data_files))


def require_behaviour(config: TrainConfig) -> str:
    """config.behaviour; check_config refuses a config without one (--init-from fills it in first)."""
    if config.behaviour is None:
        raise TrainingError("--behaviour is required (" + ", ".join(DEFAULT_IDS) + ")")
    return config.behaviour


def default_probe_id(config: TrainConfig) -> str:
    behaviour = require_behaviour(config)
    base = DEFAULT_IDS.get(behaviour, behaviour.replace("_", "-"))
    if len(config.methods) == 1 and config.methods[0] != "logistic":
        return f"{base}-{config.methods[0].replace('_', '-')}"
    return base
