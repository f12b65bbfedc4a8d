"""SAE training loop over cached activations: epochs of shuffled batches, dead-latent handling,
progress, checkpoints every N steps, exact resume, and export in the SAELens format.

    settings = SAETrainSettings(architecture="topk", d_sae=4096, k=32)
    result = train_sae(store, settings, out_dir)         # resumes from out_dir/checkpoint/ if present
    sae = result.sae                                      # raw-space inference SAE (scale folded in)

Checkpoints hold everything needed to continue exactly where training stopped: parameters,
Adam moments and step counts, the dead-latent counters, the resampling RNG and the position in
the epoch (batches come from a permutation seeded by (seed, epoch)), as safetensors + JSON, so
a resumed run ends with the same weights as an uninterrupted one (a test pins this).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from probewatch.errors import ProbewatchError
from probewatch.probes.saes import build_sae, canonical_architecture, get_sae_class, hook_names_for_layer
from probewatch.probes.saes.sae import SAE
from probewatch.training.sae.activations import ActivationStore
from probewatch.training.sae.objectives import OBJECTIVES, resample_dead_latents

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
TENSORS_FILE = "train_state.safetensors"


class SAETrainingError(ProbewatchError):
    """Bad training settings, or a checkpoint that does not belong to this run."""


@dataclass
class SAETrainSettings:
    """Everything that defines a training run (a checkpoint resumes only with equal settings)."""

    architecture: str = "topk"
    d_sae: int = 4096
    k: int = 32  # topk
    l1_coefficient: float = 1.0  # standard (ReLU + L1), normalised units: L0 60 at layer 15 (5.0: L0 14)
    l0_coefficient: float = 0.5  # jumprelu: L0 86 at layer 15 (0.05: L0 304); docs/sae.md
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.1
    aux_k_coefficient: float = 1 / 32  # topk AuxK
    dead_window_tokens: int = 100_000  # a latent silent for this many training rows is dead
    resample_every_steps: int = 0  # standard/jumprelu: resample dead latents (0 = once per epoch in the first half)
    lr: float = 2e-3  # small corpora need many steps: batch 1024 + lr 2e-3 beat 4096 + 4e-4
    warmup_fraction: float = 0.02  # by 0.14 FVE after 2 epochs in a pilot (docs/sae.md)
    decay_fraction: float = 0.2  # linear decay to 0 over the final fraction of steps
    batch_size: int = 1024
    epochs: int = 10
    seed: int = 0
    checkpoint_every_steps: int = 200

    def __post_init__(self) -> None:
        self.architecture = canonical_architecture(self.architecture)
        if self.architecture not in OBJECTIVES:
            raise SAETrainingError(f"unknown architecture {self.architecture!r}; choose topk, jumprelu or relu")
        if self.architecture == "topk" and not 0 < self.k <= self.d_sae:
            raise SAETrainingError(f"--k must be in 1..d_sae ({self.d_sae}), got {self.k}")
        if self.d_sae <= 0 or self.batch_size <= 0 or self.epochs <= 0:
            raise SAETrainingError("d_sae, batch_size and epochs must be positive")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    sae: SAE
    scale: float
    steps: int
    tokens_seen: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    dead_fraction_train: float = 0.0


def _lr_factor(step: int, total: int, s: SAETrainSettings) -> float:
    warm = max(1, int(s.warmup_fraction * total))
    decay_start = int((1 - s.decay_fraction) * total)
    if step < warm:
        return (step + 1) / warm
    if step >= decay_start and total > decay_start:
        return max(0.0, (total - step) / (total - decay_start))
    return 1.0


def new_training_sae(d_in: int, settings: SAETrainSettings, layer: int, metadata: dict[str, Any] | None = None) -> SAE:
    _, cfg_cls = get_sae_class(settings.architecture)
    extra: dict[str, Any] = {"k": settings.k} if settings.architecture == "topk" else {}
    cfg = cfg_cls(
        d_in=d_in, d_sae=settings.d_sae, metadata={**hook_names_for_layer(layer), **(metadata or {})}, **extra
    )
    sae = build_sae(cfg)
    sae.requires_grad_(True)
    return sae


def norm_scale(acts: torch.Tensor, sample: int = 50_000, seed: int = 0) -> float:
    """c with E||c x||^2 = d_in (SAELens `expected_average_only_in` uses sqrt(d_in) / E||x||)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(acts.shape[0], generator=g)[:sample]
    return float(math.sqrt(acts.shape[1]) / acts[idx].norm(dim=1).mean())


