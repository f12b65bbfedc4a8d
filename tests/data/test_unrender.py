"""Messages back from a rendered prompt (what `incidents export --labelled` relies on)."""

from __future__ import annotations

import copy

import pytest

from probewatch.data.chat import render
from probewatch.data.unrender import messages_from_prompt

pytestmark = pytest.mark.integration

CONVERSATIONS = [
    [{"role": "user", "content": "Is the refund policy 30 days?"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi\nthere"}],
    [
        {"role": "system", "content": "You sell cars."},
        {"role": "user", "content": "Any accidents?"},
        {"role": "assistant", "content": "None at all.\n\nIt is spotless."},
        {"role": "user", "content": "Sure?"},
    ],
]


@pytest.fixture(scope="module")
def tokenizers(reference):
    plain = copy.deepcopy(reference.tokenizer)
    plain.chat_template = None  # probewatch's fallback 'role: content' template
    return {"chatml": reference.tokenizer, "fallback": plain}


@pytest.mark.parametrize("template", ["chatml", "fallback"])
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_round_trip_through_the_decoded_prompt(tokenizers, template, conversation):
    tok = tokenizers[template]
    messages = CONVERSATIONS[conversation]
    text = render(tok, messages, add_generation_prompt=True)
    decoded = tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=False)
    recovered = messages_from_prompt(tok, decoded)
    assert recovered is not None
    # the recovered messages render to exactly the prompt the probe saw
    assert render(tok, recovered, add_generation_prompt=True) == decoded
    # (SmolLM2's template adds a default system prompt when there is none: the shorter reading wins)
    assert recovered == messages


def test_unreproducible_prompts_give_none(tokenizers):
    tok = tokenizers["chatml"]
    assert messages_from_prompt(tok, "plain text, no template") is None
    rendered = render(tok, CONVERSATIONS[0], add_generation_prompt=True)
    assert messages_from_prompt(tok, rendered.replace("<|im_start|>assistant\n", "")) is None
