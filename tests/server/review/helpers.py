"""Incidents for the review-app tests, written through the store API as a sidecar would write them."""

from __future__ import annotations

import datetime as dt
import re

from probewatch.server.store import Incident, IncidentStore, probe_context

FINGERPRINT = "pwfp1:" + "cd" * 16
PROBES = {"dec": ("deception", 1.0), "ref": ("refusal", 2.0), "af": ("alignment_faking", 1.5)}


def seed(store: IncidentStore, n: int, now: dt.datetime | None = None) -> list[int]:
    """`n` generations; generation k alerts on `dec` (and on `ref` when k % 3 == 0); 6 scored tokens each.

    Token scores of `dec` on generation k: k % 5 - 1 + 0.5 * i for token i (positions 10..15), so
    tokens at or above its threshold 1.0 are known exactly.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    ids = []
    for k in range(n):
        tokens = [[10 + i, 100 + i] for i in range(6)]
        context = {}
        for probe, (behaviour, threshold) in PROBES.items():
            base = (k % 5 - 1) if probe == "dec" else (2.5 if probe == "ref" and k % 3 == 0 else -2.0)
            scores = [[10 + i, base + 0.5 * i] for i in range(6)]
            top = max(s for _, s in scores)
            context[probe] = probe_context(
                behaviour=behaviour,
                score=top,
                threshold=threshold,
                n_tokens=6,
                aggregation="max",
                token_selection="response",
                layer=2,
                version="7",
                token_scores=scores,
            )
        created = (now - dt.timedelta(minutes=n - k)).isoformat()
        for probe, info in context.items():
            if not info["flagged"]:
                continue
            ids.append(
                store.record(
                    Incident(
                        generation_id=f"gen-{k}",
                        probe=probe,
                        behaviour=info["behaviour"],
                        score=info["score"],
                        threshold=info["threshold"],
                        model_fingerprint=FINGERPRINT,
                        bundle_version="7",
                        aggregation="max",
                        token_scores=info["token_scores"],
                        prompt=f"user: question {k}\nassistant:",
                        response=f"answer number {k}",
                        metadata={"tenant": f"t{k % 2}"},
                        prompt_length=10,
                        tokens=tokens,
                        context=context,
                        early=True,
                        created_at=created,
                    )
                )
            )
    return ids


THREE = (("dec", "deception", 1.0), ("dec-sae", "deception", 0.5), ("ref", "refusal", 2.0))


def seed_grouped(
    store: IncidentStore, n: int, now: dt.datetime | None = None, text: str = "answer number"
) -> list[str]:
    """`n` generations `grp-k` (oldest first, a minute apart), each alerting on all three probes of THREE:
    scores dec 1.5 + k, dec-sae 0.5 + 2k (margin 2k), ref 2.25 + 0.5k; response f"{text} {k}"."""
    now = now or dt.datetime.now(dt.timezone.utc)
    out = []
    for k in range(n):
        scores = {"dec": 1.5 + k, "dec-sae": 0.5 + 2 * k, "ref": 2.25 + 0.5 * k}
        context = {
            p: probe_context(
                behaviour=b,
                score=scores[p],
                threshold=thr,
                n_tokens=2,
                aggregation="max",
                token_selection="response",
                layer=2,
                version="7",
                token_scores=[[10, thr - 1], [11, scores[p]]],
            )
            for p, b, thr in THREE
        }
        created = (now - dt.timedelta(minutes=n - k)).isoformat()
        for p, b, thr in THREE:
            store.record(
                Incident(
                    generation_id=f"grp-{k}",
                    probe=p,
                    behaviour=b,
                    score=scores[p],
                    threshold=thr,
                    model_fingerprint=FINGERPRINT,
                    bundle_version="7",
                    aggregation="max",
                    token_scores=[[10, thr - 1], [11, scores[p]]],
                    prompt=f"user: question {k}\nassistant:",
                    response=f"{text} {k}",
                    prompt_length=10,
                    tokens=[[10, 100], [11, 101]],
                    context=context,
                    created_at=created,
                )
            )
        out.append(f"grp-{k}")
    return out


def csrf(html: str) -> str:
    """The CSRF token of a page's forms (what a browser posts back)."""
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)
