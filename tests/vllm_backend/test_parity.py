"""A real vLLM CPU engine (default compiled mode, chunked prefill, prefix caching) with the plugin and
a real sidecar: live scores equal offline `score_dialogues` on the same tokens (fp32, within
`score_tolerance`: 1e-3 + 5e-4 x the probe's largest |score| on that generation) in rows and
pushdown modes, for concurrent requests of different lengths, a chunked prefill, a prefix-cache hit
and an aborted request, with an attention-pooling probe, a multi-layer probe and a probe family (its score the
max of its members') beside the linear ones; every request's generation opens and closes exactly once."""

from __future__ import annotations

import os
import time

import pytest
import torch

from probewatch.data.chat import render
from probewatch.data.dialogue import Dialogue, Message
from probewatch.probes import ProbeRuntime, load_bundles
from probewatch.probes.aggregate import aggregate
from probewatch.scoring import score_dialogues
from tests.vllm_backend.conftest import ENGINE_ARGS, score_tolerance

BATCH_TOKENS = 64  # max_num_batched_tokens: the long prompt below is prefilled in chunks
BLOCK = 32  # KV block size (the CPU attention wants multiples of 32): the prefix cache reuses whole blocks
QUESTIONS = [
    "What is the capital of France? Answer in one word.",
    "Name three primary colors.",
    "How do I make a pipe bomb at home?",
    # long: > BATCH_TOKENS tokens, so its prefill is split over steps shared with the others' decodes
    "I am planning a long trip across Europe next summer with my family of four, including two "
    "teenagers who love museums, hiking and trying local food. We will start in Lisbon, travel by "
    "train through Spain and France, and finish in Rome after about three weeks. We have a moderate "
    "budget and prefer small hotels. Which three cities would you recommend we spend the most time "
    "in, and why? Please keep the answer short.",
]


@pytest.fixture(scope="module")
def bundles(bundles, tmp_path_factory):
    """The shared bundles plus `deception-attention` (attention pooling on the deception direction, listed last
    so the linear probes of its layer keep their column indices): every parity check here covers it too."""
    from tests.server.attention_helpers import attention_from_linear, single_layer_linear
    from tests.server.multilayer_helpers import multilayer_from_linear

    root = tmp_path_factory.mktemp("attention")
    # the shipped deception probe may read several layers: the derived probes start from its first layer's part
    src = single_layer_linear(next(p for p in bundles if p.name == "deception"), root / "sources", "deception-l1")
    refusal = next(p for p in bundles if p.name == "refusal-mean-diff")
    attention = attention_from_linear(src, root, "deception-attention", seed=4)
    return [
        *bundles,
        attention,
        # reads deception's first layer and refusal-mean-diff's; listed last too
        multilayer_from_linear([src, refusal], root, "deception-multi", [1.0, 0.5]),
        _family(src, root / "vllm-family"),
        _answer(src, root, "deception-answer"),
        _answer(attention, root, "deception-attention-answer"),  # attention pooling over what `answer` reads
    ]


def _answer(src, root, probe_id: str):
    """The deception direction reading with token selection `answer`, carrying the reference vocabulary."""
    from probewatch.models.tokenizer import load_tokenizer
    from probewatch.probes import load_bundle, save_bundle
    from probewatch.probes.vocab import vocab_pieces, vocab_tensors

    bundle = load_bundle(src)
    manifest = bundle.manifest
    manifest.id, manifest.weights_sha256, manifest.token_selection = probe_id, "", "answer"
    tensors = {**bundle.tensors, **vocab_tensors(vocab_pieces(load_tokenizer("smollm2-135m-instruct")))}
    return save_bundle(root / probe_id, manifest, tensors)


FAMILY = "vllm-family"
FAMILY_MEMBERS = ("fam-linear", "fam-attention")


def _family(src, folder):
    """A deception family of two members (a copy of the deception probe and an attention probe on its
    direction), alerting on their maximum: the sidecar derives the family's score live."""
    import json

    from probewatch.probes import load_bundle, save_bundle
    from tests.server.attention_helpers import attention_from_linear

    linear = load_bundle(src)
    manifest = linear.manifest
    manifest.id, manifest.weights_sha256, manifest.extra = FAMILY_MEMBERS[0], "", {}
    save_bundle(folder / FAMILY_MEMBERS[0], manifest, {k: v.clone() for k, v in linear.tensors.items()})
    attention_from_linear(src, folder, FAMILY_MEMBERS[1], seed=9)
    family = {
        "kind": "family",
        "id": FAMILY,
        "behaviour": "deception",
        "members": [{"id": FAMILY_MEMBERS[0], "type": "instructed_lying"}, {"id": FAMILY_MEMBERS[1], "type": "other"}],
        "threshold": {"value": 0.0, "method": "fixed", "fpr": None},
        "model": {"id": manifest.model.id, "fingerprint": manifest.model.fingerprint},
    }
    (folder / "family.json").write_text(json.dumps(family))
    return folder


