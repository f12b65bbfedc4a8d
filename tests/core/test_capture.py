"""Residual capture parity: hooks == output_hidden_states (fp32, atol 1e-5).

Batch forward and generate (prefill + every decode step), for tiny random-init models of each
supported module layout and for the reference model.
"""

from __future__ import annotations

import pytest
import torch

from probewatch.capture import ResidualCapture, find_decoder_layers, hook_name, run_forward
from tests.conftest import make_tiny_model

pytestmark = pytest.mark.compat

LAYOUTS = ["llama", "qwen2", "gemma3", "gpt2"]
ATOL = 1e-5


def _batch(vocab: int = 256, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    mask[2, 5:] = 0
    return ids, mask


def _assert_parity_forward(model, layers: list[int]) -> None:
    ids, mask = _batch(model.config.vocab_size)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        with ResidualCapture(model, layers) as cap:
            model(input_ids=ids, attention_mask=mask)
    for layer in layers:
        got = cap.stacked(layer)
        real = mask.bool()
        assert got.shape == reference[layer + 1].shape
        assert torch.allclose(got[real], reference[layer + 1][real], atol=ATOL, rtol=0)


def _assert_parity_generate(model, layers: list[int], new_tokens: int = 6) -> None:
    ids, _ = _batch(model.config.vocab_size, seed=2)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding, as generate expects
    with torch.no_grad(), ResidualCapture(model, layers) as cap:
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            output_hidden_states=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    steps = out.hidden_states  # per step: tuple over layers
    assert len(steps) == new_tokens
    starts = [b.start for b in cap.blocks if b.layer == layers[0]]
    assert starts == [0] + list(range(ids.shape[1], ids.shape[1] + new_tokens - 1))
    for layer in layers:
        expected = torch.cat([step[layer + 1] for step in steps], dim=1)
        got = cap.stacked(layer)
        assert (
            got.shape
            == expected.shape
            == (
                3,
                ids.shape[1] + new_tokens - 1,
                model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd,
            )
        )
        assert torch.allclose(got[:, 4:], expected[:, 4:], atol=ATOL, rtol=0)
    # the attention-mask slice travels with each block (decode steps are all real tokens)
    prefill = next(b for b in cap.blocks if b.start == 0)
    assert prefill.attention_mask.tolist() == mask.tolist()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_capture_matches_hidden_states_on_batch_forward(layout):
    model = make_tiny_model(layout)
    _assert_parity_forward(model, [0, 1, 2])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_capture_matches_hidden_states_during_generate(layout):
    model = make_tiny_model(layout)
    _assert_parity_generate(model, [0, 2])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hooks_are_removed_and_free_when_off(layout):
    model = make_tiny_model(layout)
    layers = find_decoder_layers(model)
    before = [len(layer._forward_hooks) for layer in layers] + [len(model._forward_pre_hooks)]
    cap = ResidualCapture(model, [0, -1])
    with cap:
        assert cap.active
        assert sum(len(layer._forward_hooks) for layer in layers) == sum(before[:-1]) + 2
    assert not cap.active
    assert [len(layer._forward_hooks) for layer in layers] + [len(model._forward_pre_hooks)] == before
    # an exception inside the block still removes the hooks
    with pytest.raises(RuntimeError), ResidualCapture(model, [1]):
        raise RuntimeError("boom")
    assert [len(layer._forward_hooks) for layer in layers] + [len(model._forward_pre_hooks)] == before


def test_run_forward_selects_rows_and_stops_early(tiny_llama):
    ids, mask = _batch()
    with torch.no_grad():
        full = tiny_llama(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    row_mask = mask.bool().clone()
    row_mask[:, 0] = False
    out = run_forward(tiny_llama, [1], ids, mask, row_mask=row_mask)
    assert out[1].shape == (int(row_mask.sum()), 64)
    assert torch.allclose(out[1], full[2][row_mask], atol=ATOL, rtol=0)


def test_last_layer_is_pre_final_norm(tiny_llama):
    """Contract: the last layer's residual is taken before the final norm (HF's last hidden state is post-norm)."""
    ids, mask = _batch()
    seen = {}
    handle = tiny_llama.model.norm.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].detach()))
    try:
        with torch.no_grad(), ResidualCapture(tiny_llama, [-1]) as cap:
            final = tiny_llama(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    finally:
        handle.remove()
    n = len(find_decoder_layers(tiny_llama))
    assert torch.equal(cap.stacked(n - 1), seen["x"])
    assert not torch.allclose(cap.stacked(n - 1), final, atol=1e-3)


def test_bad_layer_index_is_rejected(tiny_llama):
    with pytest.raises(ValueError, match="out of range"):
        ResidualCapture(tiny_llama, [4])


def test_hook_names_follow_the_dotted_contract():
    assert [hook_name(i) for i in (0, 9, 29)] == [
        "blocks.0.hook_resid_post",
        "blocks.9.hook_resid_post",
        "blocks.29.hook_resid_post",
    ]


def test_transform_runs_on_device_before_the_sink(tiny_llama):
    """Projection pushdown: the sink receives k floats per token instead of d."""
    proj = torch.randn(64, 3)
    received = []
    ids, mask = _batch()
    with torch.no_grad():
        full = tiny_llama(input_ids=ids, output_hidden_states=True).hidden_states
        with ResidualCapture(tiny_llama, [2], sink=received.append, keep=False, transform=lambda layer, h: h @ proj):
            tiny_llama(input_ids=ids)
    assert len(received) == 1 and received[0].hidden.shape == (3, 12, 3)
    assert torch.allclose(received[0].hidden, full[3] @ proj, atol=1e-4)


@pytest.mark.integration
def test_reference_model_capture_parity(reference):
    model = reference.model
    n = len(find_decoder_layers(model))
    assert n == 30 and reference.d_model == 576
    _assert_parity_forward(model, [0, 9, 15, 28])
    _assert_parity_generate(model, [9, 28], new_tokens=4)


class _OpaqueCache:
    """A cache object that reveals nothing about its length (a future transformers, say)."""


def test_forward_start_reads_what_each_transformers_provides():
    from transformers import DynamicCache

    from probewatch.capture import forward_start

    assert forward_start({}) == 0  # no cache: a fresh sequence
    assert forward_start({"cache_position": torch.arange(5, 9)}) == 5  # 5.19-5.23
    cache = DynamicCache()
    k = torch.zeros(1, 2, 7, 4)
    cache.update(k, k, 0)
    assert forward_start({"cache": cache}) == 7  # 5.24: only the cache object
    assert forward_start({"past_key_values": cache}) == 7  # before 5.24
    legacy = ((torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4)),)
    assert forward_start({"past_key_values": legacy}) == 3  # the legacy tuple format
    assert forward_start({"cache": _OpaqueCache()}, counted=11) == 11  # opaque: counted forwards


def test_capture_counts_forwards_when_the_cache_is_opaque(monkeypatch):
    """With a cache that reveals neither cache_position nor its length, positions come from
    counting the tokens fed since the sequence began."""
    import probewatch.capture as capture_mod

    model = make_tiny_model("llama")
    monkeypatch.setattr(capture_mod, "cache_length", lambda cache: None)
    ids, _ = _batch(model.config.vocab_size, seed=2)
    with torch.no_grad(), ResidualCapture(model, [1]) as cap:
        model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert [b.start for b in cap.blocks] == [0, 12, 13, 14]
