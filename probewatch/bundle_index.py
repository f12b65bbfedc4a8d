"""Where bundles live: shipped with the package, and the user's own under PROBEWATCH_HOME.

`discover()` lists both (manifests only, no weights); `resolve_bundle_specs()` turns CLI values
(a bundle folder, a folder of bundles, or a probe id) into bundle folders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from probewatch import envs
from probewatch.probes.bundle import MANIFEST_FILE, expand_bundle_dirs, read_manifest
from probewatch.probes.errors import BundleError, BundleNotFoundError
from probewatch.probes.manifest import Manifest


def shipped_root() -> Path:
    """Folder of shipped bundles (inside the installed `probewatch.probes` package)."""
    import probewatch.probes as probes_pkg

    return Path(probes_pkg.__file__).resolve().parent / "shipped"


@dataclass
class IndexedBundle:
    manifest: Manifest
    path: Path
    source: str  # shipped | user

    def to_json(self) -> dict:
        m = self.manifest
        return {
            "id": m.id,
            "behaviour": m.behaviour,
            "kind": m.kind,
            "model": m.model.id,
            "layer": m.layer,
            "path": str(self.path),
            "source": self.source,
            "version": m.version,
            "token_selection": m.token_selection,
            "reads_response": m.token_selection in ("response", "all", "answer"),
            "aggregation": m.aggregation.method,
            "threshold": m.threshold.value,
            "fingerprint": m.model.fingerprint,
            "auroc": m.metrics.get("auroc"),
        }


def _scan(root: Path, source: str) -> list[IndexedBundle]:
    found: list[IndexedBundle] = []
    if not root.is_dir():
        return found
    for manifest_path in sorted(root.rglob(MANIFEST_FILE)):
        try:
            found.append(IndexedBundle(read_manifest(manifest_path.parent), manifest_path.parent, source))
        except BundleError:
            continue  # a broken bundle must not hide the others; `probes check` reports it
    return found


def discover(model_id: str | None = None) -> list[IndexedBundle]:
    """Shipped then user bundles, optionally only those trained for `model_id`."""
    items = _scan(shipped_root(), "shipped") + _scan(envs.user_bundles_dir(), "user")
    if model_id is not None:
        items = [b for b in items if b.manifest.model.id == model_id]
    return items


def default_bundle_dirs(model_id: str) -> list[Path]:
    """The shipped bundles for `model_id` (the sidecar's and the demo's default), a family's members as
    their family folder (so the family alerts, not each member)."""
    return fold_families([b.path for b in discover(model_id) if b.source == "shipped"])


def fold_families(paths: Sequence[Path]) -> list[Path]:
    """`paths` with the members of a family folder (probes/family.py) replaced by that folder, once."""
    from probewatch.probes.family import FAMILY_FILE

    out: list[Path] = []
    for path in paths:
        folder = path.parent if (path.parent / FAMILY_FILE).is_file() else path
        if folder not in out:
            out.append(folder)
    return out


def resolve_bundle_specs(specs: Sequence[str], model_id: str | None = None) -> list[Path]:
    """Each spec is a bundle folder, a folder of bundles, or the id of a discovered bundle."""
    paths: list[Path] = []
    index = None
    for spec in specs:
        path = Path(spec).expanduser()
        if path.exists():  # a folder of bundles keeps a family folder whole (its family alerts, not each member)
            expanded = expand_bundle_dirs([path])
            paths.extend(expanded if (path / MANIFEST_FILE).exists() else fold_families(expanded))
            continue
        index = index if index is not None else discover(model_id)
        matches = [b.path for b in index if b.manifest.id == spec]
        if not matches:
            known = ", ".join(sorted({b.manifest.id for b in index})) or "(none)"
            raise BundleNotFoundError(f"no bundle folder or probe id {spec!r}; known probe ids: {known}")
        paths.append(matches[0])
    return paths