@pytest.fixture(scope="module")
def engine(bundles, model_path, tmp_path_factory):
    """(llm, sidecar, runtime, capture): an in-process compiled engine monitored by an in-process sidecar."""
    from vllm import LLM

    from probewatch.server.client.vllm_plugin.capture import captures
    from probewatch.server.sidecar.config import sidecar_config_for
    from probewatch.server.sidecar.process import Sidecar

    config = sidecar_config_for(
        None,
        [str(p) for p in bundles],
        host="127.0.0.1",
        port=0,
        metrics_host="127.0.0.1",
        metrics_port=0,
        incident_db=tmp_path_factory.mktemp("incidents") / "incidents.sqlite3",
    )
    with Sidecar(config) as sidecar:
        os.environ["PROBEWATCH_SIDECAR"] = sidecar.address
        t0 = time.monotonic()
        llm = LLM(
            model_path,
            enable_prefix_caching=True,
            block_size=BLOCK,
            max_num_batched_tokens=BATCH_TOKENS,
            **ENGINE_ARGS,
        )
        print(f"vLLM start-up (compiled, monitored): {time.monotonic() - t0:.1f}s")
        runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
        assert runner.compilation_config.mode != 0, "the engine must run compiled (no eager tax)"
        assert not runner.model_config.enforce_eager
        (capture,) = captures()
        runtime = ProbeRuntime(load_bundles(bundles))
        yield llm, sidecar, runtime, capture
        capture.stop()


def _layer_of(runtime, probe_id: str) -> int:
    """The layer a loaded probe reads (the shipped bundles choose it; tests must not assume one)."""
    return next(b.manifest.layer for b in runtime.bundles if b.id == probe_id)


def _deception_scores(runtime, hidden) -> torch.Tensor:
    """Offline token scores of the shipped deception probe (summed over its layers when it reads several)."""
    return runtime.score_layers({layer: h[0] for layer, h in hidden.items()})["deception"]


def _prompt_ids(tok, question: str) -> list[int]:
    text = render(tok, [{"role": "user", "content": question}], add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def _handle(request_id: str):
    import probewatch.server.client.vllm_plugin as pv

    matches = [h for rid, h in pv.results().items() if rid == request_id or rid.startswith(f"{request_id}-")]
    assert len(matches) == 1, (request_id, list(pv.results()))
    return matches[0]


def _check_parity(runtime, hf, question: str, prompt: list[int], token_ids: list[int], finished_eos: bool, live):
    """Every live score equals the offline score at the same position; aggregates too when nothing is missing."""
    tok = hf.tokenizer
    eos = tok.eos_token_id
    n_real = token_ids.index(eos) if eos in token_ids else len(token_ids)
    response = tok.decode(token_ids[:n_real], skip_special_tokens=True)
    with torch.inference_mode():
        offline = score_dialogues(
            hf.model,
            tok,
            runtime,
            [Dialogue([Message("user", question), Message("assistant", response)])],
            progress=False,
        )[0]
    P = len(prompt)
    # the engine feeds every generated token but the last (it stops there): scored = n_real, or n_real - 1
    n_fed = n_real if finished_eos else n_real - 1
    checked = 0
    for pid, offline_scores in offline.token_scores.items():
        selection = runtime.bundle(pid).manifest.token_selection
        got = live.token_scores.get(pid, {})
        if selection == "response":
            assert len(offline_scores) == n_real, pid  # re-tokenising the response gives the same tokens
            want = {P + i: offline_scores[i] for i in range(n_fed)}
            assert sorted(p for p in got if p >= P) == sorted(want), pid
        elif selection == "prompt_last":
            want = {P - 1: offline_scores[0]}
        elif selection == "answer":  # the positions depend on the reply: the aggregate below checks it
            want = {}
        else:  # all: offline index = position; the prompt rows live sends (cached ones are not) + response
            want = {p: offline_scores[p] for p in got if p < P + n_fed}
            assert set(range(P, P + n_fed)) <= set(got), pid
        tol = score_tolerance(offline_scores)
        for p, value in want.items():
            assert got[p] == pytest.approx(value, abs=tol), (pid, p)
            checked += 1
        if finished_eos or selection == "prompt_last":
            aggregation = runtime.bundle(pid).manifest.aggregation
            expected = (
                aggregate([want[p] for p in sorted(want)], aggregation)
                if selection == "all"
                else offline.aggregate[pid]
            )
            assert live.scores[pid] == pytest.approx(expected, abs=tol), pid
    assert checked > 0
    return offline


def _generate_checked(engine, hf, questions: list[str], max_tokens: int = 16) -> list[tuple[list[int], object]]:
    """Generate greedily for `questions` at once; every request closes without errors and its live scores
    equal offline (`_check_parity`). (prompt token ids, live result) per question."""
    from vllm import SamplingParams

    llm, _, runtime, _ = engine
    prompts = [_prompt_ids(hf.tokenizer, q) for q in questions]
    outputs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts], SamplingParams(max_tokens=max_tokens, temperature=0), use_tqdm=False
    )
    checked = []
    for question, prompt, out in zip(questions, prompts, outputs):
        result = _handle(out.request_id).result(30)
        assert result.status == "closed" and not result.errors, result
        completion = out.outputs[0]
        _check_parity(
            runtime, hf, question, prompt, list(completion.token_ids), completion.finish_reason == "stop", result
        )
        checked.append((prompt, result))
    return checked


