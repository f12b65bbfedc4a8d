"""Text the SAE is trained on: token sequences from the shared datasets and from the model itself.

An SAE only learns features of the distribution it sees, and the probes read chat-formatted
dialogues, so the corpus mixes (default proportions in `CorpusConfig`):

- `statements`: every true/false statement CSV (Azaria & Mitchell, RepE facts) as plain text,
  packed into `context_size`-token windows;
- `chat`: chat-template renderings of the behaviour pools the probes train on
  (`probewatch.training.datasets.build_behaviour_data` for deception, refusal and
  alignment faking), topped up with more liar questions and harmless instructions;
- `alignment_faking`: the opening of the alignment-faking system prompts (monitored and
  unmonitored variants);
- `generated`: the model's own sampled answers to instructions (harmless and harmful, so its
  refusals are in), and to liar questions under the honest and the lying system prompt.

Each sequence carries a `group` (its source item); the held-out split is by group hash, so an
item never feeds both training and evaluation. Budgets count *distinct* rows: a prefix shared
by many sequences (the chat template's system prompt) yields identical residuals and is kept
once (`PrefixDedup`), so budgets measure what the SAE actually sees.

The SAE never sees labels, but the behaviour pools are also what the probes are evaluated on;
docs/sae.md notes this (standard for SAEs: they are trained on the deployment distribution).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probewatch.errors import ProbewatchError

if TYPE_CHECKING:
    from probewatch.data.dialogue import Dialogue


class CorpusError(ProbewatchError):
    """The SAE training corpus cannot be built (no datasets found, empty result, ...)."""


@dataclass
class TextSequence:
    ids: list[int]
    source: str
    group: str
    split: str = "train"  # train | eval

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CorpusConfig:
    """How much of each source to take (token budgets are approximate upper bounds)."""

    context_size: int = 128
    statement_tokens: int = 110_000
    chat_tokens: int = 130_000
    max_chat_tokens: int = 1024
    alignment_faking_tokens: int = 4_000
    generate_prompts: int = 256
    generate_new_tokens: int = 64
    eval_fraction: float = 0.05
    seed: int = 0
    sources: tuple[str, ...] = ("statements", "chat", "alignment_faking", "generated")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(root.glob(pattern))


def statement_texts(data_dir: Path) -> list[tuple[str, str]]:
    """(text, group) for every statement CSV under truth/ and deception/repe_honesty."""
    import csv

    out = []
    for path in _files(data_dir, "truth/**/*.csv") + _files(data_dir, "deception/repe_honesty/*.csv"):
        with open(path, encoding="utf-8-sig", newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                text = (row.get("statement") or "").strip()
                if text:
                    out.append((text, f"{path.parent.name}/{path.stem}:{i}"))
    return out


class PrefixDedup:
    """Which positions of a token sequence give a row not seen before (and are not position 0).

    In a causal model the residual at position i depends only on tokens[: i + 1], so two
    sequences sharing a prefix have identical rows there; each distinct prefix is kept once.
    Position 0 is never kept: it is the attention sink (residual norm ~100x the rest).
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def keep(self, ids: Sequence[int]) -> list[bool]:
        mask, h = [], 0
        for i, tok in enumerate(ids):
            h = hash((h, int(tok)))
            fresh = h not in self._seen
            self._seen.add(h)
            mask.append(i > 0 and fresh)
        return mask


def behaviour_pool_dialogues(data_dir: Path, seed: int) -> list[Any]:
    """Every dialogue of the behaviour pools (and their out-of-distribution sets)."""
    import logging

    from probewatch.training.datasets import BEHAVIOURS, DatasetNotFoundError, build_behaviour_data

    out = []
    for behaviour in BEHAVIOURS:
        try:
            data = build_behaviour_data(behaviour, data_dir, seed=seed)
        except DatasetNotFoundError as exc:  # a partial data folder still trains an SAE
            logging.getLogger("probewatch.training.sae").warning("SAE corpus without the %s pool: %s", behaviour, exc)
            continue
        out += data.pool + [d for ood in data.ood.values() for d in ood]
    return out


