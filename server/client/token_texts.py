"""The text of each token of a generation, sent on Close so a reviewer's heatmap shows words.

Decoded in the sender thread (never on the serving thread) and only for the positions a heatmap can
show: the whole prompt and the response, at most MAX_TOKEN_TEXTS positions (the last ones). Each
token is decoded alone in one batch call (fast tokenizers decode a batch in Rust); a character whose
bytes span several tokens (a byte-level BPE splitting `é` or an emoji) decodes to U+FFFD alone, so
such a run is decoded together and its text goes to the run's last token ("" before it), as the
review app's own fallback does. Special tokens are kept (a heatmap shows `<|im_end|>` where it was).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

#: at most this many positions' texts per generation (the last ones: the response and the prompt's tail)
MAX_TOKEN_TEXTS = 16384
_MAX_SPLIT = 4  # a UTF-8 character has at most 4 bytes, so at most 4 byte tokens


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """One text per token id; joined they read as `tokenizer.decode(ids)` (up to a tokenizer's spacing)."""
    ids = [int(i) for i in ids]
    if not ids:
        return []
    kw = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    out = [str(t) for t in tokenizer.batch_decode([[i] for i in ids], **kw)]
    i = 0
    while i < len(out):
        if not out[i].endswith("\ufffd"):
            i += 1
            continue
        for k in range(i + 2, min(len(ids), i + _MAX_SPLIT) + 1):
            text = str(tokenizer.decode(ids[i:k], **kw))
            if not text.endswith("\ufffd"):
                out[i : k - 1] = [""] * (k - 1 - i)
                out[k - 1] = text
                i = k
                break
        else:
            i += 1  # a lone U+FFFD: the token's bytes are not text on their own
    return out


def texts_from(
    tokenizer: Any, prompt_ids: Sequence[int], output_ids: Sequence[int]
) -> Callable[[], tuple[int, list[str]]]:
    """A lazy `(start position, texts)` for Close: run by the sender thread; ("", none) on any failure."""
    prompt, output = [int(i) for i in prompt_ids], [int(i) for i in output_ids]

    def texts() -> tuple[int, list[str]]:
        ids = prompt + output
        start = max(0, len(ids) - MAX_TOKEN_TEXTS)
        try:
            return start, token_pieces(tokenizer, ids[start:])
        except Exception:
            log.debug("probewatch: could not decode token texts", exc_info=True)
            return 0, []

    return texts
