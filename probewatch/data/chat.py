"""Apply a model's chat template and find the scored region of a dialogue.

Scored region (docs/architecture.md, "Dialogue JSONL"): the tokens of the last assistant message when the dialogue
ends with one (its content only: not the role header, not the end-of-turn token); otherwise the
generation-prompt position, i.e. the last token of the prompt rendered with
`add_generation_prompt=True`, which is where the model decides what to say (the refusal
direction lives there).

Character offsets from the fast tokenizer map the assistant content's character span onto
tokens, so the result does not depend on how a template spaces or wraps turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from probewatch.data.dialogue import Dialogue

FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass
class EncodedDialogue:
    input_ids: list[int]
    scored: list[bool]  # same length as input_ids
    text: str
    prompt_last: int  # index of the generation-prompt position (last token before the response)

    @property
    def n_scored(self) -> int:
        return sum(self.scored)


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """The chat-template text (a plain 'role: content' template when the tokenizer has none)."""
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_TEMPLATE
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template
    )


def _token_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def encode_dialogue(tokenizer: Any, dialogue: Dialogue | Sequence[dict[str, str]]) -> EncodedDialogue:
    """Token ids of the rendered dialogue and the boolean scored-region mask."""
    messages = dialogue.as_chat() if isinstance(dialogue, Dialogue) else [dict(m) for m in dialogue]
    if messages[-1]["role"] != "assistant":
        text = render(tokenizer, messages, add_generation_prompt=True)
        ids, _ = _token_offsets(tokenizer, text)
        scored = [False] * len(ids)
        scored[-1] = True
        return EncodedDialogue(ids, scored, text, len(ids) - 1)

    content = messages[-1]["content"]
    text = render(tokenizer, messages, add_generation_prompt=False)
    if len(messages) > 1:
        prefix = render(tokenizer, messages[:-1], add_generation_prompt=True)
        start = len(prefix) if text.startswith(prefix) else text.rfind(content)
        start = text.find(content, start) if content else start
    else:
        # a bare assistant transcript: templates refuse an empty prompt, so locate it in the whole text
        start = text.rfind(content) if content else -1
    if start < 0:
        raise ValueError("cannot locate the last assistant message in the rendered chat template")
    end = start + len(content)
    ids, offsets = _token_offsets(tokenizer, text)
    scored = [(a < end and b > start and b > a) for a, b in offsets]
    if not any(scored):
        raise ValueError("the last assistant message renders to no tokens (empty content?)")
    return EncodedDialogue(ids, scored, text, max(scored.index(True) - 1, 0))


def pad_batch(
    encoded: Sequence[EncodedDialogue], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, scored_mask) tensors of shape [batch, max_len]."""
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(encoded), width), dtype=torch.long)
    scored = torch.zeros((len(encoded), width), dtype=torch.bool)
    for i, e in enumerate(encoded):
        n = len(e.input_ids)
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        ids[i, sl] = torch.tensor(e.input_ids)
        attn[i, sl] = 1
        scored[i, sl] = torch.tensor(e.scored)
    return ids, attn, scored
