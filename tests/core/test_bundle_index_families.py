"""Shipped families are served as families: the default bundle list names the family folder, not its members."""

from __future__ import annotations

from pathlib import Path

from probewatch.bundle_index import fold_families


def test_members_fold_into_their_family_folder(tmp_path: Path):
    family = tmp_path / "deception-family"
    for member in ("deception-omission", "deception-sandbagging"):
        (family / member).mkdir(parents=True)
    (family / "family.json").write_text("{}")
    plain = tmp_path / "refusal"
    plain.mkdir()
    paths = [family / "deception-omission", plain, family / "deception-sandbagging"]
    assert fold_families(paths) == [family, plain]
    assert fold_families([plain]) == [plain]


def test_a_folder_spec_keeps_its_family_whole_and_a_member_spec_stays_a_member(tmp_path: Path):
    from probewatch.bundle_index import resolve_bundle_specs
    from tests.probes.helpers import make_bundle

    root = tmp_path / "bundles"
    family = root / "fam"
    make_bundle(family, "fam-a", layer=1)
    make_bundle(family, "fam-b", layer=2)
    (family / "family.json").write_text("{}")
    make_bundle(root, "solo", layer=1)
    assert resolve_bundle_specs([str(root)]) == [family, root / "solo"]
    assert resolve_bundle_specs([str(family)]) == [family]
    assert resolve_bundle_specs([str(family / "fam-a")]) == [family / "fam-a"]
