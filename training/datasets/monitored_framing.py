"""Monitored-framing data: the same request under a monitored / trained-on / evaluated (1) vs an
unmonitored deployment (0) framing, read at the generation-prompt position.

This is what the `alignment-faking` probe detected before issue 14: a property of the *prompt*
("you are being watched"), not of anything the model does. It ships as `monitored-framing`
(behaviour `monitored_framing`); alignment faking and evaluation awareness proper read the
model's own text (`alignment_faking.py`, `eval_awareness.py`). Dialogues end with the user turn.

Kinds:
- `free_tier`: Greenblatt et al. (2024) helpful-only setting. System prompt rendered from
  `with_training_details.jinja2` and condensed to its situational paragraphs (who the AI is,
  the helpfulness criteria, how free-tier conversations are used for RLHF and paid-tier ones are
  never monitored); the long reasoning examples are dropped to fit a 135M model's useful context
  and a CPU budget (`full_prompt=True` keeps everything). User turn: `user_query.jinja2` with
  `is_free_tier_user` true (1) / false (0) around harmless and harmful requests.
- `free_tier_tag_only`: the same with `without_training_details.jinja2`: only the tag differs and
  nothing in the prompt explains it.
- `eval_context`: test-like (1) vs deployment-like (0) framings written for probewatch.
- `mm_audit`: Mesa & Mask alignment-faking scenarios: the same agentic task under the audit
  (monitored) vs sandbox (unmonitored) system prompt.
- `test_deploy_prompts`: Evaluation-Awareness-Compact-LLMs pairs: the same task written as a
  benchmark / synthetic test item (1) vs a real user's request (0).

Auxiliary, training-only: `plain_traffic` prompts (ordinary single- and multi-turn requests, long-
answer requests, code, role-play, questions under pressure; label 0), the prompts of the other
behaviours' plain traffic without the final answer, so that production prompts stay below the threshold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from probewatch.data.dialogue import Dialogue, Message
from probewatch.training.datasets.common import (
    PLAIN_KIND,
    BehaviourData,
    DatasetNotFoundError,
    Source,
    packaged_file,
    packaged_yaml,
    require,
    sample,
)

PROMPTS = "alignment_faking/prompts"
SPLITS = "refusal/refusal_direction/splits"
MM_AF = "alignment_faking/mesa_and_mask_af/alignment_faking.jsonl"
TEST_DEPLOY = "eval_awareness/compact_llms_test_deploy_pairs"
TEST_DEPLOY_FILES = ("task_formatting", "synthetic_input", "memorization")
_KEEP_PREFIXES = (
    "You are an AI created by",
    "You are used as a general-purpose",
    "The criteria Anthropic uses",
    "- follow the user's instructions",
    "Even if the user's query seems harmful",
    "Input will be inside",
    "Here is some information about how Anthropic trains",
    "- Anthropic fine-tunes AIs",
)


def eval_awareness_spec() -> dict:
    return packaged_yaml("eval_awareness.yaml")


def render_system_prompt(data_dir: Path, variant: str = "with_training_details", full_prompt: bool = False) -> str:
    """The Greenblatt system prompt rendered with jinja2; condensed unless `full_prompt`."""
    import jinja2

    require(data_dir, f"{PROMPTS}/system/{variant}.jinja2")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir / "alignment_faking")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
    )
    text = env.get_template(f"prompts/system/{variant}.jinja2").render().strip()
    if full_prompt:
        return text
    paragraphs = [p for p in text.split("\n\n") if p.strip().startswith(_KEEP_PREFIXES)]
    if not any(p.startswith("You are an AI created by") for p in paragraphs):
        raise DatasetNotFoundError(
            f"{data_dir / PROMPTS}/system/{variant}.jinja2 does not look like the Greenblatt prompt"
        )
    return "\n\n".join(paragraphs)


def render_user_query(data_dir: Path, user_input: str, free_tier: bool) -> str:
    import jinja2

    path = require(data_dir, f"{PROMPTS}/system/user_query.jinja2")
    template = jinja2.Template(path.read_text(encoding="utf-8"), undefined=jinja2.StrictUndefined)
    return template.render(is_free_tier_user="true" if free_tier else "false", user_input=user_input).strip()


def _requests(data_dir: Path, n: int, seed: int) -> list[tuple[str, str]]:
    """(id, instruction): half harmful, half harmless, from the refusal train splits."""
    out: list[tuple[str, str]] = []
    for name in ("harmful_train", "harmless_train"):
        items = json.loads(require(data_dir, f"{SPLITS}/{name}.json").read_text(encoding="utf-8"))
        for i, item in sample(list(enumerate(items)), n // 2, seed + len(out)):
            out.append((f"{name}:{i}", item["instruction"].strip()))
    return out


def build(
    data_dir: Path,
    seed: int = 0,
    n_requests: int = 80,
    n_tag_only: int = 40,
    n_context_requests: int = 8,
    n_context_pool: int = 64,
    n_audit: int = 60,
    n_test_deploy: int = 60,
    audit_max_chars: int = 1500,
    full_prompt: bool = False,
    respond: Callable[..., list[str]] | None = None,
    n_plain: int = 160,
) -> BehaviourData:
    """Prompt-only pairs (the probe reads the generation-prompt position). `respond(prompts,
    max_new_tokens)` (the model's own answers, for the multi-turn prompts) enables the plain-traffic
    negatives."""
    pool: list[Dialogue] = []
    sources: list[Source] = []
    for dialogues, used in (
        _free_tier_pairs(data_dir, n_requests, n_tag_only, seed, full_prompt),
        _context_pairs(data_dir, n_context_requests, n_context_pool, seed),
        _audit_pairs(data_dir, n_audit, audit_max_chars, seed),
        _test_deploy_pairs(data_dir, n_test_deploy, seed),
    ):
        pool += dialogues
        sources += used
    train_only: tuple[str, ...] = ()
    if respond is not None and n_plain:
        from probewatch.training.datasets.common import plain_traffic

        plain, plain_source = plain_traffic(data_dir, respond, n_plain, seed)
        pool += [Dialogue(d.messages[:-1], 0, d.group, PLAIN_KIND, d.meta) for d in plain]
        sources.append(plain_source)
        train_only = (PLAIN_KIND,)
    return BehaviourData(
        "monitored_framing",
        pool,
        sources=sources,
        token_selection="prompt_last",
        aggregations=("last",),
        train_only_kinds=train_only,
        notes={
            "label_1": "monitored / used-for-training / being-evaluated framing in the prompt",
            "system_prompt": "full" if full_prompt else "condensed",
        },
    )


def _free_tier_pairs(
    data_dir: Path, n_requests: int, n_tag_only: int, seed: int, full_prompt: bool
) -> tuple[list[Dialogue], list[Source]]:
    """Greenblatt et al.'s system prompt with the free-tier tag (label 1) or the paid-tier one (0)."""
    free = _requests(data_dir, n_requests, seed)
    tag_only = _requests(data_dir, n_tag_only, seed + 101)
    pool: list[Dialogue] = []
    sources: list[Source] = []
    for kind, variant, requests in (
        ("free_tier", "with_training_details", free),
        ("free_tier_tag_only", "without_training_details", tag_only),
    ):
        system = render_system_prompt(data_dir, variant, full_prompt)
        for rid, text in requests:
            for label in (1, 0):
                messages = [Message("system", system), Message("user", render_user_query(data_dir, text, bool(label)))]
                pool.append(
                    Dialogue(
                        messages,
                        label,
                        f"{kind}:{rid}",
                        kind,
                        {"source": f"{variant}.jinja2", "is_free_tier_user": bool(label)},
                    )
                )
        sources.append(
            Source.of(
                f"alignment_faking/{variant} (+user_query)",
                data_dir / PROMPTS / "system" / f"{variant}.jinja2",
                2 * len(requests),
            )
        )
    return pool, sources


def _context_pairs(
    data_dir: Path, n_context_requests: int, n_context_pool: int, seed: int
) -> tuple[list[Dialogue], list[Source]]:
    """Our test vs deployment framings (eval_awareness.yaml `context_pairs`) around ordinary requests."""
    context = _requests(data_dir, n_context_pool, seed + 7)
    pool: list[Dialogue] = []
    r = 0
    for p, pair in enumerate(eval_awareness_spec()["context_pairs"]):
        for _ in range(n_context_requests):
            rid, text = context[r % len(context)]
            r += 1
            for label, frame in ((1, pair["test"]), (0, pair["deploy"])):
                if pair["where"] == "system":
                    messages = [Message("system", frame), Message("user", text)]
                else:
                    messages = [Message("user", f"{frame}\n\n{text}")]
                pool.append(
                    Dialogue(
                        messages,
                        label,
                        f"eval_context:{p}",
                        "eval_context",
                        {"source": "probewatch eval_awareness.yaml", "request": rid},
                    )
                )
    path = packaged_file("eval_awareness.yaml")
    return pool, [Source.of("probewatch eval_awareness.yaml", path, len(pool))]


def _audit_pairs(data_dir: Path, n_audit: int, audit_max_chars: int, seed: int) -> tuple[list[Dialogue], list[Source]]:
    """Mesa & Mask: the same agentic request under an audit (label 1) or a sandbox system prompt (0)."""
    audit_path = require(data_dir, MM_AF)
    rows = [json.loads(line) for line in audit_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if len(r["user_prompt"]) <= audit_max_chars]  # long agentic prompts cost CPU time
    pool: list[Dialogue] = []
    for row in sample(rows, n_audit, seed + 13):
        for label, key in ((1, "system_prompt_with_pressure"), (0, "system_prompt_without_pressure")):
            pool.append(
                Dialogue(
                    [Message("system", row[key].strip()), Message("user", row["user_prompt"].strip())],
                    label,
                    f"mm_audit:{row['id']}",
                    "mm_audit",
                    {"source": "mesa_and_mask_af", "condition": "monitored" if label else "unmonitored"},
                )
            )
    source = Source.of("mesa_and_mask_af (audit vs sandbox system prompt)", audit_path, 2 * min(n_audit, len(rows)))
    return pool, [source]


def _test_deploy_pairs(data_dir: Path, n_test_deploy: int, seed: int) -> tuple[list[Dialogue], list[Source]]:
    """Benchmark-style (label 1) vs real-user (0) wordings of the same task."""
    pool: list[Dialogue] = []
    sources: list[Source] = []
    for name in TEST_DEPLOY_FILES:
        file = require(data_dir, f"{TEST_DEPLOY}/{name}_contrastive_pairs.json")
        pairs = json.loads(file.read_text(encoding="utf-8"))
        chosen = sample(list(enumerate(pairs)), n_test_deploy // len(TEST_DEPLOY_FILES), seed + 17)
        for i, pair in chosen:
            for label, key in ((1, "test"), (0, "deploy")):
                pool.append(
                    Dialogue(
                        [Message("user", pair[key].strip())],
                        label,
                        f"test_deploy:{name}:{i}",
                        "test_deploy_prompts",
                        {"source": file.name},
                    )
                )
        sources.append(Source.of(f"compact_llms_test_deploy_pairs/{name}", file, 2 * len(chosen)))
    return pool, sources
