"""The capture plan: which layers to capture, per layer rows or pushdown projections and which prompt
rows, read from the sidecar's `ListProbes` answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from probewatch.proto.codec import decode_tensor
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb


@dataclass
class LayerCapture:
    layer: int
    pushdown: bool
    projection: torch.Tensor | None  # [d, k] float32 on the model's device (pushdown layers)
    prompt_rows: int

    @property
    def kind(self) -> pb.PayloadKind:
        return pb.PAYLOAD_KIND_PROJECTIONS if self.pushdown else pb.PAYLOAD_KIND_RESIDUAL_ROWS


@dataclass
class Plan:
    fingerprint: str
    d_model: int
    layers: list[int]
    captures: dict[int, LayerCapture]
    max_message_bytes: int
    probes: list[dict[str, Any]]

    @classmethod
    def from_listing(cls, listing: pb.ListProbesResponse, mode: str, device: torch.device) -> Plan:
        captures = {}
        for plan in listing.plans:
            pushdown = mode == "pushdown" and bool(plan.probe_ids) and not plan.rows_required
            projection = None
            if pushdown:
                projection = torch.from_numpy(decode_tensor(plan.projection, "projection").copy()).to(device)
            captures[plan.layer] = LayerCapture(
                plan.layer, pushdown, projection, plan.prompt_rows or pb.PROMPT_ROWS_ALL
            )
        # a multi-layer probe has a column in the plan of each layer it reads (its first layer is ProbeInfo.layer)
        reads: dict[str, set[int]] = {}
        for plan in listing.plans:
            for pid in plan.probe_ids:
                reads.setdefault(pid, set()).add(plan.layer)
        probes = [
            {
                "id": p.id,
                "behaviour": p.behaviour,
                "kind": p.kind,
                "layer": p.layer,
                "layers": sorted(reads.get(p.id, set()) | {p.layer}),  # every layer to capture for this probe
                "token_selection": p.token_selection,
                "aggregation": p.aggregation,
                "threshold": p.threshold,
            }
            for p in listing.probes
        ]
        return cls(
            listing.model_fingerprint,
            listing.d_model,
            list(listing.layers),
            captures,
            int(listing.max_message_bytes) or 4 * 1024 * 1024,
            probes,
        )
