"""Family manifests (probes/family.py): format, precise refusals, member checks, the max rule, discovery."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from probewatch.probes import Threshold, load_bundles
from probewatch.probes.bundle import expand_bundle_dirs
from probewatch.probes.family import (
    FamilyError,
    FamilyManifest,
    FamilyMember,
    check_members,
    family_score,
    find_families,
    read_family,
    write_family,
)
from tests.probes.helpers import FINGERPRINT, make_bundle


def _family(**overrides) -> dict:
    data = {
        "kind": "family",
        "format_version": 1,
        "id": "dec-family",
        "behaviour": "deception",
        "members": [{"id": "dec-a", "type": "sandbagging"}, "dec-b"],
        "threshold": {"value": 1.5, "method": "fpr", "fpr": 0.01},
        "model": {"id": "tiny", "fingerprint": FINGERPRINT},
    }
    data.update(overrides)
    return data


def _write_family_folder(root: Path, members=("dec-a", "dec-b"), layers=(1, 2), **overrides) -> Path:
    folder = root / "dec-family"
    for i, (mid, layer) in enumerate(zip(members, layers)):
        make_bundle(folder, mid, layer=layer, seed=i, aggregation="max")
    (folder / "family.json").write_text(json.dumps(_family(**overrides)))
    return folder


def test_round_trip_and_defaults(tmp_path):
    fam = FamilyManifest.from_dict(_family())
    assert fam.member_ids == ["dec-a", "dec-b"] and fam.members[0].type == "sandbagging" and fam.combine == "max"
    write_family(tmp_path, fam)
    again = read_family(tmp_path)
    assert again == fam
    assert "uncertain_from" not in json.loads((tmp_path / "family.json").read_text())["threshold"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "linear"}, "field 'kind' must be 'family', got 'linear'"),
        ({"format_version": 2}, "field 'format_version' 2 is not supported"),
        ({"id": ""}, "field 'id' must be a non-empty string"),
        ({"behaviour": "lying"}, "field 'behaviour' must be one of"),
        ({"combine": "mean"}, "field 'combine' must be one of ['max'], got 'mean'"),
        ({"members": []}, "field 'members' must be a non-empty list"),
        ({"members": ["dec-a", {"type": "x"}]}, "members[1] must be a bundle id or an object with a non-empty 'id'"),
        ({"members": ["dec-a", "dec-a"]}, "members listed twice: ['dec-a']"),
        ({"members": ["dec-family"]}, "the family id 'dec-family' is also one of its members"),
        ({"threshold": {"fpr": 0.01}}, "field 'threshold' must be an object with a 'value'"),
        ({"threshold": {"value": "high"}}, "field 'threshold.value' must be a number, got 'high'"),
        ({"threshold": {"value": float("inf")}}, "field 'threshold.value' must be finite"),
        (
            {"threshold": {"value": 1.0, "uncertain_from": 2.0}},
            "field 'threshold.uncertain_from' must be a finite number below",
        ),
        ({"model": "tiny"}, "field 'model' must be an object"),
    ],
)
def test_bad_family_manifests_are_refused_naming_the_field(tmp_path, change, message):
    (tmp_path / "family.json").write_text(json.dumps(_family(**change)))
    with pytest.raises(FamilyError) as err:
        read_family(tmp_path)
    assert message in str(err.value) and str(tmp_path / "family.json") in str(err.value)


def test_unparsable_and_missing_family_files(tmp_path):
    (tmp_path / "family.json").write_text("{not json")
    with pytest.raises(FamilyError, match="not valid JSON"):
        read_family(tmp_path)
    with pytest.raises(FamilyError, match="no family manifest"):
        read_family(tmp_path / "elsewhere")


def test_family_folder_expands_to_its_members_and_is_found(tmp_path):
    folder = _write_family_folder(tmp_path)
    other, _ = make_bundle(tmp_path, "solo", layer=1)
    assert [p.name for p in expand_bundle_dirs([folder])] == ["dec-a", "dec-b"]
    assert [p.name for p in expand_bundle_dirs([tmp_path])] == ["dec-a", "dec-b", "solo"]  # nested family folder
    assert [f.id for f in find_families([tmp_path])] == ["dec-family"]
    assert [f.id for f in find_families([folder, other])] == ["dec-family"]
    with pytest.raises(FamilyError, match=r"family id\(s\) \['dec-family'\] loaded twice"):
        find_families([folder, tmp_path])


def _manifests(paths):
    return {b.id: b.manifest for b in load_bundles(paths)}


def test_members_on_different_layers_are_fine(tmp_path):
    folder = _write_family_folder(tmp_path, layers=(1, 3))
    check_members(find_families([folder]), _manifests([folder]))


def test_member_checks_name_the_problem(tmp_path):
    folder = _write_family_folder(tmp_path)
    fam = read_family(folder)
    loaded = _manifests([folder])
    with pytest.raises(
        FamilyError, match=r"family 'dec-family': member bundle\(s\) \['dec-b'\] are not loaded \(loaded: dec-a\)"
    ):
        check_members([fam], {"dec-a": loaded["dec-a"]})
    loaded["dec-b"].behaviour = "refusal"
    with pytest.raises(FamilyError, match="member 'dec-b' detects 'refusal', the family 'deception'"):
        check_members([fam], loaded)
    loaded["dec-b"].behaviour = "deception"
    loaded["dec-b"].model.fingerprint = "pwfp1:" + "cd" * 16
    with pytest.raises(FamilyError, match="member 'dec-b' was trained on model pwfp1:cdcd"):
        check_members([fam], loaded)
    loaded["dec-b"].model.fingerprint = FINGERPRINT
    with pytest.raises(FamilyError, match="a loaded bundle has the same id"):
        check_members([fam], {**loaded, "dec-family": loaded["dec-a"]})
    twin = FamilyManifest("twin", "deception", [FamilyMember("dec-a")], Threshold(value=0.0))
    with pytest.raises(FamilyError, match="member 'dec-a' already belongs to family 'dec-family'"):
        check_members([fam, twin], loaded)


def test_family_score_is_the_max_of_members_that_scored():
    assert family_score({"a": 0.5, "b": 2.0, "c": -1.0}, ["a", "b", "c"]) == (2.0, "b")
    assert family_score({"a": math.nan, "b": -3.0}, ["a", "b"]) == (-3.0, "b")
    assert family_score({"a": 1.0, "b": 1.0}, ["a", "b"]) == (1.0, "a")  # ties: the earlier member
    value, winner = family_score({"a": math.nan}, ["a", "b"])
    assert math.isnan(value) and winner is None