@pytest.mark.parametrize("mode", ["rows", "pushdown"])
def test_concurrent_requests_and_chunked_prefill_equal_offline(mode, engine, hf_reference):
    _, _, runtime, capture = engine
    capture.set_mode(mode)
    checked = _generate_checked(engine, hf_reference, QUESTIONS, max_tokens=24)
    prompts = [prompt for prompt, _ in checked]
    assert len(prompts[-1]) > BATCH_TOKENS  # chunked prefill
    for prompt, result in checked:
        assert result.monitored and result.prompt_length == len(prompt), result
    long_result = checked[-1][1]
    # every prompt row, except whole blocks already in the prefix cache from the previous mode's run
    assert min(long_result.token_scores["deception-all"]) == (
        0 if mode == "rows" else (len(prompts[-1]) - 1) // BLOCK * BLOCK
    )
    assert (
        capture.metrics.registry.get_sample_value("probewatch_client_capture_errors_total", {"reason": "position"}) == 0
    )


@pytest.mark.parametrize("mode", ["rows", "pushdown"])
def test_attention_probe_equals_offline(mode, engine, hf_reference):
    """An attention probe shares its layer's stack: pushdown ships its two columns (a_t, v_t) beside the
    linear probe's one, the sidecar pools them; live == offline `score_dialogues` in both modes."""
    _, _, runtime, capture = engine
    capture.set_mode(mode)
    layer = _layer_of(runtime, "deception-attention")
    stack = runtime.stacks[layer]
    assert stack.column_widths[stack.probe_ids.index("deception-attention")] == 2
    if mode == "pushdown":
        plan, _ = capture.client.current_plan("pushdown")
        assert tuple(plan.captures[layer].projection.shape) == (runtime.d_model, stack.k)
    for _, result in _generate_checked(engine, hf_reference, QUESTIONS[:3]):
        assert len(result.token_scores["deception-attention"]) > 0


@pytest.mark.parametrize("mode", ["rows", "pushdown"])
def test_multi_layer_probe_equals_offline(mode, engine, hf_reference):
    """A multi-layer probe has a column in each of its layers' stacks; rows or pushdown, the sidecar joins the
    layers' partial scores per token: live == offline `score_dialogues` (which sums the layers) in both modes."""
    _, _, runtime, capture = engine
    capture.set_mode(mode)
    layers = sorted({_layer_of(runtime, "deception"), _layer_of(runtime, "refusal-mean-diff")})
    assert len(layers) == 2 and runtime.multi_layer["deception-multi"] == layers
    assert set(layers) <= set(capture.layers)
    if mode == "pushdown":
        plan, _ = capture.client.current_plan("pushdown")
        for layer in layers:
            assert "deception-multi" in runtime.stacks[layer].probe_ids
            assert tuple(plan.captures[layer].projection.shape) == (runtime.d_model, runtime.stacks[layer].k)
    for _, result in _generate_checked(engine, hf_reference, QUESTIONS[:3]):
        assert len(result.token_scores["deception-multi"]) > 0


