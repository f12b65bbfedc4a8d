"""`probewatch sae train` end to end: corpus -> cached activations -> training -> export + figures.

    report = train_and_export(loaded, layer=15, settings=SAETrainSettings(d_sae=4096, k=32), out_dir=...)

Output folder (an SAE in the SAELens format plus probewatch's extras):

    cfg.json, sae_weights.safetensors   SAELens files (metadata: model, fingerprint, hook names, corpus)
    training_report.json                settings, corpus, history, held-out figures (FVE, NMSE, L0,
                                        dead %, CE increase), the command that made it
    features.json                       feature interpretation (written by `interpret`)
    checkpoint/                         training state (resume); removed by --drop-checkpoint
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from probewatch import __version__, envs
from probewatch.behaviours import BEHAVIOURS
from probewatch.probes.saes import TRAINING_REPORT_FILENAME, save_sae
from probewatch.probes.saes.sae import SAE
from probewatch.training.sae.activations import INDEX_FILE, ActivationStore, extract_activations, load_activations
from probewatch.training.sae.corpus import CorpusConfig, build_corpus, corpus_stats
from probewatch.training.sae.evaluate import ce_metrics, reconstruction_metrics
from probewatch.training.sae.trainer import CHECKPOINT_DIR, SAETrainSettings, train_sae

CORPUS_NAME = "probewatch-sae-corpus-v1"


def sae_name(settings: SAETrainSettings, layer: int) -> str:
    width = f"{settings.d_sae // 1024}k" if settings.d_sae % 1024 == 0 else str(settings.d_sae)
    arch = {"standard": "relu"}.get(settings.architecture, settings.architecture)
    k = f"-k{settings.k}" if settings.architecture == "topk" else ""
    return f"l{layer}-{arch}-{width}{k}"


def default_out_dir(model_id: str, name: str) -> Path:
    return envs.home() / "saes" / model_id / name


def cache_dir_for(fingerprint: str, layer: int, corpus: CorpusConfig, data_dir: Path) -> Path:
    key = hashlib.sha256(
        json.dumps(
            {"corpus": corpus.to_json(), "name": CORPUS_NAME, "data": str(data_dir), "layer": layer}, sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    return envs.home() / "cache" / "sae-activations" / fingerprint.replace(":", "-") / f"L{layer}-{key}"


def prepare_activations(
    loaded: Any, layer: int, corpus: CorpusConfig, data_dir: Path, cache_dir: Path | None = None, progress: bool = True
) -> ActivationStore:
    """Build the corpus and extract layer `layer` once; later runs load the cache."""
    cache_dir = cache_dir or cache_dir_for(loaded.fingerprint, layer, corpus, data_dir)
    if not (cache_dir / INDEX_FILE).is_file():
        from probewatch.training.sae.activations import CORPUS_FILE
        from probewatch.training.sae.corpus import load_corpus

        if (cache_dir / CORPUS_FILE).is_file():  # resume an interrupted extraction with the same text
            sequences, _ = load_corpus(cache_dir / CORPUS_FILE)
        else:
            sequences = build_corpus(loaded.tokenizer, data_dir, corpus, model=loaded.model, progress=progress)
        meta = {"corpus": corpus.to_json(), "data_dir": str(data_dir), "stats": corpus_stats(sequences)}
        extract_activations(loaded.model, layer, sequences, cache_dir, loaded.fingerprint, meta, progress=progress)
    return load_activations(cache_dir, expected_fingerprint=loaded.fingerprint, expected_layer=layer)


def evaluate_sae(
    sae: SAE, store: ActivationStore, model: torch.nn.Module | None, ce_sequences: int = 400
) -> dict[str, Any]:
    """Held-out figures: reconstruction + sparsity on eval rows, dead latents on all rows, CE on eval text."""
    eval_rows = store.acts[store.split("eval")]
    held_out = reconstruction_metrics(sae, eval_rows)
    everything = reconstruction_metrics(sae, store.acts)
    figures = {
        "fve": held_out["fve"],
        "nmse": held_out["nmse"],
        "cosine": held_out["cosine"],
        "l0": held_out["l0"],
        "n_eval_rows": held_out["n_rows"],
        "dead_fraction": everything["dead_fraction"],
        "dead_fraction_eval": held_out["dead_fraction"],
        "dense_fraction": everything["dense_fraction"],
        "n_rows_dead_check": everything["n_rows"],
        "fve_train": everything["fve"],
    }
    if model is not None:
        eval_seqs = [s.ids for s in store.sequences if s.split == "eval"][:ce_sequences]
        figures.update(ce_metrics(model, sae, store.layer, eval_seqs, max_norm=store.max_norm))
    return {"figures": figures, "feature_density": everything["feature_density"]}


def train_and_export(
    loaded: Any,
    layer: int,
    settings: SAETrainSettings,
    out_dir: Path,
    corpus: CorpusConfig,
    data_dir: Path,
    cache_dir: Path | None = None,
    weights_dtype: torch.dtype | None = torch.float16,
    restart: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train (resuming from out_dir/checkpoint), export in the SAELens format, write training_report.json."""
    store = prepare_activations(loaded, layer, corpus, data_dir, cache_dir, progress)
    metadata = {
        "model_name": loaded.model_id,
        "model_fingerprint": loaded.fingerprint,
        "hook_layer": layer,
        "context_size": corpus.context_size,
        "dataset_path": f"{CORPUS_NAME} ({', '.join(corpus.sources)})",
        "prepend_bos": True,
        "exclude_special_tokens": False,
        "probewatch_version": __version__,
    }
    result = train_sae(store, settings, out_dir, metadata=metadata, progress=progress, restart=restart)
    sae = result.sae
    if weights_dtype is not None and weights_dtype != torch.float32:
        # evaluate exactly what ships: round through the storage dtype first
        with torch.no_grad():
            for name in sae.WEIGHT_NAMES:
                getattr(sae, name).copy_(getattr(sae, name).to(weights_dtype).float())
    save_sae(sae, out_dir, weights_dtype=weights_dtype)
    evaluation = evaluate_sae(sae, store, loaded.model)
    report = {
        "sae": out_dir.name,
        "model": loaded.model_id,
        "fingerprint": loaded.fingerprint,
        "layer": layer,
        "hook_name": sae.cfg.hook_name,
        "architecture": settings.architecture,
        "d_in": sae.cfg.d_in,
        "d_sae": settings.d_sae,
        "settings": settings.to_json(),
        "corpus": {
            **asdict(corpus),
            "rows": int(store.acts.shape[0]),
            "train_rows": int(store.split("train").numel()),
            "eval_rows": int(store.split("eval").numel()),
            "massive_rows_dropped": store.n_dropped,
            "massive_norm_threshold": store.max_norm,
        },
        "training": {
            "steps": result.steps,
            "tokens_seen": result.tokens_seen,
            "seconds": round(result.seconds, 1),
            "norm_scale": result.scale,
            "dead_fraction_train_window": result.dead_fraction_train,
            "history": result.history,
        },
        "figures": evaluation["figures"],
        "weights_dtype": str(weights_dtype or torch.float32).replace("torch.", ""),
        "command": command or " ".join(sys.argv),
        "probewatch_version": __version__,
    }
    (out_dir / TRAINING_REPORT_FILENAME).write_text(json.dumps(report, indent=1) + "\n")
    return report


