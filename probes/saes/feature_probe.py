"""`sae_feature` bundles: probes that read SAE latents instead of raw residual rows.

Bundle layout (a normal bundle directory, still self-verifying):

    manifest.json          kind "sae_feature"; extra.sae = {name, path, architecture, d_sae, hook_name,
                           sha256: {cfg.json: ..., sae_weights.safetensors: ...}}; extra.probe_type
                           (l1_logistic | named_features); extra.features (informational list)
    weights.safetensors    feature_ids [k] int64, weight [k], bias [1] (+ mean [k], scale [k] with
                           normalization=standardize, in latent space)
    sae/                   optional: the SAE itself (cfg.json + sae_weights.safetensors) when embedded

score = sum_j w_j * (a_j - mean_j) / scale_j + b, with a = SAE latents of the layer's rows;
folded into `feature_ids, w_eff, b_eff` like `Bundle.linear_form`.

The SAE is found, in order: the embedded `sae/` folder, `extra.sae.path` (relative to the bundle
folder), `extra.sae.abs_path` (where it was at export), then by name: the shipped SAE, then
`$PROBEWATCH_HOME/saes/<model>/<name>`. The first that exists must match both pinned sha256s,
otherwise loading fails (a silently different SAE would make every feature id mean something
else). So a bundle copied elsewhere (e.g. re-thresholded with `probewatch calibrate --out`)
still finds its SAE.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from probewatch.probes.errors import (
    BundleNotFoundError,
    ChecksumMismatchError,
    CorruptBundleError,
    DimensionMismatchError,
)
from probewatch.probes.saes.loading import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, load_sae, sae_file_checksums
from probewatch.probes.saes.sae import SAE

EMBEDDED_SAE_DIR = "sae"
FEATURE_TENSORS = ("feature_ids", "weight")

# One SAE object per (cfg, weights) checksum pair: several feature probes on one SAE share it, so
# the runtime can group them and encode each block of rows once.
_SAE_CACHE: dict[tuple[str, str], SAE] = {}  # (cfg sha256, weights sha256) -> SAE


def shipped_saes_root() -> Path:
    """`probewatch/probes/shipped/saes` inside the installed package."""
    import probewatch.probes as probes_pkg

    return Path(probes_pkg.__file__).resolve().parent / "shipped" / "saes"


def sae_reference(
    sae_dir: str | Path, bundle_dir: str | Path, name: str | None = None, embed: bool = False
) -> dict[str, Any]:
    """The `extra.sae` block for a bundle at `bundle_dir` reading the SAE at `sae_dir`.

    With `embed`, the SAE files are copied into `bundle_dir/sae/` (a self-contained bundle for
    deployment); otherwise the bundle records a path relative to itself plus the checksums.
    """
    sae_dir, bundle_dir = Path(sae_dir).resolve(), Path(bundle_dir).resolve()
    sae = load_sae(sae_dir)
    if embed:
        target = bundle_dir / EMBEDDED_SAE_DIR
        target.mkdir(parents=True, exist_ok=True)
        for file in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
            shutil.copyfile(sae_dir / file, target / file)
        rel = EMBEDDED_SAE_DIR
    else:
        rel = os.path.relpath(sae_dir, bundle_dir)
    return {
        "name": name or sae_dir.name,
        "path": rel,
        "abs_path": str(sae_dir) if not embed else None,  # fallback when the bundle is copied elsewhere
        "architecture": sae.cfg.architecture(),
        "d_sae": sae.cfg.d_sae,
        "hook_name": sae.cfg.hook_name,
        "sha256": sae_file_checksums(sae_dir),
    }


def save_feature_bundle(
    path: str | Path,
    manifest: Any,
    sae_dir: str | Path,
    feature_ids: Any,
    weight: Any,
    bias: float,
    embed_sae: bool = False,
    sae_name: str | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write an sae_feature bundle reading latents `feature_ids` of the SAE at `sae_dir`.
    `extra_tensors`: more tensors for the weights file (an `answer` probe's vocabulary table, probes/vocab.py).

    `manifest` is a `Manifest` whose kind is set to sae_feature here; the SAE reference (relative
    path + checksums, or an embedded copy) goes to `extra.sae`. score = latents[ids] @ weight + bias.
    A "named features" probe for a live test is three lines:

        m = Manifest(id="sae-deception-named", behaviour="deception", kind="sae_feature", model=..., layer=L,
                     threshold=Threshold(value=0.0))
        save_feature_bundle(tmp / m.id, m, shipped_sae_dir, [12, 345], [1.0, 0.5], bias=-2.0)
    """
    from probewatch.probes.bundle import save_bundle

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    manifest.kind = "sae_feature"
    manifest.extra = {**manifest.extra, "sae": sae_reference(sae_dir, path, name=sae_name, embed=embed_sae)}
    tensors = {
        "feature_ids": torch.as_tensor(feature_ids, dtype=torch.long).reshape(-1),
        "weight": torch.as_tensor(weight, dtype=torch.float32).reshape(-1),
        "bias": torch.tensor([float(bias)], dtype=torch.float32),
        **(extra_tensors or {}),
    }
    return save_bundle(path, manifest, tensors)


def _candidates(bundle_path: Path, manifest: Any) -> list[Path]:
    ref = manifest.extra.get("sae") or {}
    out = [bundle_path / EMBEDDED_SAE_DIR]
    if ref.get("path"):
        out.append(bundle_path / ref["path"])
    if ref.get("abs_path"):
        out.append(Path(ref["abs_path"]))
    if ref.get("name"):
        from probewatch import envs  # light: os + platformdirs

        out.append(shipped_saes_root() / manifest.model.id / ref["name"])
        out.append(envs.home() / "saes" / manifest.model.id / ref["name"])
    return out


