"""What one model forward and one request look like to the capture (plain data, no vLLM imports)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from probewatch.server.client.results import GenerationHandle

__all__ = ["VERIFY_WAIT_S", "Gathered", "RequestState", "StepView", "Verify"]


@dataclass
class StepView:
    """One model forward as every runner can describe it (host bookkeeping + device tensors).

    Rows `query_start_loc[i]:query_start_loc[i + 1]` of `aux[k]` / `input_ids` / `positions` belong
    to `req_ids[i]`, the first at sequence position `num_computed[i]`. `num_tokens` is the number of
    real rows: a CUDA-graph runner pads the batch, and rows past it are padding.
    """

    req_ids: Sequence[str]
    query_start_loc: np.ndarray  # [len(req_ids) + 1]
    num_computed: np.ndarray  # [len(req_ids)]
    num_tokens: int
    input_ids: torch.Tensor | None
    positions: torch.Tensor
    aux: Sequence[torch.Tensor]  # one [>= num_tokens, d] tensor per captured layer, in `layers` order


@dataclass
class Verify:
    """A speculative-decoding verify step of one request: its rows past `p0` are the drafts' rows,
    part of the sequence only once the rejection sampler accepted them. `end` (positions below it
    are the sequence's) is known when the step's sampled tokens arrive (`on_sampled`): accepted
    drafts + 1 new tokens means rows p0 .. p0 + accepted are valid."""

    p0: int
    end: int
    drafts: int = 0
    event: threading.Event = field(default_factory=threading.Event)

    def settle(self, end: int) -> None:
        self.end = end
        self.event.set()


VERIFY_WAIT_S = 10.0  # the sender waits this long for a verify step's acceptance (normally: milliseconds)


@dataclass
class RequestState:
    """One vLLM request as the capture sees it."""

    handle: GenerationHandle | None  # None: not monitored
    prompt_len: int
    layers: frozenset[int]  # layers sent for it
    floor: int  # positions below this were already processed (a resumed request recomputes them)
    prompt_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)  # what the runner sampled (for the texts and stops)
    params: Any = None  # SamplingParams (stop rules)
    verify: Verify | None = None  # the pending speculative verify step, if any

    @property
    def live(self) -> bool:
        h = self.handle
        return h is not None and not h.rejected and h.capture_error is None and not h.done


@dataclass
class Gathered:
    """Token ids and positions the engine fed for one row selection (host copies)."""

    tokens: torch.Tensor
    positions: torch.Tensor
    event: Any
