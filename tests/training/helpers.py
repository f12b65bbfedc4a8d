"""Tiny models, tokenizers and synthetic dialogue data for fast training tests."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from probewatch.data.dialogue import Dialogue, Message, write_dialogues


def save_tiny_model(folder: Path, seed: int = 0, layout: str = "llama", tokenizer: str = "words") -> Path:
    """A random-init 4-layer model (d=64; llama, qwen2, gemma3, ...) + a tokenizer in an HF folder: word-level
    over t0..t249 (`words`), or one token per character of printable ASCII and newline (`chars`: it spells
    any plain text, e.g. a multiple-choice question, and each id decodes alone to its character)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import make_tiny_model

    folder.mkdir(parents=True, exist_ok=True)
    make_tiny_model(layout, seed=seed).save_pretrained(folder)
    if tokenizer == "chars":
        chars = [chr(c) for c in range(32, 127)] + ["\n"]
        vocab = {ch: i for i, ch in enumerate(chars)} | {"<unk>": len(chars), "<pad>": len(chars) + 1}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
    else:
        vocab = {f"t{i}": i for i in range(250)} | {"<unk>": 250, "<pad>": 251}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>").save_pretrained(folder)
    return folder


def choice_dialogues(n_groups: int = 12, seed: int = 0) -> list[Dialogue]:
    """Multiple-choice items whose letter carries the label (kinds `ca`, `cb`: two question wordings), and
    free replies that carry it in their own words (kind `cf`). An option is a few words of a-h (label 0) or
    of p-w (label 1); per group both option orders x both answers, so each letter is equally often 0 and 1
    and only the option the letter names tells the labels apart."""
    rng = random.Random(seed)

    def words(label: int) -> str:
        alphabet = "pqrstuvw" if label else "abcdefgh"
        return " ".join("".join(rng.choice(alphabet) for _ in range(3)) for _ in range(2))

    out: list[Dialogue] = []
    for g in range(n_groups):
        kind = ("ca", "cb", "cf")[g % 3]
        if kind == "cf":
            for label in (0, 1):
                messages = [Message("user", f"Say it {g}."), Message("assistant", words(label))]
                out.append(Dialogue(messages, label, f"{kind}:{g}", kind))
            continue
        question = f"Q{g}: which?" if kind == "ca" else f"Item {g}. Pick one:"
        honest, lying = words(0), words(1)
        for lying_first in (True, False):
            a, b = (lying, honest) if lying_first else (honest, lying)
            prompt = f"{question}\n(A) {a}\n(B) {b}\nAnswer:"
            for letter in ("A", "B"):
                label = int((letter == "A") == lying_first)
                out.append(
                    Dialogue([Message("user", prompt), Message("assistant", f"({letter})")], label, f"{kind}:{g}", kind)
                )
    return out


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
