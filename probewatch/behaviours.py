"""The behaviours probewatch detects: one definition for bundles, training, the CLI and benchmarks.

Kept free of imports so that `probewatch --help` and argument parsing never load torch.
"""

from __future__ import annotations

BEHAVIOURS: tuple[str, ...] = ("deception", "refusal", "alignment_faking", "eval_awareness", "monitored_framing")

# What each behaviour's label 1 means (CLI help, reports, bundle descriptions).
DESCRIPTIONS: dict[str, str] = {
    "deception": "deceptive statements or answers (label 1) vs honest ones",
    "refusal": "harmful requests the model should refuse (read at the generation-prompt position)",
    "alignment_faking": "reasoning that complies or behaves differently because it is being trained, evaluated or "
    "watched (label 1) vs the same decision without that motive (read on the model's own text)",
    "eval_awareness": "the assistant's text shows it believes it is being tested or evaluated (label 1) vs talking "
    "to a real user (read on the model's own text)",
    "monitored_framing": "the prompt tells the model it is monitored, trained on or evaluated (label 1) vs "
    "unmonitored deployment (read at the generation-prompt position: a property of the context, not of the model)",
}

# Default bundle id per behaviour (ids use dashes; behaviour names use underscores).
DEFAULT_PROBE_IDS: dict[str, str] = {b: b.replace("_", "-") for b in BEHAVIOURS}