def behaviour_dialogues(data_dir: Path, rng: random.Random, harmless_limit: int = 1500) -> list[Any]:
    """Dialogues of the behaviour datasets via the public converters (labels unused here)."""
    from probewatch.data.convert import convert_file

    dialogues = []
    for path in _files(data_dir, "deception/repe_honesty/*.csv"):
        dialogues += list(convert_file(path, "statements", mode="instructed-pairs"))
    for path in _files(data_dir, "deception/how_to_catch_an_ai_liar/raw_questions/questions_1000_all.json"):
        dialogues += list(convert_file(path, "liar-questions"))
    for path in _files(data_dir, "refusal/**/harmful_*.json"):
        dialogues += list(convert_file(path, "instructions"))
    harmless = []
    for path in _files(data_dir, "refusal/**/harmless_*.json"):
        harmless += list(convert_file(path, "instructions"))
    rng.shuffle(harmless)
    return dialogues + harmless[:harmless_limit]


def alignment_faking_texts(data_dir: Path) -> list[tuple[str, str]]:
    root = data_dir / "alignment_faking"
    if not (root / "prompts" / "system").is_dir():
        return []
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(root)), autoescape=False)
    out = []
    for path in _files(root, "prompts/system/*_training_details.jinja2"):
        name = str(path.relative_to(root))
        out.append((env.get_template(name).render(), f"alignment_faking/{path.stem}"))
    return out


def _group(dialogue: Dialogue) -> str:
    assert dialogue.group is not None  # the instructions converter names a group for every dialogue
    return dialogue.group


