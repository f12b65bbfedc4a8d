"""Probe bundles on disk: a directory with `manifest.json` + `weights.safetensors` (never pickle).

`save_bundle` writes the weights, then the manifest with the weights' sha256; `load_bundle`
checks, in order: files present, manifest parses, format version, `weights_file` names a file
inside the bundle folder, checksum, weights parse, tensor shapes against d_model, and (when given)
the model fingerprint.

Why the integrity rules are strict: a sidecar loads bundles from ConfigMaps and volumes that other
people write. A manifest without `weights_sha256` would load whatever file sits beside it, and a
`weights_file` such as `../../secrets/x` would make the loader read (and hash, and report) a file
outside the bundle. So a bundle without a checksum is refused unless the caller explicitly allows
unverified bundles (`allow_unverified=True`, `probewatch serve --allow-unverified-bundles`), and
`weights_file` must resolve (symlinks followed) to a file inside the bundle folder.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from probewatch.probes.errors import (
    BundleError,
    BundleNotFoundError,
    ChecksumMismatchError,
    CorruptBundleError,
    DimensionMismatchError,
    FingerprintMismatchError,
)
from probewatch.probes.manifest import Manifest

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.safetensors"
LINEAR_KINDS = ("linear", "mean_diff", "lat", "contrast")
#: kinds whose token columns are linear in the residual row: they share their layer's GEMM and pushdown
STACK_KINDS = (*LINEAR_KINDS, "attention")


class UnverifiedBundleError(BundleError):
    """The manifest records no weights checksum, and unverified bundles were not explicitly allowed."""


class BundlePathError(BundleError):
    """The manifest's weights_file points outside the bundle folder (absolute path, `..`, symlink)."""


