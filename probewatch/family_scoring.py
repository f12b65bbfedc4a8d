"""Offline family scores (issue 22): the same max-of-members numbers the live sidecar reports.

`score_dialogues` scores a family's members like any bundle; `add_family_scores` then adds each family
under its own id, exactly as server/sidecar/families.py does live: the aggregate is the maximum of the
members' aggregates (members with no selected token skipped), `flagged` compares it with the family's
threshold, and the kept token scores are the leading member's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from probewatch.probes.family import FamilyManifest, family_score
from probewatch.scoring import DialogueScores

__all__ = ["add_family_scores"]


def add_family_scores(
    results: Sequence[DialogueScores], families: Sequence[FamilyManifest]
) -> list[dict[str, str | None]]:
    """Add every family's score to each result in place; per result, {family id: the member that won}."""
    winners: list[dict[str, str | None]] = []
    for result in results:
        won: dict[str, str | None] = {}
        for fam in families:
            missing = [m for m in fam.member_ids if m not in result.aggregate]
            if missing:
                raise KeyError(f"family {fam.id!r}: members {missing} were not scored; load every member bundle")
            value, winner = family_score(result.aggregate, fam.member_ids)
            result.aggregate[fam.id] = value
            result.flagged[fam.id] = bool(not math.isnan(value) and value >= fam.threshold.value)
            result.token_scores[fam.id] = list(result.token_scores[winner]) if winner else []
            won[fam.id] = winner
        winners.append(won)
    return winners