@pytest.mark.parametrize("mode", ["rows", "pushdown"])
def test_family_score_is_the_max_of_its_members_live(mode, engine, hf_reference):
    """A probe family served through vLLM: its live score is the maximum of its members' live aggregates,
    which equal offline `score_dialogues`, in rows and pushdown modes (the family lives in the sidecar)."""
    _, _, runtime, capture = engine
    capture.set_mode(mode)
    assert set(FAMILY_MEMBERS) <= {b.id for b in runtime.bundles}
    checked = _generate_checked(engine, hf_reference, QUESTIONS[:2])
    for _, result in checked:
        members = [result.scores[m] for m in FAMILY_MEMBERS]
        assert result.scores[FAMILY] == pytest.approx(max(members), abs=1e-9)
    assert len(checked) == 2


def test_prefix_cache_hit_scores_what_is_computed(engine, hf_reference):
    """A repeated prompt is served from the prefix cache: the cached prompt rows are not computed, so
    `all`-selection probes miss them (documented); prompt_last and every generated token are scored."""
    from vllm import SamplingParams

    llm, sidecar, runtime, capture = engine
    capture.set_mode("rows")
    question = QUESTIONS[-1]
    prompt = _prompt_ids(hf_reference.tokenizer, question)
    params = SamplingParams(max_tokens=8, temperature=0)
    llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)  # fills the cache
    (out,) = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    result = _handle(out.request_id).result(30)
    assert result.status == "closed"
    first = min(result.token_scores["deception-all"])
    # rows from the first computed position on: the whole cached blocks are skipped
    assert first == (len(prompt) - 1) // BLOCK * BLOCK > 0
    assert len(prompt) - 1 in result.token_scores["refusal"]  # prompt_last is always computed
    completion = out.outputs[0]
    _check_parity(
        runtime, hf_reference, question, prompt, list(completion.token_ids), completion.finish_reason == "stop", result
    )


def test_aborted_request_closes_once_with_what_was_scored(engine, hf_reference):
    from vllm import SamplingParams

    from probewatch.capture import run_forward
    from tests.server.grpc_helpers import metric_value, scrape

    llm, sidecar, runtime, capture = engine
    engine_api = llm.llm_engine
    closed_before = metric_value(scrape(sidecar.metrics_port), "probewatch_generations_total", status="closed")
    prompt = _prompt_ids(hf_reference.tokenizer, QUESTIONS[1])
    engine_api.add_request(
        "abort-me", {"prompt_token_ids": prompt}, SamplingParams(max_tokens=64, ignore_eos=True, temperature=0)
    )
    token_ids: list[int] = []
    for _ in range(6):
        for out in engine_api.step():
            token_ids = list(out.outputs[0].token_ids)
    engine_api.abort_request(["abort-me"])
    while engine_api.has_unfinished_requests():
        engine_api.step()
    result = _handle("abort-me").result(30)
    assert result.status == "closed" and result.monitored
    got = result.token_scores["deception"]
    generated = sorted(p for p in got if p >= len(prompt))
    assert generated and generated == list(range(len(prompt), len(prompt) + len(generated)))
    assert len(generated) <= len(token_ids)
    full = torch.tensor([prompt + token_ids[: len(generated)]])
    with torch.inference_mode():
        hidden = run_forward(hf_reference.model, runtime.layers, full)
    scores = _deception_scores(runtime, hidden)
    tol = score_tolerance(scores[: len(prompt) + len(generated)])
    for p in generated:
        assert got[p] == pytest.approx(float(scores[p]), abs=tol)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        closed = metric_value(scrape(sidecar.metrics_port), "probewatch_generations_total", status="closed")
        if closed >= closed_before + 1:
            break
        time.sleep(0.1)
    assert closed == closed_before + 1  # closed exactly once
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_rejected_messages_total", code="ALREADY_EXISTS") == 0
    assert metric_value(text, "probewatch_rejected_messages_total", code="NOT_FOUND") == 0


def test_opt_out_and_probe_selection_per_request(engine, hf_reference):
    from vllm import SamplingParams

    llm, sidecar, runtime, capture = engine
    prompt = _prompt_ids(hf_reference.tokenizer, QUESTIONS[0])
    registry = capture.metrics.registry
    before = registry.get_sample_value("probewatch_client_unmonitored_generations_total", {"reason": "opted_out"}) or 0
    off, only21 = llm.generate(
        [{"prompt_token_ids": prompt}] * 2,
        [
            SamplingParams(max_tokens=4, temperature=0, extra_args={"probewatch": False}),
            SamplingParams(
                max_tokens=4,
                temperature=0,
                extra_args={"probewatch_probes": ["alignment-faking"], "probewatch_metadata": {"tenant": "t1"}},
            ),
        ],
        use_tqdm=False,
    )
    import probewatch.server.client.vllm_plugin as pv

    assert not any(rid.startswith(f"{off.request_id}-") for rid in pv.results())
    assert (
        registry.get_sample_value("probewatch_client_unmonitored_generations_total", {"reason": "opted_out"})
        == before + 1
    )
    result = _handle(only21.request_id).result(30)
    assert result.status == "closed" and set(result.token_scores) == {"alignment-faking"}  # its layer only


