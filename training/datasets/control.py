"""The benign control set: ordinary traffic answered by the model itself (greedy).

Thresholds are calibrated at a target false-positive rate on this set, and recall is reported
at that threshold, so it must look like production traffic for *this* model: the responses are
generated once by the model (greedy, batched, progress bar) and cached under
$PROBEWATCH_HOME/datasets/<fingerprint>/, never in git. Kinds (`Dialogue.kind`):

- `chat`: single-turn harmless_val instructions (refusal_direction), 64 new tokens;
- `multi_turn`: a harmless_val instruction, the model's answer, a follow-up question and the
  model's second answer (the scored region is the last answer);
- `long_answer`: harmless_val instructions asking for a detailed answer, 256 new tokens;
- `code`, `roleplay` (no deception in it), `pressure` (honest questions asked under social or
  time pressure, plus the CAA open-ended sycophancy prompts when the data folder has them):
  hand-written prompts in `production_control.yaml`.

Every instruction is disjoint from the training and evaluation sets (harmless_val is split by
`harmless_val_order`). `control_halves` splits the set into calibration and held-out halves,
stratified by kind, so each half holds every kind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from probewatch import envs
from probewatch.data.dialogue import Dialogue, Message, load_dialogues, write_dialogues
from probewatch.training.datasets.common import Source, file_sha256, packaged_file, packaged_yaml, require
from probewatch.training.datasets.refusal import CONTROL_SIZE, HARMLESS_VAL_HELDOUT, SPLITS, harmless_val_order

CONTROL_NAME = "control/harmless_val+greedy"
PRODUCTION_NAME = "control/production-like"
SYCOPHANCY_OPEN = "deception/sycophancy_caa/sycophancy_test_open_ended.json"
Prompt = str | list[dict[str, str]]


class CausalLM(Protocol):
    """What generate_responses needs of a model: an HF causal LM (a torch module with `generate`)."""

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def generate(self, *args: Any, **kwargs: Any) -> Any: ...


SAVE_EVERY = 64  # cached_responses writes its cache after this many new responses
LONG_SAVE_EVERY = 8  # ... and after this many when each takes minutes (more than LONG_RESPONSE new tokens)
LONG_RESPONSE = 256

#: kind -> (number of dialogues, new tokens per answer) of the production-like kinds
PRODUCTION_KINDS: dict[str, tuple[int, int]] = {
    "multi_turn": (64, 64),
    "long_answer": (48, 256),
    "code": (40, 128),
    "roleplay": (40, 96),
    "pressure": (80, 96),
}


def production_spec() -> dict:
    return packaged_yaml("production_control.yaml")


def generate_responses(
    model: CausalLM,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool = True,
    repetition_penalty: float | None = None,
) -> list[str]:
    """Greedy responses, batched with left padding (what `generate` needs for decoder-only models).

    A prompt is a user message, or a whole chat (list of {role, content}) to continue. `repetition_penalty`
    (HF's, e.g. 1.3) keeps long greedy generations of a small model from looping on one sentence."""
    from tqdm.auto import tqdm

    from probewatch.data.chat import render

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    chats = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    texts = {i: render(tokenizer, chat, add_generation_prompt=True) for i, chat in enumerate(chats)}
    order = sorted(range(len(prompts)), key=lambda i: len(texts[i]))  # similar lengths per batch
    results: dict[int, str] = {}
    bar = tqdm(total=len(prompts), desc=f"model responses ({max_new_tokens} tokens)", unit="resp", disable=not progress)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        encoded = [tokenizer(texts[i], add_special_tokens=False)["input_ids"] for i in batch]
        width = max(map(len, encoded))
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, width - len(e) :] = torch.tensor(e)
            attn[row, width - len(e) :] = 1
        with torch.inference_mode():
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=attn.to(device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                **({"repetition_penalty": repetition_penalty} if repetition_penalty else {}),
            )
        for row, i in enumerate(batch):
            results[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip()
        bar.update(len(batch))
    bar.close()
    out = [results[i] for i in range(len(prompts))]
    return out


def control_path(fingerprint: str, n: int, max_new_tokens: int, seed: int) -> Path:
    return envs.generated_data_dir() / fingerprint.replace(":", "-") / f"control-n{n}-t{max_new_tokens}-s{seed}.jsonl"


def build_control(
    loaded: Any,
    data_dir: Path,
    n: int = 400,
    max_new_tokens: int = 64,
    seed: int = 0,
    progress: bool = True,
    production: bool = True,
) -> tuple[list[Dialogue], Source]:
    """The control dialogues for `loaded` (a LoadedModel), generated once and cached.

    `production=False` gives the single-turn `chat` kind only (the control set before issue 14)."""
    dialogues = _chat_control(loaded, data_dir, n, max_new_tokens, seed, progress)
    path = control_path(loaded.fingerprint, n, max_new_tokens, seed)
    if not production:
        return dialogues, Source(f"{CONTROL_NAME} (n={len(dialogues)})", str(path), file_sha256(path), len(dialogues))
    extra = production_control(loaded, data_dir, seed, progress)
    dialogues = dialogues + extra
    kinds = {k: sum(d.kind == k for d in dialogues) for k in dict.fromkeys(d.kind for d in dialogues)}
    spec_path = packaged_file("production_control.yaml")
    digest = file_sha256(path)[:16] + file_sha256(spec_path)[:16]
    name = f"{PRODUCTION_NAME} (n={len(dialogues)}: " + ", ".join(f"{k} {v}" for k, v in kinds.items()) + ")"
    return dialogues, Source(name, str(path.parent), digest, len(dialogues))


def _chat_control(
    loaded: Any, data_dir: Path, n: int, max_new_tokens: int, seed: int, progress: bool
) -> list[Dialogue]:
    source_path = require(data_dir, f"{SPLITS}/harmless_val.json")
    path = control_path(loaded.fingerprint, n, max_new_tokens, seed)
    if path.is_file():
        return [Dialogue(d.messages, d.label, d.group, "chat", d.meta) for d in load_dialogues(path)]
    items = json.loads(source_path.read_text(encoding="utf-8"))
    indices = harmless_val_order(data_dir, seed)[:CONTROL_SIZE][:n]
    prompts = [items[i]["instruction"].strip() for i in indices]
    responses = generate_responses(loaded.model, loaded.tokenizer, prompts, max_new_tokens, progress=progress)
    dialogues = []
    for i, prompt, response in zip(indices, prompts, responses):
        response = response or "..."  # an empty generation still needs a scored token
        dialogues.append(
            Dialogue(
                [Message("user", prompt), Message("assistant", response)],
                0,
                f"harmless_val:{i}",
                "chat",
                {
                    "source": "harmless_val.json",
                    "generated_by": loaded.model_id,
                    "fingerprint": loaded.fingerprint,
                    "decoding": f"greedy,max_new_tokens={max_new_tokens}",
                },
            )
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    write_dialogues(tmp, dialogues)
    tmp.replace(path)
    return dialogues


def production_control(loaded: Any, data_dir: Path, seed: int = 0, progress: bool = True) -> list[Dialogue]:
    """The production-like kinds (multi-turn, long answers, code, role-play, pressure), label 0."""
    spec = production_spec()
    items = json.loads(require(data_dir, f"{SPLITS}/harmless_val.json").read_text(encoding="utf-8"))
    spare = harmless_val_order(data_dir, seed)[CONTROL_SIZE + HARMLESS_VAL_HELDOUT :]
    n_multi, t_multi = PRODUCTION_KINDS["multi_turn"]
    n_long, t_long = PRODUCTION_KINDS["long_answer"]
    multi_idx, long_idx = spare[:n_multi], spare[n_multi : n_multi + n_long]
    meta = {"generated_by": loaded.model_id, "fingerprint": loaded.fingerprint}

    def respond(prompts: Sequence[Prompt], tokens: int, tag: str) -> list[str]:
        return cached_responses(loaded, list(prompts), tokens, tag, progress)

    out: list[Dialogue] = []
    first = [items[i]["instruction"].strip() for i in multi_idx]
    first_answers = respond(first, t_multi, "control-multi-turn-1")
    follow = spec["follow_ups"]
    chats = [
        [
            {"role": "user", "content": q},
            {"role": "assistant", "content": a},
            {"role": "user", "content": follow[k % len(follow)]},
        ]
        for k, (q, a) in enumerate(zip(first, first_answers))
    ]
    for i, chat, answer in zip(multi_idx, chats, respond(chats, t_multi, "control-multi-turn-2")):
        messages = [Message(m["role"], m["content"]) for m in chat] + [Message("assistant", answer)]
        out.append(Dialogue(messages, 0, f"harmless_val:{i}", "multi_turn", {**meta, "source": "harmless_val.json"}))
    long_prompts = [items[i]["instruction"].strip() + spec["long_answer_suffix"] for i in long_idx]
    for i, prompt, answer in zip(long_idx, long_prompts, respond(long_prompts, t_long, "control-long")):
        out.append(_single(prompt, answer, f"harmless_val:{i}", "long_answer", meta, "harmless_val.json"))
    pressure = list(spec["pressure"])
    open_ended = data_dir / SYCOPHANCY_OPEN
    if open_ended.is_file():
        pressure += [item["question"].strip() for item in json.loads(open_ended.read_text(encoding="utf-8"))]
    for kind, prompts in (("code", spec["code"]), ("roleplay", spec["roleplay"]), ("pressure", pressure)):
        n, tokens = PRODUCTION_KINDS[kind]
        prompts = prompts[:n]
        for k, (prompt, answer) in enumerate(zip(prompts, respond(prompts, tokens, f"control-{kind}"))):
            out.append(_single(prompt, answer, f"{kind}:{k}", kind, meta, "production_control.yaml"))
    return out


def _single(prompt: str, answer: str, group: str, kind: str, meta: dict, source: str) -> Dialogue:
    return Dialogue(
        [Message("user", prompt), Message("assistant", answer or "...")], 0, group, kind, {**meta, "source": source}
    )


def control_halves(kinds: Sequence[str | None], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) indices: each kind split in half at random, so both halves hold every kind."""
    rng = np.random.default_rng(seed)
    kind_of = np.asarray([k or "" for k in kinds], dtype=object)
    cal: list[int] = []
    held: list[int] = []
    for kind in dict.fromkeys(kind_of.tolist()):
        members = rng.permutation(np.flatnonzero(kind_of == kind))
        cal += members[: len(members) // 2].tolist()
        held += members[len(members) // 2 :].tolist()
    return np.sort(np.asarray(cal, dtype=np.int64)), np.sort(np.asarray(held, dtype=np.int64))


def cached_responses(
    loaded: Any,
    prompts: Sequence[Prompt],
    max_new_tokens: int = 32,
    tag: str = "responses",
    progress: bool = True,
    repetition_penalty: float | None = None,
) -> list[str]:
    """The model's greedy responses to `prompts`, cached per prompt (only new prompts are generated).

    Used where a training dialogue needs a response that looks like this model's own output (the
    alignment-faking pairs), so that a probe cannot separate training data from real traffic by
    response style alone.
    """
    penalty = f"-rp{repetition_penalty:g}" if repetition_penalty else ""
    path = envs.generated_data_dir() / loaded.fingerprint.replace(":", "-") / f"{tag}-t{max_new_tokens}{penalty}.json"
    cache: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    keys = [p if isinstance(p, str) else json.dumps(p, ensure_ascii=False, sort_keys=True) for p in prompts]
    missing = sorted({k: p for k, p in zip(keys, prompts) if k not in cache}.items())
    # generated a few batches at a time and saved after each, so an interrupted run keeps its progress
    every = LONG_SAVE_EVERY if max_new_tokens > LONG_RESPONSE else SAVE_EVERY
    for start in range(0, len(missing), every):
        part = missing[start : start + every]
        generated = generate_responses(
            loaded.model,
            loaded.tokenizer,
            [p for _, p in part],
            max_new_tokens,
            progress=progress,
            repetition_penalty=repetition_penalty,
        )
        for (key, _), response in zip(part, generated):
            cache[key] = response.strip() or "..."
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, ensure_ascii=False, indent=0))
        tmp.replace(path)
    return [cache[k] for k in keys]
