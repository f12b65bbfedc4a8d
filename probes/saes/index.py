"""Where SAEs live: shipped inside the package and the user's own, as `<root>/<model id>/<name>/`.

Pure functions (the caller passes the user root, e.g. `$PROBEWATCH_HOME/saes`), so the serving
path can resolve an SAE name from a watch-list setting without the training stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from probewatch.probes.saes.errors import SAENotFoundError
from probewatch.probes.saes.feature_probe import shipped_saes_root
from probewatch.probes.saes.loading import SAE_CFG_FILENAME


@dataclass
class IndexedSAE:
    name: str
    model_id: str
    path: Path
    source: str  # shipped | user


def discover_saes(user_root: Path | None = None, model_id: str | None = None) -> list[IndexedSAE]:
    found = []
    for root, source in ((shipped_saes_root(), "shipped"), (user_root, "user")):
        if root is None or not Path(root).is_dir():
            continue
        for cfg in sorted(Path(root).glob(f"*/*/{SAE_CFG_FILENAME}")):
            folder = cfg.parent
            if model_id is None or folder.parent.name == model_id:
                found.append(IndexedSAE(folder.name, folder.parent.name, folder, source))
    return found


def resolve_sae(spec: str | Path | None, model_id: str | None = None, user_root: Path | None = None) -> Path:
    """An SAE folder from a path, an SAE name, or (spec None) the model's only shipped SAE."""
    if spec is not None and Path(spec).expanduser().is_dir():
        return Path(spec).expanduser()
    known = discover_saes(user_root, model_id)
    if spec is None:
        shipped = [s for s in known if s.source == "shipped"]
        if len(shipped) == 1:
            return shipped[0].path
        raise SAENotFoundError(
            f"no --sae given and {len(shipped)} shipped SAEs for model {model_id!r}; pass --sae (known: "
            f"{', '.join(s.name for s in known) or 'none'})"
        )
    matches = [s for s in known if s.name == str(spec)]
    if not matches:
        raise SAENotFoundError(
            f"no SAE folder or SAE named {str(spec)!r}; known SAEs: {', '.join(s.name for s in known) or '(none)'}"
        )
    return matches[0].path