def _save_checkpoint(
    out_dir: Path,
    sae: SAE,
    opt: torch.optim.Optimizer,
    since_fired: torch.Tensor,
    gen: torch.Generator,
    state: dict[str, Any],
) -> None:
    ckpt = out_dir / CHECKPOINT_DIR
    tmp = out_dir / (CHECKPOINT_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"param.{n}": getattr(sae, n).detach().clone() for n in sae.WEIGHT_NAMES}
    steps = {}
    for n in sae.WEIGHT_NAMES:
        st = opt.state.get(getattr(sae, n), {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                tensors[f"adam.{n}.{key}"] = st[key].clone()
        if "step" in st:
            steps[n] = float(st["step"])
    tensors["since_fired"] = since_fired.clone()
    tensors["generator_state"] = gen.get_state()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / TENSORS_FILE))
    (tmp / STATE_FILE).write_text(json.dumps({**state, "adam_steps": steps}, indent=1))
    shutil.rmtree(ckpt, ignore_errors=True)
    os.replace(tmp, ckpt)


def _load_checkpoint(
    out_dir: Path, sae: SAE, opt: torch.optim.Optimizer, gen: torch.Generator, settings: SAETrainSettings, cache_id: str
) -> tuple[dict[str, Any], torch.Tensor] | None:
    ckpt = out_dir / CHECKPOINT_DIR
    if not (ckpt / STATE_FILE).is_file():
        return None
    state = json.loads((ckpt / STATE_FILE).read_text())
    if state.get("settings") != settings.to_json() or state.get("cache_id") != cache_id:
        raise SAETrainingError(
            f"{ckpt} belongs to a run with other settings or data; pass a new --out, or --restart to discard it"
        )
    tensors = load_file(str(ckpt / TENSORS_FILE))
    with torch.no_grad():
        for n in sae.WEIGHT_NAMES:
            getattr(sae, n).copy_(tensors[f"param.{n}"])
    for n in sae.WEIGHT_NAMES:
        param = getattr(sae, n)
        if f"adam.{n}.exp_avg" in tensors:
            opt.state[param] = {
                "step": torch.tensor(state["adam_steps"][n]),
                "exp_avg": tensors[f"adam.{n}.exp_avg"].clone(),
                "exp_avg_sq": tensors[f"adam.{n}.exp_avg_sq"].clone(),
            }
    gen.set_state(tensors["generator_state"])
    return state, tensors["since_fired"].clone()


