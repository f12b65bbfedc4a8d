"""The V2 (MRV2) and standalone-CPU runner adapters driven with vLLM 0.34's real classes.

No GPU and no Triton CPU backend here, so neither runner can run an engine; these tests take the
release's own `SchedulerOutput` / `NewRequestData` / `CachedRequestData` / `SamplingParams`,
`InputBatch` (GPU and CPU variants), `ExecuteModelState`, `ModelRunnerOutput` and `AsyncOutput`,
script a runner that returns them step by step (a subclass of the real runner class whose
`execute_model` / `sample_tokens` replay the script, wrapped by the adapter exactly as the real ones
are), and check what a real sidecar scored: every row lands at its request and position (prefix-cache
hit, CUDA-graph padding never read, chunked continuation, preemption and resume, EOS close, abort),
with the same scores as `x @ w + b` on the rows the model produced.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from tests.probes.helpers import FINGERPRINT, make_bundle
from tests.server.helpers import set_manifest

D = 16
LAYERS = [1, 2]
EOS = 2


def build(cls: type, **fields: Any) -> Any:
    """An instance of a vLLM dataclass / NamedTuple with the given fields, None elsewhere."""
    if hasattr(cls, "_fields"):
        return cls(**{name: fields.get(name) for name in cls._fields})
    values = {
        f.name: fields.get(f.name)
        for f in dataclasses.fields(cls)
        if f.name in fields or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    }
    return cls(**values)


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """resp (layer 1, response), last (layer 2, prompt_last), every (layer 2, all): weights by id."""
    root = tmp_path_factory.mktemp("bundles")
    weights = {}
    for pid, layer, selection, seed in (
        ("resp", 1, "response", 1),
        ("last", 2, "prompt_last", 2),
        ("every", 2, "all", 3),
    ):
        path, tensors = make_bundle(root, pid, layer=layer, d=D, seed=seed, aggregation="mean")
        if selection != "response":
            set_manifest(path, token_selection=selection)
        weights[pid] = (layer, tensors["weight"], float(tensors["bias"][0]))
    return root, weights


@pytest.fixture(scope="module")
def sidecar(probes, tmp_path_factory, release_source):
    from probewatch.server.sidecar.config import SidecarConfig
    from probewatch.server.sidecar.process import Sidecar

    root, _ = probes
    config = SidecarConfig(
        model_id="tiny",
        fingerprint=FINGERPRINT,
        bundle_paths=sorted(p for p in root.iterdir() if p.is_dir()),
        host="127.0.0.1",
        port=0,
        metrics_host="127.0.0.1",
        metrics_port=0,
        incident_db=tmp_path_factory.mktemp("inc") / "incidents.sqlite3",
    )
    sidecar = Sidecar(config).start()
    yield sidecar
    sidecar.stop(0)


@pytest.fixture
def capture(sidecar):
    from probewatch.server.client.config import AttachConfig
    from probewatch.server.client.core import ClientCore
    from probewatch.server.client.metrics import ClientMetrics
    from probewatch.server.client.vllm_plugin.capture import RunnerCapture

    client = ClientCore(
        AttachConfig(sidecar=sidecar.address, mode="rows", linger_s=0.0),
        FINGERPRINT,
        torch.device("cpu"),
        ClientMetrics(),
    )
    assert client.wait_ready(10)
    cap = RunnerCapture(client, LAYERS, None, max_model_len=64, runner_name="test")
    yield cap
    cap.stop()


# -- scheduler side ---------------------------------------------------------------------------------------
def params(max_tokens: int = 16, **extra):
    from vllm.sampling_params import SamplingParams

    p = SamplingParams(max_tokens=max_tokens, extra_args=extra or None)
    p._eos_token_id = EOS  # what the engine sets from the tokenizer (read through .eos_token_id)
    return p


def new_req(rid: str, prompt: list[int], computed: int = 0, prefill: list[int] | None = None, max_tokens: int = 16):
    from vllm.v1.core.sched.output import NewRequestData

    return build(
        NewRequestData,
        req_id=rid,
        prompt_token_ids=prompt,
        mm_features=[],
        sampling_params=params(max_tokens),
        pooling_params=None,
        block_ids=([0],),
        num_computed_tokens=computed,
        lora_request=None,
        prefill_token_ids=prefill or prompt,
    )


def sched_out(new=(), scheduled: dict[str, int] | None = None, finished=(), cached=()):
    from vllm.v1.core.sched.output import CachedRequestData, SchedulerOutput

    scheduled = scheduled or {}
    cached_data = CachedRequestData.make_empty()
    cached_data.req_ids = list(cached)
    return build(
        SchedulerOutput,
        scheduled_new_reqs=list(new),
        scheduled_cached_reqs=cached_data,
        num_scheduled_tokens=dict(scheduled),
        total_num_scheduled_tokens=sum(scheduled.values()),
        finished_req_ids=set(finished),
    )


# -- runner side -------------------------------------------------------------------------------------------
class Step:
    """One scripted forward: the batch layout, the fed tokens / positions, and the model's aux rows."""

    def __init__(self, reqs: list[tuple[str, int, int]], pad_to: int, seed: int, positions_override=None):
        self.req_ids = [r for r, _, _ in reqs]
        counts = np.array([n for _, n, _ in reqs], dtype=np.int32)
        self.qsl = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        self.computed = np.array([c for _, _, c in reqs], dtype=np.int32)
        self.num_tokens = int(self.qsl[-1])
        positions = np.concatenate([np.arange(c, c + n) for _, n, c in reqs]) if reqs else np.zeros(0)
        if positions_override is not None:
            positions = positions_override
        self.positions = torch.zeros(pad_to, dtype=torch.int64)
        self.positions[: self.num_tokens] = torch.from_numpy(positions.astype(np.int64))
        self.input_ids = torch.arange(100, 100 + pad_to, dtype=torch.int32)
        g = torch.Generator().manual_seed(seed)
        self.aux = [torch.randn(pad_to, D, generator=g) for _ in LAYERS]
        for a in self.aux:
            a[self.num_tokens :] = float("nan")  # CUDA-graph padding: never to be read (NaN would be refused)

    def rows(self, rid: str, layer: int) -> dict[int, torch.Tensor]:
        i = self.req_ids.index(rid)
        start, end, p0 = int(self.qsl[i]), int(self.qsl[i + 1]), int(self.computed[i])
        k = LAYERS.index(layer)
        return {p0 + j: self.aux[k][start + j] for j in range(end - start)}

    def input_batch(self, cls: type):
        n = len(self.req_ids)
        return build(
            cls,
            req_ids=list(self.req_ids),
            num_reqs=n,
            num_reqs_after_padding=n,
            query_start_loc_np=np.concatenate([self.qsl, np.full(2, self.num_tokens, dtype=np.int32)]),
            num_computed_tokens_np=self.computed,
            num_tokens=self.num_tokens,
            num_tokens_after_padding=self.positions.shape[0],
            input_ids=self.input_ids,
            positions=self.positions,
        )


