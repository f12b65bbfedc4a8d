"""The behaviours probewatch detects: one definition for bundles, training, the CLI and benchmarks.

Kept free of imports so that `probewatch --help` and argument parsing never load torch.
"""

from __future__ import annotations

BEHAVIOURS: tuple[str, ...] = ("deception", "refusal", "alignment_faking")

# Default bundle id per behaviour (ids use dashes; behaviour names use underscores).
DEFAULT_PROBE_IDS: dict[str, str] = {b: b.replace("_", "-") for b in BEHAVIOURS}