@dataclass
class Bundle:
    """A loaded bundle: its manifest, its tensors and where it came from."""

    path: Path
    manifest: Manifest
    tensors: dict[str, torch.Tensor] = field(repr=False)
    sae: Any = field(default=None, repr=False)  # kind sae_feature: the (shared) SAE it reads
    _vocabulary: Any = field(default=None, repr=False, compare=False)

    @property
    def vocabulary(self) -> Any:
        """Token id -> piece (`probes/vocab.py`) for a bundle whose token selection reads token text, else None."""
        if self.manifest.token_selection != "answer":
            return None
        if self._vocabulary is None:
            from probewatch.probes.vocab import Vocabulary

            self._vocabulary = Vocabulary.from_tensors(self.tensors)
        return self._vocabulary

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def layer(self) -> int:
        return self.manifest.layer

    def linear_form(self) -> tuple[torch.Tensor, float]:
        """(w_eff [d], b_eff) with normalisation folded in: score = x @ w_eff + b_eff.

        standardize: w . ((x - mean) / scale) + b == x . (w / scale) + (b - w . (mean / scale)).
        Folding lets every linear-family probe on a layer share one GEMM, and lets a client push
        the projection down onto the model's device. A multi-layer probe's x is its layers' rows
        concatenated in `layers` order (w_eff [len(layers) * d]; `layer_forms` splits it per layer).
        """
        if self.manifest.kind not in LINEAR_KINDS:
            raise TypeError(f"bundle {self.id!r} of kind {self.manifest.kind!r} has no linear form")
        weight = self.tensors["weight"].to(torch.float64).reshape(-1)
        bias = float(self.tensors["bias"].reshape(-1)[0]) if "bias" in self.tensors else 0.0
        if self.manifest.normalization == "standardize":
            mean = self.tensors["mean"].to(torch.float64).reshape(-1)
            scale = self.tensors["scale"].to(torch.float64).reshape(-1)
            w_eff = weight / scale
            return w_eff.to(torch.float32), float(bias - (w_eff * mean).sum())
        return weight.to(torch.float32), bias

    def feature_form(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """sae_feature bundles: (feature_ids [k], w_eff [k], b_eff), score = latents[:, ids] @ w_eff + b_eff."""
        if self.manifest.kind != "sae_feature":
            raise TypeError(f"bundle {self.id!r} of kind {self.manifest.kind!r} reads no SAE features")
        from probewatch.probes.saes.feature_probe import feature_form

        return feature_form(self.manifest, self.tensors)

    def stack_form(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [d, c], b [c]) float32, the probe's columns in its layer's stack: one (the score) for the
        linear family, two (attention logit a_t, value v_t) for kind attention (probes/attention.py)."""
        if self.manifest.kind == "attention":
            from probewatch.probes.attention import attention_form

            return attention_form(self.manifest, self.tensors)
        w, b = self.linear_form()
        return w.reshape(-1, 1), torch.tensor([b], dtype=torch.float32)

    @property
    def layers(self) -> list[int]:
        """Every layer the probe reads (manifest `layers`, or [layer])."""
        return self.manifest.all_layers

    def layer_forms(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """{layer: (W [d, c], b [c])}: the probe's columns in each layer's stack.

        A single-layer probe: {layer: stack_form()}. A multi-layer linear probe splits its folded
        weight [L*d] into one column per layer and puts its bias on the first layer only, so the sum of
        its per-layer partial columns over its layers is the token score (rows or pushdown alike).
        """
        layers = self.layers
        if len(layers) == 1:
            return {layers[0]: self.stack_form()}
        w, b = self.linear_form()
        parts = w.reshape(len(layers), -1)
        return {
            layer: (parts[i].reshape(-1, 1).clone(), torch.tensor([b if i == 0 else 0.0], dtype=torch.float32))
            for i, layer in enumerate(layers)
        }


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_bundle(path: str | Path, manifest: Manifest, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a bundle directory; fills in checksum, created_at and probewatch_version."""
    from probewatch import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights_path = path / WEIGHTS_FILE
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
        str(weights_path),
        metadata={"probe_id": manifest.id, "format": "probewatch-bundle"},
    )
    manifest.weights_file = WEIGHTS_FILE
    manifest.weights_sha256 = sha256_bytes(weights_path.read_bytes())
    manifest.created_at = manifest.created_at or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest.probewatch_version = __version__
    manifest.validate(str(path / MANIFEST_FILE))
    _check_shapes(manifest, tensors, str(path))
    (path / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(path: str | Path) -> Manifest:
    """Parse and validate only the manifest (listing bundles needs no weights)."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise BundleNotFoundError(f"bundle directory not found: {path}")
    if not manifest_path.is_file():
        raise BundleNotFoundError(f"{manifest_path}: missing ({path} is not a probe bundle)")
    try:
        data = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptBundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
    return Manifest.from_dict(data, source=str(manifest_path))


def weights_path_of(path: Path, manifest: Manifest) -> Path:
    """The bundle's weights file, or BundlePathError when `weights_file` leaves the bundle folder."""
    name = manifest.weights_file
    if not name or Path(name).is_absolute() or "\x00" in name:
        raise BundlePathError(
            f"{path / MANIFEST_FILE}: weights_file {name!r} must be a file name relative to the bundle folder"
        )
    candidate = path / name
    root = path.resolve()
    resolved = candidate.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise BundlePathError(
            f"{path / MANIFEST_FILE}: weights_file {name!r} resolves to {resolved}, outside the bundle folder {root}; "
            "a bundle may only read files inside its own folder"
        )
    return candidate


def load_bundle(
    path: str | Path,
    expected_fingerprint: str | None = None,
    expected_d_model: int | None = None,
    allow_unverified: bool = False,
) -> Bundle:
    """Load and verify a bundle; see the module docstring for the order of checks.

    `allow_unverified` loads a bundle whose manifest records no `weights_sha256` (hand-made or
    legacy bundles); without it such a bundle is refused with UnverifiedBundleError.
    """
    path = Path(path)
    manifest = read_manifest(path)
    weights_path = weights_path_of(path, manifest)
    if not weights_path.is_file():
        raise BundleNotFoundError(f"{weights_path}: missing (bundle {manifest.id!r})")
    if not manifest.weights_sha256 and not allow_unverified:
        raise UnverifiedBundleError(
            f"{path / MANIFEST_FILE}: bundle {manifest.id!r} records no weights_sha256, so its weights cannot be "
            "verified; re-export it with save_bundle (which records the checksum) or load it explicitly as "
            "unverified (probewatch serve --allow-unverified-bundles)"
        )
    raw = weights_path.read_bytes()
    actual = sha256_bytes(raw)
    if manifest.weights_sha256 and actual != manifest.weights_sha256:
        raise ChecksumMismatchError(
            f"{weights_path}: sha256 {actual[:16]}… does not match the manifest's {manifest.weights_sha256[:16]}… "
            "(file changed or corrupted after export)"
        )
    try:
        from safetensors.torch import load as load_bytes

        tensors = load_bytes(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CorruptBundleError(f"{weights_path}: not a readable safetensors file ({exc})") from exc
    _check_shapes(manifest, tensors, str(path))
    if expected_d_model is not None and manifest.model.d_model != expected_d_model:
        raise DimensionMismatchError(
            f"bundle {manifest.id!r} ({path}) reads d_model={manifest.model.d_model} but the model has d_model={expected_d_model}"
        )
    if expected_fingerprint is not None and manifest.model.fingerprint != expected_fingerprint:
        raise FingerprintMismatchError(
            f"bundle {manifest.id!r} ({path}) was trained on model {manifest.model.id!r} with fingerprint "
            f"{manifest.model.fingerprint}, but the attached model's fingerprint is {expected_fingerprint}; "
            "retrain or export the bundle for this model"
        )
    sae = None
    if manifest.kind == "sae_feature":
        from probewatch.probes.saes.feature_probe import check_feature_tensors, load_bundle_sae

        sae = load_bundle_sae(path, manifest)
        check_feature_tensors(manifest, tensors, str(path), d_sae=sae.cfg.d_sae)
    return Bundle(path=path, manifest=manifest, tensors=tensors, sae=sae)


def _check_shapes(manifest: Manifest, tensors: dict[str, torch.Tensor], where: str) -> None:
    from probewatch.probes.vocab import NEEDS_VOCABULARY, check_vocab_tensors

    if manifest.token_selection in NEEDS_VOCABULARY:
        check_vocab_tensors(tensors, where)
    if manifest.kind == "sae_feature":
        from probewatch.probes.saes.feature_probe import check_feature_tensors

        check_feature_tensors(manifest, tensors, where)  # the latent range is checked once the SAE is loaded
        return
    if manifest.kind == "attention":
        from probewatch.probes.attention import check_attention_tensors

        check_attention_tensors(manifest, tensors, where)
        return
    if manifest.kind not in LINEAR_KINDS:
        return
    d, n_layers = manifest.model.d_model, len(manifest.all_layers)
    required = ["weight"] + (["mean", "scale"] if manifest.normalization == "standardize" else [])
    for name in required:
        if name not in tensors:
            raise CorruptBundleError(
                f"{where}: weights lack tensor {name!r} (kind {manifest.kind}, normalization {manifest.normalization})"
            )
        if tensors[name].numel() != d * n_layers:
            what = f"d_model={d}" if n_layers == 1 else f"d_model × len(layers) = {d} × {n_layers} = {d * n_layers}"
            raise DimensionMismatchError(
                f"{where}: tensor {name!r} has {tensors[name].numel()} values but the manifest says {what}"
            )
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise CorruptBundleError(f"{where}: tensor {name!r} contains NaN or Inf")
    if manifest.normalization == "standardize" and (tensors["scale"] <= 0).any():
        raise CorruptBundleError(f"{where}: tensor 'scale' must be strictly positive")


def load_bundles(
    paths: Sequence[str | Path],
    expected_fingerprint: str | None = None,
    expected_d_model: int | None = None,
    allow_unverified: bool = False,
) -> list[Bundle]:
    """Load several bundles; a directory holding bundle sub-directories is expanded."""
    out: list[Bundle] = []
    for p in expand_bundle_dirs(paths):
        out.append(load_bundle(p, expected_fingerprint, expected_d_model, allow_unverified=allow_unverified))
    return out


def expand_bundle_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Each path is a bundle, or a folder whose immediate sub-folders are bundles; a family folder
    (probes/family.py: family.json + member bundles) among them expands to its members."""
    from probewatch.probes.family import FAMILY_FILE

    result: list[Path] = []
    for p in map(Path, paths):
        if (p / MANIFEST_FILE).exists():
            result.append(p)
        elif p.is_dir():
            children = sorted(c for c in p.iterdir() if (c / MANIFEST_FILE).exists() or (c / FAMILY_FILE).is_file())
            if not children:
                raise BundleNotFoundError(f"{p}: neither a bundle nor a folder of bundles")
            for c in children:
                result.extend([c] if (c / MANIFEST_FILE).exists() else expand_bundle_dirs([c]))
        else:
            raise BundleNotFoundError(f"bundle directory not found: {p}")
    return result