def expected_scores(
    weights, steps_rows: dict[str, dict[int, dict[int, torch.Tensor]]], rid: str, probe: str, positions
):
    layer, w, b = weights[probe]
    rows = steps_rows[rid][layer]
    return {p: float(rows[p] @ w + b) for p in positions}


def _run(runner, capture, script):
    """Drive the patched runner like vLLM's engine core: execute_model, then sample_tokens (+ get_output)."""
    for sched, step, sampled in script:
        runner.script.append((step, sampled))
        runner.execute_model(sched)
        out = runner.sample_tokens(None)
        if hasattr(out, "get_output"):
            out.get_output()


def _collect(steps) -> dict[str, dict[int, dict[int, torch.Tensor]]]:
    rows: dict[str, dict[int, dict[int, torch.Tensor]]] = {}
    for step in steps:
        if step is None:
            continue
        for rid in step.req_ids:
            for layer in LAYERS:
                for p, r in step.rows(rid, layer).items():
                    rows.setdefault(rid, {}).setdefault(layer, {}).setdefault(p, r)  # first computation wins
    return rows


def _scenario(tag: str):
    """A: prompt 6, B: prompt 4 with 2 tokens cached (prefix hit). A is preempted after one decode and
    resumed as new (V2 resends prompt + output), then aborted; B ends on EOS. Ids are `A-<tag>`, `B-<tag>`."""
    a, b = f"A-{tag}", f"B-{tag}"
    A, B = list(range(10, 16)), list(range(20, 24))
    s1 = Step([(a, 6, 0), (b, 2, 2)], pad_to=12, seed=1)
    s2 = Step([(a, 1, 6), (b, 1, 4)], pad_to=4, seed=2)
    s3 = Step([(a, 8, 0)], pad_to=8, seed=3)  # resume: recomputes 0..7, only 7 is new
    return [
        (sched_out([new_req(a, A), new_req(b, B, computed=2)], {a: 6, b: 2}), s1, {a: [31], b: [41]}),
        (sched_out(scheduled={a: 1, b: 1}, cached=[a, b]), s2, {a: [32], b: [EOS]}),
        (sched_out([new_req(a, A, prefill=A + [31, 32])], {a: 8}), s3, {a: [33]}),
        (sched_out(finished=[a]), None, {}),
    ], [s1, s2, s3]


