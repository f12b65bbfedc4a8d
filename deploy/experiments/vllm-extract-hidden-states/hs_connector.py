"""A per-step hidden-states KV connector (loaded via kv_connector_module_path="hs_connector";
common.py puts this folder on sys.path so that vLLM can import it by that name).

Used with speculative_config method "extract_hidden_states": the ExtractHiddenStatesProposer writes
the aux-layer residuals of every scheduled token into a cache-only "KV" layer. This connector, each
step in wait_for_save (worker; runs after the target AND the drafter forward), reads from that
cache the rows of the positions that are confirmed by now:
  [emitted, num_computed + num_scheduled - num_spec_tokens)
i.e. this step's non-draft tokens plus any draft position the scheduler has since accepted (a
rejected draft's row was computed from a wrong input token and is never emitted).
Rows go to the module-global CAPTURE (single process: VLLM_ENABLE_V1_MULTIPROCESSING=0).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    SupportsHMA,
)

CAPTURE: dict[str, dict[int, torch.Tensor]] = {}  # req_id -> position -> [n_layers, hidden]
STEPS: list[dict] = []  # per step: req_id -> (num_computed, num_scheduled, num_spec, emitted range)
TIMING = {"wait_for_save_s": 0.0, "steps": 0}


@dataclass
class _Entry:
    req_id: str
    num_computed: int
    num_scheduled: int
    num_spec: int
    block_ids: list[int]


@dataclass
class StepMeta(KVConnectorMetadata):
    entries: list[_Entry] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)


def _hs_group(kv_cache_config) -> int:
    from vllm.v1.kv_cache_interface import HiddenStateCacheSpec

    if kv_cache_config is None:
        return 0
    groups = kv_cache_config.kv_cache_groups
    print(
        "[hs_connector] kv groups:",
        [(type(g.kv_cache_spec).__name__, g.kv_cache_spec.block_size, g.layer_names) for g in groups],
        flush=True,
    )
    ids = [g for g, grp in enumerate(groups) if isinstance(grp.kv_cache_spec, HiddenStateCacheSpec)]
    if len(ids) == 1:
        return ids[0]
    ids = [g for g, grp in enumerate(groups) if any("cache_only_layers" in n for n in grp.layer_names)]
    assert len(ids) == 1, ids
    return ids[0]


class StepHiddenStatesConnector(KVConnectorBase_V1, SupportsHMA):
    def __init__(self, vllm_config, role: KVConnectorRole, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self._gid = _hs_group(kv_cache_config)
        self._bs = (
            kv_cache_config.kv_cache_groups[self._gid].kv_cache_spec.block_size
            if kv_cache_config is not None
            else vllm_config.cache_config.block_size
        )
        # scheduler side
        self._blocks: dict[str, list[int]] = {}
        self._finished: list[str] = []
        # worker side
        self._kv: torch.Tensor | None = None
        self._emitted: dict[str, int] = {}

    # ---------------- worker side ----------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]):
        from vllm.config import get_layers_from_vllm_config
        from vllm.model_executor.models.extract_hidden_states import CacheOnlyAttentionLayer

        layers = get_layers_from_vllm_config(self._vllm_config, CacheOnlyAttentionLayer, list(kv_caches))
        assert len(layers) == 1, list(layers)
        self._kv = kv_caches[next(iter(layers))]
        print(
            f"[hs_connector] cache layer {list(layers)} shape {tuple(self._kv.shape)} block_size {self._bs}", flush=True
        )

    def start_load_kv(self, forward_context, **kwargs: Any) -> None:
        pass

    def wait_for_layer_load(self, layer_name: str) -> None:
        pass

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs: Any) -> None:
        pass  # called for every attention layer (30 target + 1 cache-only) each step; nothing to do

    def wait_for_save(self):
        if self._kv is None or not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        if not isinstance(meta, StepMeta):
            return
        t0 = time.perf_counter()
        step = {}
        for e in meta.entries:
            start = self._emitted.get(e.req_id, 0)
            end = e.num_computed + e.num_scheduled - e.num_spec
            if end > start:
                pos = torch.arange(start, end)
                blk = torch.tensor(e.block_ids, dtype=torch.long)[pos // self._bs]
                rows = self._kv[blk, :, pos % self._bs].clone()  # [k, n_layers, hidden]
                d = CAPTURE.setdefault(e.req_id, {})
                for i, p in enumerate(range(start, end)):
                    d[p] = rows[i]
                self._emitted[e.req_id] = end
            step[e.req_id] = (e.num_computed, e.num_scheduled, e.num_spec, start, end)
        for r in meta.finished:
            self._emitted.pop(r, None)
        STEPS.append(step)
        TIMING["wait_for_save_s"] += time.perf_counter() - t0
        TIMING["steps"] += 1

    # ---------------- scheduler side ----------------
    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        return 0, False

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        pass

    def build_connector_meta(self, scheduler_output) -> KVConnectorMetadata:
        meta = StepMeta(finished=list(scheduler_output.finished_req_ids))
        for r in scheduler_output.finished_req_ids:
            self._blocks.pop(r, None)
        spec = scheduler_output.scheduled_spec_decode_tokens or {}
        nst = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            self._blocks[new.req_id] = list(new.block_ids[self._gid])
            meta.entries.append(
                _Entry(
                    new.req_id,
                    new.num_computed_tokens,
                    nst[new.req_id],
                    len(spec.get(new.req_id, ())),
                    list(self._blocks[new.req_id]),
                )
            )
        cached = scheduler_output.scheduled_cached_reqs
        for i, rid in enumerate(cached.req_ids):
            nb = cached.new_block_ids[i]
            if rid in cached.resumed_req_ids:
                self._blocks[rid] = list(nb[self._gid]) if nb is not None else []
            elif nb is not None:
                self._blocks.setdefault(rid, []).extend(nb[self._gid])
            meta.entries.append(
                _Entry(rid, cached.num_computed_tokens[i], nst[rid], len(spec.get(rid, ())), list(self._blocks[rid]))
            )
        return meta

    def request_finished(self, request, block_ids):
        return False, None

    def request_finished_all_groups(self, request, block_ids):
        return False, None
