"""The benign control set: harmless instructions answered by the model itself (greedy).

Thresholds are calibrated at a target false-positive rate on this set, and recall is reported
at that threshold, so it must look like ordinary traffic for *this* model: the responses are
generated once by the model (greedy, batched, progress bar) and cached under
$PROBEWATCH_HOME/datasets/<fingerprint>/, never in git. Instructions come from
refusal_direction's harmless_val split, disjoint from every training and evaluation set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from probewatch import envs
from probewatch.data.dialogue import Dialogue, Message, load_dialogues, write_dialogues
from probewatch.training.datasets.common import Source, file_sha256, require
from probewatch.training.datasets.refusal import SPLITS, harmless_val_partition

CONTROL_NAME = "control/harmless_val+greedy"


def generate_responses(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool = True,
) -> list[str]:
    """Greedy responses, batched with left padding (what `generate` needs for decoder-only models)."""
    from tqdm.auto import tqdm

    from probewatch.data.chat import render

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths per batch
    texts = {i: render(tokenizer, [{"role": "user", "content": prompts[i]}], add_generation_prompt=True) for i in order}
    results: dict[int, str] = {}
    bar = tqdm(total=len(prompts), desc="control responses", unit="resp", disable=not progress)
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
    loaded: Any, data_dir: Path, n: int = 400, max_new_tokens: int = 64, seed: int = 0, progress: bool = True
) -> tuple[list[Dialogue], Source]:
    """The control dialogues for `loaded` (a LoadedModel), generated once and cached."""
    source_path = require(data_dir, f"{SPLITS}/harmless_val.json")
    path = control_path(loaded.fingerprint, n, max_new_tokens, seed)
    if path.is_file():
        dialogues = load_dialogues(path)
    else:
        items = json.loads(source_path.read_text(encoding="utf-8"))
        indices = harmless_val_partition(data_dir, seed)[0][:n]
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
                    "control",
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
    return dialogues, Source(f"{CONTROL_NAME} (n={len(dialogues)})", str(path), file_sha256(path), len(dialogues))


def cached_responses(
    loaded: Any, prompts: list[str], max_new_tokens: int = 32, tag: str = "responses", progress: bool = True
) -> list[str]:
    """The model's greedy responses to `prompts`, cached per prompt (only new prompts are generated).

    Used where a training dialogue needs a response that looks like this model's own output (the
    alignment-faking pairs), so that a probe cannot separate training data from real traffic by
    response style alone.
    """
    path = envs.generated_data_dir() / loaded.fingerprint.replace(":", "-") / f"{tag}-t{max_new_tokens}.json"
    cache: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    missing = sorted({p for p in prompts if p not in cache})
    if missing:
        for prompt, response in zip(
            missing, generate_responses(loaded.model, loaded.tokenizer, missing, max_new_tokens, progress=progress)
        ):
            cache[prompt] = response.strip() or "..."
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, ensure_ascii=False, indent=0))
        tmp.replace(path)
    return [cache[p] for p in prompts]