def resolve_bundle_sae_dir(bundle_path: str | Path, manifest: Any) -> Path:
    """The SAE folder an sae_feature bundle reads, checksum-verified (see module docstring)."""
    bundle_path = Path(bundle_path)
    ref = manifest.extra.get("sae")
    where = str(bundle_path)
    if not isinstance(ref, dict) or not isinstance(ref.get("sha256"), dict):
        raise CorruptBundleError(f"{where}: sae_feature manifest lacks extra.sae with name/path and sha256 checksums")
    pinned = ref["sha256"]
    tried = []
    for candidate in _candidates(bundle_path, manifest):
        if not (candidate / SAE_CFG_FILENAME).is_file():
            tried.append(str(candidate))
            continue
        actual = sae_file_checksums(candidate)
        for file in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
            if pinned.get(file) and actual[file] != pinned[file]:
                raise ChecksumMismatchError(
                    f"{candidate / file}: sha256 {actual[file][:16]}… does not match the {pinned[file][:16]}… pinned by "
                    f"bundle {manifest.id!r}; the SAE changed after the probe was fitted (re-fit the probe)"
                )
        return candidate.resolve()
    raise BundleNotFoundError(
        f"{where}: SAE {ref.get('name')!r} not found (tried {', '.join(tried)}); copy the SAE folder beside the bundle "
        "or re-export with the SAE embedded"
    )


def load_bundle_sae(bundle_path: str | Path, manifest: Any) -> SAE:
    """Load (or reuse) the checksum-verified SAE of an sae_feature bundle and check it fits."""
    sae_dir = resolve_bundle_sae_dir(bundle_path, manifest)
    pinned = manifest.extra["sae"]["sha256"]
    # keyed by content, not folder: the same SAE embedded in two bundles is still one SAE to encode
    key = (
        pinned.get(SAE_CFG_FILENAME) or _sha(sae_dir / SAE_CFG_FILENAME),
        pinned.get(SAE_WEIGHTS_FILENAME) or _sha(sae_dir / SAE_WEIGHTS_FILENAME),
    )
    sae = _SAE_CACHE.get(key)
    if sae is None:
        sae = load_sae(sae_dir, expected_d_model=manifest.model.d_model)
        sae.name = manifest.extra["sae"].get("name") or sae_dir.name
        _SAE_CACHE[key] = sae
    if sae.cfg.d_in != manifest.model.d_model:
        raise DimensionMismatchError(
            f"bundle {manifest.id!r}: SAE {sae_dir} reads d_in={sae.cfg.d_in} but the manifest says d_model={manifest.model.d_model}"
        )
    if sae.cfg.layer != manifest.layer:
        raise CorruptBundleError(
            f"bundle {manifest.id!r} reads layer {manifest.layer} but its SAE {sae_dir} reads layer {sae.cfg.layer} ({sae.cfg.hook_name})"
        )
    return sae


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_feature_tensors(
    manifest: Any, tensors: dict[str, torch.Tensor], where: str, d_sae: int | None = None
) -> None:
    """Shape/finiteness checks of an sae_feature bundle's weights (d_sae once the SAE is known)."""
    required = list(FEATURE_TENSORS) + (["mean", "scale"] if manifest.normalization == "standardize" else [])
    for name in required:
        if name not in tensors:
            raise CorruptBundleError(
                f"{where}: weights lack tensor {name!r} (kind sae_feature, normalization {manifest.normalization})"
            )
    ids = tensors["feature_ids"]
    if ids.dtype not in (torch.int64, torch.int32) or ids.dim() != 1 or ids.numel() == 0:
        raise CorruptBundleError(f"{where}: 'feature_ids' must be a non-empty 1-d integer tensor")
    k = ids.numel()
    for name in required[1:]:
        if tensors[name].numel() != k:
            raise DimensionMismatchError(
                f"{where}: tensor {name!r} has {tensors[name].numel()} values but there are {k} feature_ids"
            )
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CorruptBundleError(f"{where}: tensor {name!r} contains NaN or Inf")
    if len(set(ids.tolist())) != k:
        raise CorruptBundleError(f"{where}: 'feature_ids' repeats a latent")
    if int(ids.min()) < 0 or (d_sae is not None and int(ids.max()) >= d_sae):
        raise DimensionMismatchError(f"{where}: feature_ids must lie in [0, {d_sae}) (the SAE's d_sae)")
    if manifest.normalization == "standardize" and (tensors["scale"] <= 0).any():
        raise CorruptBundleError(f"{where}: tensor 'scale' must be strictly positive")


def feature_form(manifest: Any, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(feature_ids [k] long, w_eff [k] float32, b_eff): score = acts[:, ids] @ w_eff + b_eff."""
    ids = tensors["feature_ids"].to(torch.long).reshape(-1)
    weight = tensors["weight"].to(torch.float64).reshape(-1)
    bias = float(tensors["bias"].reshape(-1)[0]) if "bias" in tensors else 0.0
    if manifest.normalization == "standardize":
        mean = tensors["mean"].to(torch.float64).reshape(-1)
        scale = tensors["scale"].to(torch.float64).reshape(-1)
        w_eff = weight / scale
        return ids, w_eff.to(torch.float32), float(bias - (w_eff * mean).sum())
    return ids, weight.to(torch.float32), bias
