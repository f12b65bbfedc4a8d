"""Lexical-confound check of `probewatch bench quality`: does a probe fire on its behaviour's *words*?

Benign requests that only talk about a behaviour's subject (a chemistry test, a baby monitor; how to tell
whether a child is lying, the boy who cried wolf) are answered by the model itself and scored by the
shipped bundle at its shipped threshold. A probe that reads the vocabulary rather than the act flags
them, and in production that is the traffic that pages a reviewer for nothing. The requests live in
`training/datasets/lexical_confounds.yaml`, one list per topic; `LEXICAL_CHECK` says which probes read
which topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["LEXICAL_CHECK", "confound_requests", "lexical_confounds"]

#: probe id -> the topic of `lexical_confounds.yaml` whose requests it is checked on
LEXICAL_CHECK: dict[str, str] = {
    "deception": "deception",
    "alignment-faking": "monitoring",
    "eval-awareness": "monitoring",
    "monitored-framing": "monitoring",
}
#: where the generated answers are cached (one file for every topic: the prompts are the keys)
RESPONSES_TAG = "lexical-confounds"
#: answer length: long enough for the answer to use the topic's words
MAX_NEW_TOKENS = 32


def confound_requests(topic: str) -> tuple[str, list[str]]:
    """(what the requests mention, in words for the doc; the requests) of one topic."""
    from probewatch.training.datasets.common import packaged_yaml

    spec = packaged_yaml("lexical_confounds.yaml")
    if topic not in spec:
        raise KeyError(f"no lexical confounds for topic {topic!r} (one of {', '.join(sorted(spec))})")
    return str(spec[topic]["mentions"]), [str(r) for r in spec[topic]["requests"]]


def lexical_confounds(
    loaded: Any, bundle_dir: Path, topic: str, requests: Sequence[str] | None = None
) -> dict[str, Any]:
    """How often the bundle in `bundle_dir` fires on `topic`'s benign requests with the model's own answers
    (`requests`: a subset, for tests): how many alert and how many fall in the uncertainty band, the mean score
    and every request's score, as diagnostics.json keeps them."""
    import numpy as np

    from probewatch.data.dialogue import Dialogue, Message
    from probewatch.probes import ProbeRuntime, load_bundle
    from probewatch.scoring import score_dialogues
    from probewatch.training.datasets.control import cached_responses

    mentions, every = confound_requests(topic)
    questions = list(every if requests is None else requests)
    responses = cached_responses(loaded, questions, MAX_NEW_TOKENS, RESPONSES_TAG, progress=False)
    dialogues = [Dialogue([Message("user", q), Message("assistant", r)], 0) for q, r in zip(questions, responses)]
    bundle = load_bundle(bundle_dir, expected_fingerprint=loaded.fingerprint)
    results = score_dialogues(loaded.model, loaded.tokenizer, ProbeRuntime([bundle]), dialogues, progress=False)
    scores = np.array([r.aggregate[bundle.id] for r in results], dtype=np.float64)
    threshold = bundle.manifest.threshold
    return {
        "topic": topic,
        "mentions": mentions,
        "n": len(scores),
        "flagged": int((scores >= threshold.value).sum()),
        "uncertain": sum(threshold.in_band(float(s)) for s in scores),  # recorded for review, no page
        "mean_score": float(scores.mean()),
        "threshold": threshold.value,
        "examples": [
            {"text": d.messages[0].content, "answer": d.messages[1].content, "score": float(s)}
            for d, s in zip(dialogues, scores)
        ],
    }