def generation_prompts(data_dir: Path, n: int, rng: random.Random) -> list[tuple[list[dict[str, str]], str]]:
    """(chat messages, group) the model answers: instructions (harmless + harmful) and liar questions."""
    from probewatch.data.convert import convert_file

    harmful: list[tuple[list[dict[str, str]], str]] = []
    harmless: list[tuple[list[dict[str, str]], str]] = []
    liar: list[tuple[list[dict[str, str]], str]] = []
    for path in _files(data_dir, "refusal/**/harmful_*.json"):
        harmful += [(d.as_chat(), _group(d)) for d in convert_file(path, "instructions")]
    for path in _files(data_dir, "refusal/**/harmless_*.json"):
        harmless += [(d.as_chat(), _group(d)) for d in convert_file(path, "instructions")]
    for path in _files(data_dir, "deception/how_to_catch_an_ai_liar/raw_questions/questions_1000_all.json"):
        for d in convert_file(path, "liar-questions"):
            # system (honest or lying instruction) + question; the scripted answer is dropped
            liar.append((d.as_chat()[:-1], f"{d.group}:{d.label}"))
    for bucket in (harmful, harmless, liar):
        rng.shuffle(bucket)
    quarter = max(1, n // 4)
    chosen = harmful[:quarter] + liar[:quarter] + harmless[: n - 2 * quarter]
    return chosen[:n]


def _pack(
    token_lists: Sequence[tuple[list[int], str]], context_size: int, bos: int | None, sep: list[int], budget: int
) -> Iterator[TextSequence]:
    """Pack short texts into context windows (BOS first, texts separated by `sep`)."""
    window: list[int] = [bos] if bos is not None else []
    groups: list[str] = []
    used = 0
    for ids, group in token_lists:
        if used >= budget:
            break
        piece = ids + sep
        if len(window) + len(piece) > context_size and groups:
            yield TextSequence(window, "statements", groups[0])
            used += len(window)
            window, groups = ([bos] if bos is not None else []), []
        window += piece[: context_size - len(window)]
        groups.append(group)
    if groups and used < budget:
        yield TextSequence(window, "statements", groups[0])


def _split_of(group: str, eval_fraction: float, seed: int) -> str:
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return "eval" if int.from_bytes(digest[:4], "big") / 2**32 < eval_fraction else "train"


def build_corpus(
    tokenizer: Any, data_dir: Path, config: CorpusConfig, model: Any = None, progress: bool = True
) -> list[TextSequence]:
    """Token sequences from every enabled source, each tagged with its split."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CorpusError(f"dataset folder not found: {data_dir} (set PROBEWATCH_DATA or pass --data-dir)")
    rng = random.Random(config.seed)  # one generator, drawn from source by source in this order
    sequences: list[TextSequence] = []

    if "statements" in config.sources:
        sequences += _statement_sequences(tokenizer, data_dir, config, rng)
    if "chat" in config.sources:
        sequences += _chat_sequences(tokenizer, data_dir, config, rng, sequences)
    if "alignment_faking" in config.sources:
        sequences += _alignment_faking_sequences(tokenizer, data_dir, config)

    if "generated" in config.sources and config.generate_prompts > 0:
        if model is None:
            raise CorpusError("the 'generated' source needs the model (pass model=...)")
        prompts = generation_prompts(data_dir, config.generate_prompts, rng)
        sequences += generate_sequences(model, tokenizer, prompts, config.generate_new_tokens, config.seed, progress)

    if not sequences:
        raise CorpusError(f"no text found under {data_dir} for sources {config.sources}")
    for seq in sequences:
        seq.split = _split_of(seq.group, config.eval_fraction, config.seed)
    return sequences


def _statement_sequences(
    tokenizer: Any, data_dir: Path, config: CorpusConfig, rng: random.Random
) -> list[TextSequence]:
    """True/false statements, shuffled and packed into context-size sequences."""
    texts = statement_texts(data_dir)
    rng.shuffle(texts)
    encoded = tokenizer([t for t, _ in texts], add_special_tokens=False)["input_ids"]
    sep = tokenizer("\n", add_special_tokens=False)["input_ids"]
    return list(
        _pack(
            list(zip(encoded, (g for _, g in texts))),
            config.context_size,
            tokenizer.bos_token_id,
            sep,
            config.statement_tokens,
        )
    )


def _chat_sequences(
    tokenizer: Any, data_dir: Path, config: CorpusConfig, rng: random.Random, earlier: list[TextSequence]
) -> list[TextSequence]:
    """Behaviour dialogues in the chat template, skipping prefixes already in the corpus (`earlier` included)."""
    from probewatch.data.chat import encode_dialogue

    dedup = PrefixDedup()
    for seq in earlier:
        dedup.keep(seq.ids)
    pools = behaviour_pool_dialogues(data_dir, config.seed)
    extra = behaviour_dialogues(data_dir, rng)
    rng.shuffle(pools)
    rng.shuffle(extra)
    out: list[TextSequence] = []
    used = 0
    for d in pools + extra:
        if used >= config.chat_tokens:
            break
        ids = encode_dialogue(tokenizer, d).input_ids[: config.max_chat_tokens]
        new = sum(dedup.keep(ids))
        if new:
            out.append(TextSequence(ids, "chat", f"{d.kind}:{d.group}"))
            used += new
    return out


def _alignment_faking_sequences(tokenizer: Any, data_dir: Path, config: CorpusConfig) -> list[TextSequence]:
    """Alignment-faking reasoning texts, each cut to half the source's token budget."""
    bos = tokenizer.bos_token_id
    out = []
    for text, group in alignment_faking_texts(data_dir):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = ([bos] if bos is not None else []) + ids[: max(0, config.alignment_faking_tokens // 2)]
        out.append(TextSequence(ids, "alignment_faking", group))
    return out


def generate_sequences(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[tuple[list[dict[str, str]], str]],
    max_new_tokens: int,
    seed: int,
    progress: bool = True,
    batch_size: int = 32,
) -> list[TextSequence]:
    """Sample the model's answers (temperature 0.8) and return prompt + answer token sequences."""
    import torch
    from tqdm.auto import tqdm

    from probewatch.data.chat import render

    torch.manual_seed(seed)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[TextSequence] = []
    bar = tqdm(total=len(prompts), desc="generating", unit="prompt", disable=not progress)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        encoded = [
            tokenizer(render(tokenizer, m, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            for m, _ in chunk
        ]
        width = max(map(len, encoded))
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, e in enumerate(encoded):  # left padding for generation
            ids[i, width - len(e) :] = torch.tensor(e)
            attn[i, width - len(e) :] = 1
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=attn.to(device),
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
            )
        for i, e in enumerate(encoded):
            new = gen[i, width:].tolist()
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id) + 1]
            out.append(TextSequence(e + new, "generated", f"gen:{chunk[i][1]}"))
        bar.update(len(chunk))
    bar.close()
    return out


def save_corpus(path: Path, sequences: Sequence[TextSequence], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps({"meta": meta}) + "\n")
        for seq in sequences:
            fh.write(json.dumps(seq.to_json()) + "\n")
    tmp.replace(path)


def load_corpus(path: Path) -> tuple[list[TextSequence], dict[str, Any]]:
    with open(path) as fh:
        meta = json.loads(fh.readline())["meta"]
        return [TextSequence(**json.loads(line)) for line in fh if line.strip()], meta


def corpus_stats(sequences: Sequence[TextSequence]) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for seq in sequences:
        entry = stats.setdefault(seq.source, {"sequences": 0, "tokens": 0, "eval_sequences": 0})
        entry["sequences"] += 1
        entry["tokens"] += len(seq.ids)
        entry["eval_sequences"] += seq.split == "eval"
    return stats
