"""Tiny models, tokenizers and synthetic dialogue data for fast training tests."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from probewatch.data.dialogue import Dialogue, Message, write_dialogues


def save_tiny_model(folder: Path, seed: int = 0, layout: str = "llama") -> Path:
    """A random-init 4-layer model (d=64; llama, qwen2, gemma3, ...) + a word-level tokenizer over
    t0..t249 in an HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import make_tiny_model

    folder.mkdir(parents=True, exist_ok=True)
    make_tiny_model(layout, seed=seed).save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(250)} | {"<unk>": 250, "<pad>": 251}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>").save_pretrained(folder)
    return folder


def synthetic_dialogues(
    n_groups: int = 24, kinds: tuple[str, ...] = ("ka", "kb", "kc"), seed: int = 0, with_response: bool = True
) -> list[Dialogue]:
    """Paired dialogues: label-1 responses use words t100..t149, label-0 responses t150..t199.

    Each group holds one pair with the same prompt; kinds differ in their prompt vocabulary, so a
    probe must read the response to transfer across kinds.
    """
    rng = random.Random(seed)
    out: list[Dialogue] = []
    for g in range(n_groups):
        kind = kinds[g % len(kinds)]
        base = 10 + 20 * kinds.index(kind)
        prompt = " ".join(f"t{rng.randrange(base, base + 20)}" for _ in range(rng.randint(3, 8)))
        for label in (0, 1):
            lo = 100 if label else 150
            if with_response:
                answer = " ".join(f"t{rng.randrange(lo, lo + 50)}" for _ in range(rng.randint(2, 7)))
                messages = [Message("user", prompt), Message("assistant", answer)]
            else:
                messages = [
                    Message("user", prompt + " " + " ".join(f"t{rng.randrange(lo, lo + 50)}" for _ in range(3)))
                ]
            out.append(Dialogue(messages, label, f"{kind}:{g}", kind))
    return out


def control_dialogues(n: int = 30, seed: int = 1) -> list[Dialogue]:
    rng = random.Random(seed)
    return [
        Dialogue(
            [
                Message("user", " ".join(f"t{rng.randrange(200, 240)}" for _ in range(4))),
                Message("assistant", " ".join(f"t{rng.randrange(150, 200)}" for _ in range(rng.randint(2, 6)))),
            ],
            0,
            f"control:{i}",
            "control",
        )
        for i in range(n)
    ]


def write_synthetic(folder: Path, control_set: list[Dialogue] | None = None, **kwargs) -> tuple[Path, Path]:
    """(data.jsonl, control.jsonl) in folder: `synthetic_dialogues(**kwargs)` and `control_set` (default
    `control_dialogues()`)."""
    data, control = folder / "data.jsonl", folder / "control.jsonl"
    write_dialogues(data, synthetic_dialogues(**kwargs))
    write_dialogues(control, control_dialogues() if control_set is None else control_set)
    return data, control


def write_two_sources(
    folder: Path, public: Callable[[list[Dialogue]], list[Dialogue]] | None = None
) -> tuple[Path, Path, Path]:
    """(written.jsonl, public.jsonl, control.jsonl) in folder: two data files, so two sources of two kinds each
    (ka, kb; kc, kd), the second passed through `public` where given."""
    a, b, control = folder / "written.jsonl", folder / "public.jsonl", folder / "control.jsonl"
    other = synthetic_dialogues(n_groups=20, kinds=("kc", "kd"), seed=1)
    write_dialogues(a, synthetic_dialogues(n_groups=20, kinds=("ka", "kb"), seed=0))
    write_dialogues(b, public(other) if public else other)
    write_dialogues(control, control_dialogues())
    return a, b, control