def drop_checkpoint(out_dir: Path) -> None:
    shutil.rmtree(Path(out_dir) / CHECKPOINT_DIR, ignore_errors=True)


def store_for_sae(loaded: Any, sae_dir: Path, data_dir: Path, progress: bool = True) -> ActivationStore:
    """The activation cache an SAE was trained on (rebuilt from its training report if needed)."""
    report = read_report(sae_dir)
    corpus_fields = {k: v for k, v in (report.get("corpus") or {}).items() if k in CorpusConfig.__dataclass_fields__}
    if "sources" in corpus_fields:
        corpus_fields["sources"] = tuple(corpus_fields["sources"])
    return prepare_activations(loaded, int(report["layer"]), CorpusConfig(**corpus_fields), data_dir, progress=progress)


def read_report(sae_dir: Path) -> dict[str, Any]:
    path = Path(sae_dir) / TRAINING_REPORT_FILENAME
    if not path.is_file():
        from probewatch.errors import ProbewatchError

        raise ProbewatchError(f"{path} not found: this SAE was not trained by probewatch (pass --layer/corpus options)")
    return json.loads(path.read_text())


def interpret_and_save(
    loaded: Any,
    sae: SAE,
    sae_dir: Path,
    store: ActivationStore,
    data_dir: Path | None,
    behaviours: tuple[str, ...] = BEHAVIOURS,
    n_examples: int = 4,
    before: int = 8,
    after: int = 2,
    progress: bool = True,
) -> Path:
    """features.json: top contexts per latent + behaviour association tables."""
    from probewatch.training.sae.interpret import behaviour_pools, interpret_features, write_features_json

    features = interpret_features(
        sae, store, loaded.tokenizer, n_examples=n_examples, before=before, after=after, progress=progress
    )
    assoc = behaviour_pools(loaded, sae, behaviours, data_dir, progress=progress) if behaviours else {}
    corpus = {
        "rows": int(store.acts.shape[0]),
        "sequences": len(store.sequences),
        "sources": sorted({s.source for s in store.sequences}),
    }
    return write_features_json(sae_dir, sae, features, assoc, corpus, before, after)
