"""Chat messages back from a rendered prompt: the inverse of `probewatch.data.chat.render`.

The sidecar stores what the attach client saw: the prompt as the chat template rendered it
(special tokens included) and the response. Reviewed incidents go back into training as dialogue
JSONL, which needs the messages. Rather than knowing any template, we render candidate
conversations whose contents are unique sentinels with the model's own template, turn each into
a regular expression (the template's text literal, each sentinel a lazy group) and match the
stored prompt against it. The first candidate that matches, has no message holding one of the
template's turn separators, and renders back to exactly the stored prompt wins. Candidates: an
optional system message, then alternating user/assistant turns ending with a user turn, up to
`max_turns`. A prompt that no candidate reproduces exactly gives None: exporting a dialogue that
does not render to the tokens the probe saw would teach the probe something else.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from probewatch.data.chat import render

_SENTINEL = "\ue000{}\ue001"


def _candidates(max_turns: int):
    for n_user in range(1, max_turns + 1):
        roles = []
        for i in range(n_user):
            roles.append("user")
            if i < n_user - 1:
                roles.append("assistant")
        yield roles
        yield ["system", *roles]


@functools.lru_cache(maxsize=256)
def _pattern(tokenizer: Any, roles: tuple[str, ...]) -> tuple[re.Pattern[str], tuple[str, ...]] | None:
    """(regex of the rendered skeleton, the literal separators between messages), or None."""
    skeleton = [{"role": r, "content": _SENTINEL.format(i)} for i, r in enumerate(roles)]
    try:
        text = render(tokenizer, skeleton, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template may refuse a role order (e.g. no system role)
        return None
    parts = re.split("\ue000\\d+\ue001", text)
    if len(parts) != len(roles) + 1:  # a template that drops or repeats a message
        return None
    separators = tuple(p for p in parts[1:-1] if p.strip())
    return re.compile("(.*?)".join(re.escape(p) for p in parts), re.DOTALL), separators


def messages_from_prompt(tokenizer: Any, prompt_text: str, max_turns: int = 32) -> list[dict[str, str]] | None:
    """The messages that render (with the generation prompt) to exactly `prompt_text`, or None."""
    for roles in _candidates(max_turns):
        compiled = _pattern(tokenizer, tuple(roles))
        if compiled is None:
            continue
        pattern, separators = compiled
        match = pattern.fullmatch(prompt_text)
        if match is None:
            continue
        if any(sep in content for content in match.groups() for sep in separators):
            continue  # a lazy group swallowed whole turns: a longer candidate splits them
        messages = [{"role": r, "content": c} for r, c in zip(roles, match.groups())]
        if render(tokenizer, messages, add_generation_prompt=True) == prompt_text:
            return messages
    return None
