"""docs/quality.md helpers for pooling, the deception family and evasion (issue 22).

Pure functions of typed reports, family reports (`training/family_eval.py`) and evasion reports
(`training/evasion.py`); `quality_doc.HELPERS` includes `EXTRA_HELPERS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from probewatch.probes.manifest import LENGTH_NORMALISED
from probewatch.training.doc_numbers import num, pct
from probewatch.training.report import TrainReport


def _best(rows: Sequence[Mapping[str, Any]], keep) -> Mapping[str, Any] | None:
    scored = [r for r in rows if keep(r) and r.get("heldout_kind_auroc") is not None]
    return max(scored, key=lambda r: r["heldout_kind_auroc"]) if scored else None


def _cell(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return "not tried"
    reads = row.get("token_selection", "response")
    where = "" if reads == "response" else f", reads {reads}"
    return f"{num(row['heldout_kind_auroc'])} (layer {row['layer']} {row['method']}, {row['aggregation']}{where})"


def pooling_rows(results: Mapping[str, TrainReport]) -> list[dict[str, str]]:
    """Per response-reading probe: held-out-kind AUROC of the chosen configuration beside the best
    attention-pooling probe, the best raw maximum and the best length-normalised maximum the sweep tried."""
    out = []
    for r in results.values():
        if r.chosen.get("token_selection") == "prompt_last":
            continue
        rows = r.sweep
        out.append(
            {
                "probe": r.probe_id,
                "chosen": _cell(r.chosen),
                "attention": _cell(_best(rows, lambda x: x["method"] == "attention")),
                "raw_max": _cell(_best(rows, lambda x: x["aggregation"] in LENGTH_NORMALISED.values())),
                "normalised": _cell(_best(rows, lambda x: x["aggregation"] in LENGTH_NORMALISED)),
            }
        )
    return out


def family_rows(report: Mapping[str, Any]) -> list[dict[str, str]]:
    """The family table: per type, then the whole test split and the held-out-kind mean."""
    rows = [
        {
            "type": t,
            "kinds": ", ".join(row["kinds"]),
            "n": str(row["n_test"]),
            "member": num(row["auroc_member"]),
            "family": num(row["auroc_family"]),
            "single": num(row["auroc_single"]),
        }
        for t, row in report["per_type"].items()
    ]
    test, held = report["test"], report["heldout_kind"]
    single = test.get("single") or {}
    rows.append(
        {
            "type": "**whole test split**",
            "kinds": "",
            "n": str(report["n_test"]),
            "member": "",
            "family": num(test["family"]["auroc"]),
            "single": num(single.get("auroc")),
        }
    )
    rows.append(
        {
            "type": "**held-out kind (mean)**",
            "kinds": "",
            "n": "",
            "member": "",
            "family": num(held.get("family_mean")),
            "single": num(held.get("single_mean")),
        }
    )
    return rows


def evasion_rows(reports: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row per probe and condition: AUROC, recall, flagged negatives, median change of positives (pooled over
    every scored token, and for a rewording over the answer's own tokens)."""
    out = []
    for rep in reports:
        for r in rep["results"]:
            change, answer = r.get("median_positive_change"), r.get("median_positive_change_answer")
            out.append(
                {
                    "probe": rep["probe_id"],
                    "condition": r["condition"],
                    "n": f"{r['n_positive']} / {r['n_negative']}",
                    "auroc": num(r["auroc"]),
                    "recall": num(r["recall"], 2),
                    "flagged": pct(r["flagged_negatives"]),
                    "change": "—" if change is None else f"{change:+.2f}",
                    "answer": "—" if answer is None else f"{answer:+.2f}",
                }
            )
    return out


def evasion_items(reports: Sequence[Mapping[str, Any]]) -> str:
    """Where each probe's evasion items came from, probes that share a source named together."""
    by_data: dict[str, list[str]] = {}
    for rep in reports:
        by_data.setdefault(rep["data"], []).append(f"`{rep['probe_id']}`")
    return "; ".join(f"{', '.join(probes)}: {data}" for data, probes in by_data.items())


EXTRA_HELPERS: dict[str, Any] = {
    "pooling_rows": pooling_rows,
    "family_rows": family_rows,
    "evasion_rows": evasion_rows,
    "evasion_items": evasion_items,
}

__all__ = ["EXTRA_HELPERS", "evasion_items", "evasion_rows", "family_rows", "pooling_rows"]
