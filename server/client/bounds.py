"""Caller-controlled input never decides whether a generation is monitored.

The sidecar refuses an `Open` whose generation id or metadata is over its limits (and the generation
then runs unmonitored). Metadata (`probewatch run`'s `metadata` / `user`, the HF client's
`probewatch_metadata`, the vLLM plugin's `vllm_xargs` `probewatch_metadata`) and ids (`generation_ids`,
vLLM request ids taken from `X-Request-Id`) come from whoever calls the inference server, so the
client bounds them *before* sending, to the sidecar's defaults (`--max-metadata-entries` 64,
`--max-metadata-bytes` 16384, `--max-generation-id-bytes` 256; `AttachConfig` fields when a sidecar
runs with lower limits): long values are cut (UTF-8 safe), entries past the budget are dropped, a
`probewatch_truncated` entry says how much, and an over-long id keeps its head plus a hash of the
whole (still unique). Each bounded Open is counted (`probewatch_client_bounded_inputs_total{what}`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

MARKER = "probewatch_truncated"
MAX_KEY_BYTES = 128
MAX_VALUE_BYTES = 2048


def _cut(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[: max(0, max_bytes)].decode("utf-8", "ignore")


def bound_generation_id(generation_id: str, max_bytes: int) -> str:
    """`generation_id` if it fits, else its head + '~' + 16 hex of its SHA-256 (same input, same id)."""
    if len(generation_id.encode("utf-8")) <= max_bytes:
        return generation_id
    digest = hashlib.sha256(generation_id.encode("utf-8")).hexdigest()[:16]
    return _cut(generation_id, max_bytes - 17) + "~" + digest


def bound_metadata(metadata: Mapping[str, str], max_entries: int, max_bytes: int) -> tuple[dict[str, str], bool]:
    """Metadata that fits the sidecar's limits (first entries first) and whether anything was cut."""
    reserve = len(MARKER) + 64  # room for the marker entry
    budget = max_bytes - reserve
    out: dict[str, str] = {}
    cut_values = dropped = 0
    for key, value in metadata.items():
        k, v = _cut(str(key), MAX_KEY_BYTES), str(value)
        if k == MARKER:
            dropped += 1
            continue
        size_k = len(k.encode("utf-8"))
        room = min(MAX_VALUE_BYTES, budget - size_k)
        if len(out) >= max_entries - 1 or room < 0 or k in out:
            dropped += 1
            continue
        bounded = _cut(v, room)
        if bounded != v or k != str(key):
            cut_values += 1
        out[k] = bounded
        budget -= size_k + len(bounded.encode("utf-8"))
    changed = bool(cut_values or dropped)
    if changed:
        out[MARKER] = f"{dropped} entries dropped, {cut_values} cut"
    return out, changed


__all__ = ["MARKER", "bound_generation_id", "bound_metadata"]
