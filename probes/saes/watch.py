"""Watch-lists: which SAE latents the sidecar exports as `probewatch_sae_feature_activation`.

A watch-list maps an SAE name to latent ids. It comes from a setting string
(`parse_watch_spec("l15-topk-2k:12,345;other-sae:7")`) or from the SAE's own features.json
(`behaviour_watchlist`: the latents most associated with each behaviour), and goes to
`ProbeRuntime(..., saes=[...], watch={...})` or `runtime.set_watch(name, ids)`.
"""

from __future__ import annotations

import json
from pathlib import Path

from probewatch.probes.saes.errors import SAEConfigError
from probewatch.probes.saes.loading import FEATURES_FILENAME


def parse_watch_spec(spec: str) -> dict[str, list[int]]:
    """`name:1,2,3;name2:4` -> {"name": [1, 2, 3], "name2": [4]} (whitespace ignored)."""
    out: dict[str, list[int]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, sep, ids = part.partition(":")
        if not sep or not name.strip():
            raise SAEConfigError(f"watch-list entry {part!r} must look like 'sae-name:12,345'")
        try:
            out.setdefault(name.strip(), []).extend(int(x) for x in ids.split(",") if x.strip())
        except ValueError:
            raise SAEConfigError(f"watch-list entry {part!r}: latent ids must be integers") from None
    return out


def behaviour_watchlist(sae_dir: str | Path, per_behaviour: int = 4, min_distance: float = 0.15) -> list[int]:
    """The top `per_behaviour` latents of each behaviour table in features.json whose AUROC is at
    least `min_distance` away from 0.5 (ids in table order, no repeats; [] without features.json)."""
    path = Path(sae_dir) / FEATURES_FILENAME
    if not path.is_file():
        return []
    doc = json.loads(path.read_text())
    ids: list[int] = []
    for table in (doc.get("behaviours") or {}).values():
        taken = 0
        for entry in table.get("top", []):
            if taken >= per_behaviour:
                break
            if abs(float(entry["auroc"]) - 0.5) >= min_distance and entry["id"] not in ids:
                ids.append(int(entry["id"]))
                taken += 1
    return ids