def train_sae(
    store: ActivationStore,
    settings: SAETrainSettings,
    out_dir: Path,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    restart: bool = False,
    max_steps: int | None = None,
    on_checkpoint: Any = None,
) -> TrainResult:
    """Train on the store's train split; checkpoint to out_dir/checkpoint; return the raw-space SAE.

    `max_steps` stops early (after a checkpoint) — used by tests to simulate an interruption.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if restart:
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
    torch.manual_seed(settings.seed)
    train_idx = store.split("train")
    n_train = int(train_idx.numel())
    if n_train < settings.batch_size:
        raise SAETrainingError(f"only {n_train} training rows for batch size {settings.batch_size}; lower --batch-size")
    steps_per_epoch = n_train // settings.batch_size
    total = steps_per_epoch * settings.epochs
    scale = norm_scale(store.acts[train_idx], seed=settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    sae = new_training_sae(store.d, settings, store.layer, metadata)
    objective = OBJECTIVES[settings.architecture](sae, settings, total)
    sample = store.acts[train_idx[torch.randperm(n_train, generator=gen)[:20_000]]] * scale
    objective.init_weights(sample, gen)
    opt = torch.optim.Adam(objective.trainable(), lr=settings.lr, betas=(0.9, 0.999))
    since_fired = torch.zeros(settings.d_sae, dtype=torch.long)
    cache_id = f"{store.fingerprint}:{store.layer}:{store.acts.shape[0]}"
    state: dict[str, Any] = {"step": 0, "history": [], "seconds": 0.0, "resampled": 0}
    loaded = None if restart else _load_checkpoint(out_dir, sae, opt, gen, settings, cache_id)
    if loaded:
        state, since_fired = loaded
    step = int(state["step"])
    history: list[dict[str, float]] = list(state["history"])
    resample_every = settings.resample_every_steps or steps_per_epoch
    t0 = time.time() - float(state.get("seconds", 0.0))
    bar = tqdm(
        total=total,
        initial=step,
        desc=f"SAE {settings.architecture} d_sae={settings.d_sae}",
        unit="step",
        disable=not progress,
    )
    running: dict[str, float] = {}
    stop_at = total if max_steps is None else min(total, max_steps)
    while step < stop_at:
        epoch, within = divmod(step, steps_per_epoch)
        perm = train_idx[torch.randperm(n_train, generator=torch.Generator().manual_seed(settings.seed * 1000 + epoch))]
        rows = perm[within * settings.batch_size : (within + 1) * settings.batch_size]
        x = store.acts[rows] * scale
        for group in opt.param_groups:
            group["lr"] = settings.lr * _lr_factor(step, total, settings)
        dead = since_fired > settings.dead_window_tokens
        out = objective.forward(x, step, dead)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        objective.before_step()
        opt.step()
        objective.after_step()
        fired = (out.acts > 0).any(0)
        since_fired += x.shape[0]
        since_fired[fired] = 0
        step += 1
        if settings.architecture != "topk" and step % resample_every == 0 and step < total // 2:
            dead_now = since_fired > settings.dead_window_tokens
            if dead_now.any():
                with torch.no_grad():
                    state["resampled"] = int(state.get("resampled", 0)) + resample_dead_latents(
                        sae, x, dead_now, opt, gen
                    )
                since_fired[dead_now] = 0
        with torch.no_grad():
            var = float((x - x.mean(0)).pow(2).sum(-1).mean())
        stats = {
            "fve": 1 - float(out.mse.detach()) / var,
            "l0": float((out.acts > 0).sum(-1).float().mean()),
            "dead": float(dead.float().mean()),
            **out.parts,
        }
        for key, value in stats.items():
            running[key] = 0.9 * running.get(key, value) + 0.1 * value
        bar.set_postfix({k: f"{running[k]:.3g}" for k in ("fve", "l0", "dead")}, refresh=False)
        bar.update(1)
        if step % steps_per_epoch == 0 or step == stop_at:
            history.append(
                {"step": step, "epoch": step / steps_per_epoch, **{k: round(v, 5) for k, v in running.items()}}
            )
        if step % settings.checkpoint_every_steps == 0 or step == stop_at:
            state.update(
                step=step,
                history=history,
                seconds=time.time() - t0,
                settings=settings.to_json(),
                cache_id=cache_id,
                scale=scale,
            )
            _save_checkpoint(out_dir, sae, opt, since_fired, gen, state)
            if on_checkpoint is not None:
                on_checkpoint(step)
    bar.close()
    sae.requires_grad_(False)
    raw = fold_scale(sae, scale)
    return TrainResult(
        sae=raw,
        scale=scale,
        steps=step,
        tokens_seen=step * settings.batch_size,
        seconds=time.time() - t0,
        history=history,
        dead_fraction_train=float((since_fired > settings.dead_window_tokens).float().mean()),
    )


@torch.no_grad()
def fold_scale(sae: SAE, scale: float) -> SAE:
    """The raw-space SAE of one trained on c*x: W_enc *= c, W_dec /= c, b_dec /= c (SAELens's fold)."""
    cfg = type(sae.cfg)(**{**sae.cfg.__dict__, "metadata": dict(sae.cfg.metadata)})
    cfg.normalize_activations = "none"
    weights = {n: t.detach().clone() for n, t in sae.weights().items()}
    weights["W_enc"] *= scale
    weights["W_dec"] /= scale
    weights["b_dec"] /= scale
    return build_sae(cfg, weights).eval()
