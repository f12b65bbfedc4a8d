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