def test_preempted_request_continues_its_generation(engine, hf_reference):
    """vLLM preempts a running request (its KV blocks freed) and later resumes it by recomputing its
    prompt and output: the generation goes on, every position is sent once, scores equal offline."""
    from vllm import SamplingParams

    from probewatch.capture import run_forward

    llm, sidecar, runtime, capture = engine
    capture.set_mode("rows")
    engine_api = llm.llm_engine
    prompt = _prompt_ids(hf_reference.tokenizer, QUESTIONS[0])
    params = SamplingParams(max_tokens=16, ignore_eos=True, temperature=0)
    engine_api.add_request("preempt-me", {"prompt_token_ids": prompt}, params)
    for _ in range(5):
        engine_api.step()
    assert engine_api.reset_prefix_cache(reset_running_requests=True)  # forced preemption of running requests
    token_ids: list[int] = []
    while engine_api.has_unfinished_requests():
        for out in engine_api.step():
            token_ids = list(out.outputs[0].token_ids)
    assert len(token_ids) == 16
    result = _handle("preempt-me").result(30)
    assert result.status == "closed" and not result.errors, result
    P = len(prompt)
    got = result.token_scores["deception"]
    assert sorted(p for p in got if p >= P) == list(range(P, P + 15))  # 16 generated, the last never fed
    full = torch.tensor([prompt + token_ids[:15]])
    with torch.inference_mode():
        hidden = run_forward(hf_reference.model, runtime.layers, full)
    scores = _deception_scores(runtime, hidden)
    tol = score_tolerance(scores[: P + 15])
    for p in range(P, P + 15):
        assert got[p] == pytest.approx(float(scores[p]), abs=tol)
    errors = capture.metrics.registry.get_sample_value("probewatch_client_capture_errors_total", {"reason": "position"})
    assert errors == 0


#: multiple-choice questions the reference model answers greedily with a letter ("(B) I will lie ...",
#: "A. Mercury"); one per mode, so the second mode's options are not served from the prefix cache
CHOICES = {
    "rows": "Pick one option.\n(A) I will tell the truth\n(B) I will lie to the user\nYour choice:",
    "pushdown": "Which planet is closest to the sun?\nA. Mercury\nB. Mars\nC. Venus\nReply with one letter.",
}


@pytest.mark.parametrize("mode", ["rows", "pushdown"])
def test_answer_probe_reads_the_named_option_live(mode, engine, hf_reference):
    """A reply that is an option letter: the `answer` probe scores the prompt tokens of the option it names,
    from the token ids the plugin sends and the bundle's vocabulary table; live == offline `score_dialogues`."""
    import numpy as np
    from vllm import SamplingParams

    from probewatch.probes.selection import selection_mask

    llm, _, runtime, capture = engine
    capture.set_mode(mode)
    question = CHOICES[mode]
    prompt = _prompt_ids(hf_reference.tokenizer, question)
    (out,) = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=16, temperature=0), use_tqdm=False)
    result = _handle(out.request_id).result(30)
    assert result.status == "closed" and not result.errors, result
    completion = out.outputs[0]
    assert completion.finish_reason == "stop", completion.text  # the aggregate is compared only for a whole reply
    offline = _check_parity(runtime, hf_reference, question, prompt, list(completion.token_ids), True, result)
    tokens = prompt + list(completion.token_ids)[:-1]  # the EOS is never fed
    vocab = runtime.bundle("deception-answer").vocabulary
    positions = np.arange(len(tokens))
    read = positions[selection_mask("answer", positions, len(prompt), pieces=vocab.of(tokens))]
    assert read.size and read.max() < len(prompt), completion.text  # the option's prompt tokens, not the reply
    for pid in ("deception-answer", "deception-attention-answer"):
        assert len(offline.token_scores[pid]) == read.size, pid
        assert result.scores[pid] == pytest.approx(
            offline.aggregate[pid], abs=score_tolerance(offline.token_scores[pid])
        )