def _check_results(capture, weights, steps, tag: str):
    handles = capture.handles()
    rows = _collect(steps)
    A, B = f"A-{tag}", f"B-{tag}"
    a = handles[A].result(20)
    b = handles[B].result(20)
    assert a.status == "closed" and b.status == "closed", (a, b)
    assert not a.errors and not b.errors
    # A: prompt 0..5 (every), prompt_last at 5, response rows 6 (decode) and 7 (after the resume)
    assert sorted(a.token_scores["resp"]) == [6, 7]
    # prompt_last reads position 5 (the layer's other rows are scored for `every`, not aggregated)
    assert a.scores["last"] == pytest.approx(expected_scores(weights, rows, A, "last", [5])[5], abs=1e-4)
    assert sorted(a.token_scores["every"]) == list(range(8))
    # B: rows 2..3 computed (0..1 came from the prefix cache), 4 its one decode; EOS closed it
    assert sorted(b.token_scores["every"]) == [2, 3, 4]
    assert sorted(b.token_scores["resp"]) == [4]
    for rid, result in ((A, a), (B, b)):
        for probe, got in result.token_scores.items():
            want = expected_scores(weights, rows, rid, probe, got)
            for p in got:
                assert got[p] == pytest.approx(want[p], abs=1e-4), (rid, probe, p)


# -- the V2 GPU runner ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["rows", "pushdown"])
def test_v2_adapter_maps_every_row_to_its_request_and_position(mode, capture, probes):
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.worker.gpu import model_runner as mr
    from vllm.v1.worker.gpu.async_utils import AsyncOutput
    from vllm.v1.worker.gpu.input_batch import InputBatch

    from probewatch.server.client.vllm_plugin.adapters import v2

    class ScriptedV2(mr.GPUModelRunner):
        def __init__(self):  # the real __init__ needs a device and a VllmConfig
            self.script, self.execute_model_state, self.use_aux_hidden_state_outputs = [], None, True

        def execute_model(self, scheduler_output, intermediate_tensors=None, dummy_run=False, **kwargs):
            step, _ = self.script[0]
            if step is None:  # nothing scheduled: vLLM returns before the forward
                return None
            self.execute_model_state = build(
                mr.ExecuteModelState, input_batch=step.input_batch(InputBatch), aux_hidden_states=step.aux
            )
            return None

        def sample_tokens(self, grammar_output):
            step, sampled = self.script.pop(0)
            self.execute_model_state = None
            out = build(ModelRunnerOutput, req_ids=list(sampled), sampled_token_ids=list(sampled.values()))
            async_out = object.__new__(AsyncOutput)  # what the GPU runner returns; vLLM calls get_output()
            async_out._scripted = out
            return async_out

    original_get_output = AsyncOutput.get_output
    AsyncOutput.get_output = lambda self: self._scripted
    try:
        v2.V2Adapter()._patch(ScriptedV2)
        v2._patch_async_output()
        runner = ScriptedV2()
        runner._probewatch = capture
        capture.set_mode(mode)  # pushdown: the projections are computed on the rows' device, same scores
        script, steps = _scenario(f"v2-{mode}")
        _run(runner, capture, script)
        _check_results(capture, probes[1], steps, f"v2-{mode}")
        # a dummy (profiling / graph-capture) run is never read, nor are MRV2's warm-up requests
        runner.script.append((Step([("Z", 3, 0)], 4, 9), {}))
        runner.execute_model(sched_out([new_req("Z", [1, 2, 3])], {"Z": 3}), None, True)
        runner.script.pop()
        assert "Z" not in capture.handles()
        warm = Step([("_warmup_0_", 3, 0)], 4, 9)
        _run(runner, capture, [(sched_out([new_req("_warmup_0_", [1, 2, 3])], {"_warmup_0_": 3}), warm, {})])
        assert "_warmup_0_" not in capture.handles()
    finally:
        AsyncOutput.get_output = original_get_output
        AsyncOutput.__dict__.get("_probewatch_patched") and delattr(AsyncOutput, "_probewatch_patched")


