"""Probe families (issue 22): several ordinary member bundles whose alert is their calibrated maximum.

Deception is heterogeneous (sandbagging, denial, omission, instructed lying, ...): a targeted probe per
type beats one universal direction, but an operator wants one deception alert, not six. A family is a
folder holding `family.json` and its member bundles as sub-folders::

    deception-family/
      family.json                  kind "family": id, behaviour, members, threshold, model
      deception-sandbagging/       an ordinary bundle (manifest.json + weights.safetensors)
      deception-denial/            ...

Members are plain linear bundles, so rows, pushdown, HF and vLLM score them unchanged; each member's score
is a calibrated logit (Platt), so the maximum over members compares like with like. The family score of
a generation is `max` over the members that scored a token of their aggregates; the family threshold is set
on that maximum by the same operating-point rule as a single probe. Live, the family is a derived score
(server/sidecar/families.py): members are scored and reported but never alert on their own; the family
raises the one alert and its incident names the member that scored highest.

Serving-path module: imports only the manifest types (no training, no torch).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from probewatch.behaviours import BEHAVIOURS
from probewatch.probes.errors import CorruptBundleError
from probewatch.probes.manifest import Manifest, Threshold

__all__ = [
    "FAMILY_FILE",
    "FamilyError",
    "FamilyManifest",
    "FamilyMember",
    "check_members",
    "family_score",
    "find_families",
    "read_family",
    "write_family",
]

FAMILY_FILE = "family.json"
FAMILY_FORMAT_VERSION = 1
FAMILY_KIND = "family"
#: how members' aggregates combine: the calibrated maximum (members share one logit axis)
COMBINE = ("max",)


class FamilyError(CorruptBundleError):
    """A family manifest is malformed, or does not match the bundles loaded with it (names file and field)."""


@dataclass
class FamilyMember:
    """One member: a bundle id and the deception type (or other sub-behaviour) it was trained for."""

    id: str
    type: str = ""


@dataclass
class FamilyManifest:
    """`family.json`: the family's id, behaviour, members, threshold on the maximum and provenance."""

    id: str
    behaviour: str
    members: list[FamilyMember]
    threshold: Threshold
    model_id: str = ""
    model_fingerprint: str = ""
    combine: str = "max"
    version: str = "1"
    description: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FAMILY_FORMAT_VERSION
    kind: str = FAMILY_KIND

    @property
    def member_ids(self) -> list[str]:
        return [m.id for m in self.members]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = {"id": out.pop("model_id"), "fingerprint": out.pop("model_fingerprint")}
        if self.threshold.uncertain_from is None:  # written without the key, like a bundle without a band
            out["threshold"].pop("uncertain_from", None)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = FAMILY_FILE) -> FamilyManifest:
        """Validate a parsed family.json; FamilyError names `where` and the field."""
        if not isinstance(data, dict):
            raise FamilyError(f"{where}: expected a JSON object")
        if data.get("kind") != FAMILY_KIND:
            raise FamilyError(f"{where}: field 'kind' must be {FAMILY_KIND!r}, got {data.get('kind')!r}")
        if data.get("format_version", FAMILY_FORMAT_VERSION) != FAMILY_FORMAT_VERSION:
            raise FamilyError(
                f"{where}: field 'format_version' {data.get('format_version')!r} is not supported "
                f"(this runtime reads {FAMILY_FORMAT_VERSION})"
            )
        fid = data.get("id")
        if not isinstance(fid, str) or not fid.strip():
            raise FamilyError(f"{where}: field 'id' must be a non-empty string")
        behaviour = data.get("behaviour")
        if behaviour not in BEHAVIOURS:
            raise FamilyError(f"{where}: field 'behaviour' must be one of {list(BEHAVIOURS)}, got {behaviour!r}")
        combine = data.get("combine", "max")
        if combine not in COMBINE:
            raise FamilyError(f"{where}: field 'combine' must be one of {list(COMBINE)}, got {combine!r}")
        members = _members(data.get("members"), fid, where)
        threshold = _threshold(data.get("threshold"), where)
        model = data.get("model") or {}
        if not isinstance(model, dict):
            raise FamilyError(f"{where}: field 'model' must be an object with 'id' and 'fingerprint'")
        return cls(
            id=fid,
            behaviour=behaviour,
            members=members,
            threshold=threshold,
            model_id=str(model.get("id", "")),
            model_fingerprint=str(model.get("fingerprint", "")),
            combine=combine,
            version=str(data.get("version", "1")),
            description=str(data.get("description", "")),
            metrics=dict(data.get("metrics") or {}),
            extra=dict(data.get("extra") or {}),
        )


