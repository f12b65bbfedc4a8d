"""`--extra-data`: reviewed traffic (from `probewatch incidents export --labelled`) joining training or calibration.

Each exported line says which probe flagged it and which behaviour it is about (`meta.probe`,
`meta.behaviour`). A false positive of one probe is a hard negative for that probe only (nobody
reviewed the other probes on it), so lines about another probe or behaviour are left out; lines
without that provenance (hand-made data in the same format) are always used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from probewatch.data.dialogue import Dialogue, load_dialogues


def select_reviewed(
    dialogues: Sequence[Dialogue], probe_id: str | None = None, behaviour: str | None = None
) -> list[Dialogue]:
    out = []
    for d in dialogues:
        meta = d.meta or {}
        if probe_id is not None and meta.get("probe") not in (None, probe_id):
            continue
        if behaviour is not None and meta.get("behaviour") not in (None, behaviour):
            continue
        out.append(d)
    return out


def load_extra_data(
    paths: Sequence[str | Path], probe_id: str | None = None, behaviour: str | None = None
) -> list[Dialogue]:
    """Labelled dialogues of every file (labels required; errors name file and line), filtered as above."""
    dialogues: list[Dialogue] = []
    for path in paths:
        dialogues.extend(load_dialogues(path))
    return select_reviewed(dialogues, probe_id, behaviour)