def test_v2_self_check_stops_a_generation_fed_at_other_positions(capture):
    from vllm.v1.worker.gpu import model_runner as mr
    from vllm.v1.worker.gpu.input_batch import InputBatch

    from probewatch.server.client.vllm_plugin.adapters import v2

    class ScriptedV2(mr.GPUModelRunner):
        def __init__(self):
            self.script, self.execute_model_state, self.use_aux_hidden_state_outputs = [], None, True

        def execute_model(self, scheduler_output, intermediate_tensors=None, dummy_run=False, **kwargs):
            step, _ = self.script.pop(0)
            self.execute_model_state = build(
                mr.ExecuteModelState, input_batch=step.input_batch(InputBatch), aux_hidden_states=step.aux
            )

    v2.patch_execute_model(ScriptedV2, lambda r: r.execute_model_state.aux_hidden_states)
    runner = ScriptedV2()
    runner._probewatch = capture
    # the engine fed positions 0..2 and 9 where the bookkeeping says 0..3
    step = Step([("C", 4, 0)], pad_to=4, seed=5, positions_override=np.array([0, 1, 2, 9]))
    runner.script.append((step, {}))
    runner.execute_model(sched_out([new_req("C", [1, 2, 3, 4])], {"C": 4}))
    capture.on_request_finished(build(_Request, request_id="C", output_token_ids=[]))
    result = capture.handles()["C"].result(20)
    assert result.status == "aborted", result
    errors = capture.metrics.registry.get_sample_value("probewatch_client_capture_errors_total", {"reason": "position"})
    assert errors == 1


@dataclasses.dataclass
class _Request:
    request_id: str
    output_token_ids: list


def test_patching_the_real_runner_classes_is_idempotent(release_source):
    from vllm.v1.worker.cpu.standalone_model_runner import StandaloneCPUModelRunner
    from vllm.v1.worker.gpu.model_runner import GPUModelRunner

    from probewatch.server.client.vllm_plugin.adapters import ADAPTERS

    by_name = {a.name: a for a in ADAPTERS}
    assert by_name["vllm-v2"].available() and by_name["vllm-cpu-standalone"].available()
    assert not by_name["vllm-v1"].available()  # 0.34 deleted the V1 runner
    originals = {n: GPUModelRunner.__dict__[n] for n in ("load_model", "execute_model", "sample_tokens")}
    assert by_name["vllm-v2"].patch() is True
    assert by_name["vllm-v2"].patch() is False  # once per process
    for name, original in originals.items():
        assert GPUModelRunner.__dict__[name].__wrapped__ is original, name
    assert by_name["vllm-cpu-standalone"].patch() is True
    assert StandaloneCPUModelRunner.__dict__["execute_model"].__wrapped__.__name__ == "execute_model"


# -- the standalone CPU runner (0.34) ---------------------------------------------------------------------------
def test_standalone_cpu_adapter_splits_the_models_aux_outputs(capture, probes):
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.worker.cpu import standalone_model_runner as smr
    from vllm.v1.worker.cpu.input_batch import InputBatch

    from probewatch.server.client.vllm_plugin.adapters import cpu_standalone

    class Model(torch.nn.Module):
        """Returns (hidden, aux) like a vLLM model whose aux layers are set."""

        def __init__(self):
            super().__init__()
            self.step = None

        def forward(self, input_ids, positions, **kwargs):
            return torch.zeros(positions.shape[0], D), self.step.aux

    class ScriptedStandalone(smr.StandaloneCPUModelRunner):
        def __init__(self):
            self.script, self.execute_model_state, self.model = [], None, Model()

        def execute_model(self, scheduler_output, intermediate_tensors=None, dummy_run=False, **kwargs):
            step, _ = self.script[0]
            if step is None:
                return None
            self.model.step = step
            hidden = self.model(input_ids=step.input_ids, positions=step.positions)
            assert isinstance(hidden, torch.Tensor)  # what the real runner asserts
            self.execute_model_state = build(
                smr.ExecuteModelState, input_batch=step.input_batch(InputBatch), hidden_states=hidden
            )

        def sample_tokens(self, grammar_output):
            _, sampled = self.script.pop(0)
            self.execute_model_state = None
            return build(ModelRunnerOutput, req_ids=list(sampled), sampled_token_ids=list(sampled.values()))

    cpu_standalone.StandaloneCPUAdapter()._patch(ScriptedStandalone)
    runner = ScriptedStandalone()
    cpu_standalone.split_aux_outputs(runner, runner.model)
    runner._probewatch = capture
    script, steps = _scenario("cpu")
    _run(runner, capture, script)
    _check_results(capture, probes[1], steps, "cpu")