def _members(raw: Any, fid: str, where: str) -> list[FamilyMember]:
    if not isinstance(raw, list) or not raw:
        raise FamilyError(f"{where}: field 'members' must be a non-empty list of member bundle ids")
    out: list[FamilyMember] = []
    for i, item in enumerate(raw):
        entry = {"id": item} if isinstance(item, str) else item
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"].strip():
            raise FamilyError(f"{where}: members[{i}] must be a bundle id or an object with a non-empty 'id'")
        out.append(FamilyMember(entry["id"], str(entry.get("type", ""))))
    ids = [m.id for m in out]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise FamilyError(f"{where}: members listed twice: {dupes}")
    if fid in ids:
        raise FamilyError(f"{where}: the family id {fid!r} is also one of its members; give the family its own id")
    return out


def _threshold(raw: Any, where: str) -> Threshold:
    if not isinstance(raw, dict) or "value" not in raw:
        raise FamilyError(f"{where}: field 'threshold' must be an object with a 'value'")
    known = {
        k: raw[k] for k in ("value", "method", "fpr", "calibration_set", "n_calibration", "uncertain_from") if k in raw
    }
    try:
        threshold = Threshold(**known)
        value = float(threshold.value)
    except (TypeError, ValueError):
        raise FamilyError(f"{where}: field 'threshold.value' must be a number, got {raw.get('value')!r}") from None
    if not math.isfinite(value):
        raise FamilyError(f"{where}: field 'threshold.value' must be finite, got {raw.get('value')!r}")
    threshold.value = value
    band = threshold.uncertain_from
    if band is not None and (
        not isinstance(band, (int, float)) or not math.isfinite(float(band)) or not float(band) < value
    ):
        raise FamilyError(
            f"{where}: field 'threshold.uncertain_from' must be a finite number below threshold.value {value:g}, "
            f"got {band!r}"
        )
    return threshold


def read_family(path: str | Path) -> FamilyManifest:
    """A family folder (or its family.json) -> FamilyManifest; FamilyError on anything malformed."""
    path = Path(path)
    file = path / FAMILY_FILE if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FamilyError(f"{file}: no family manifest") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FamilyError(f"{file}: not valid JSON ({exc})") from None
    return FamilyManifest.from_dict(data, str(file))


def write_family(folder: str | Path, manifest: FamilyManifest) -> Path:
    """Write `folder/family.json` (the member bundles are written beside it by their own exporter)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    FamilyManifest.from_dict(json.loads(json.dumps(manifest.to_dict())), str(folder / FAMILY_FILE))  # round-trips
    (folder / FAMILY_FILE).write_text(json.dumps(manifest.to_dict(), indent=2, allow_nan=False) + "\n")
    return folder / FAMILY_FILE


def find_families(paths: Iterable[str | Path]) -> list[FamilyManifest]:
    """The families among bundle paths: a path holding family.json, or a folder whose sub-folders do.

    The same paths load the members as ordinary bundles (`expand_bundle_dirs` expands a family folder)."""
    found: list[FamilyManifest] = []
    for p in map(Path, paths):
        if (p / FAMILY_FILE).is_file():
            found.append(read_family(p))
        elif p.is_dir() and not (p / "manifest.json").exists():
            found.extend(read_family(c) for c in sorted(p.iterdir()) if (c / FAMILY_FILE).is_file())
    ids = [f.id for f in found]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise FamilyError(f"family id(s) {dupes} loaded twice; each family id must be unique")
    return found


def check_members(families: Sequence[FamilyManifest], manifests: Mapping[str, Manifest]) -> None:
    """Refuse families that do not match the loaded bundles: every member present, same behaviour and model,
    no family id shadowing a bundle, no bundle in two families. Members may read different layers."""
    owner: dict[str, str] = {}
    for fam in families:
        where = f"family {fam.id!r}"
        if fam.id in manifests:
            raise FamilyError(f"{where}: a loaded bundle has the same id; a family needs an id of its own")
        missing = [m for m in fam.member_ids if m not in manifests]
        if missing:
            loaded = ", ".join(sorted(manifests)) or "(none)"
            raise FamilyError(
                f"{where}: member bundle(s) {missing} are not loaded (loaded: {loaded}); "
                "a family is served with all its members"
            )
        for mid in fam.member_ids:
            m = manifests[mid]
            if m.behaviour != fam.behaviour:
                raise FamilyError(f"{where}: member {mid!r} detects {m.behaviour!r}, the family {fam.behaviour!r}")
            if fam.model_fingerprint and m.model.fingerprint != fam.model_fingerprint:
                raise FamilyError(
                    f"{where}: member {mid!r} was trained on model {m.model.fingerprint}, "
                    f"the family on {fam.model_fingerprint}"
                )
            if mid in owner:
                raise FamilyError(f"{where}: member {mid!r} already belongs to family {owner[mid]!r}")
            owner[mid] = fam.id


def family_score(aggregates: Mapping[str, float], members: Sequence[str]) -> tuple[float, str | None]:
    """(max over members of their aggregate, the member holding it); NaN aggregates (no token) are skipped,
    ties go to the earlier member; (NaN, None) when no member scored."""
    best, winner = math.nan, None
    for mid in members:
        value = aggregates.get(mid, math.nan)
        if not math.isnan(value) and (winner is None or value > best):
            best, winner = float(value), mid
    return best, winner
