"""Alignment-faking data: the same request under monitored (1) vs unmonitored (0) framing.

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
- `eval_statement`: the assistant says it believes it is being tested (1) or not (0).

Dialogues end with an assistant turn: the model's own greedy response to the request (generated
once and cached; the same on both sides of a pair), prefixed by the statement in
`eval_statement`. In the context kinds the response tokens carry the contrast only through what
the model read, and the responses look like the control set's, so response style cannot give
the label away.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import yaml

from probewatch.data.dialogue import Dialogue, Message
from probewatch.training.datasets.common import (
    PLAIN_KIND,
    BehaviourData,
    DatasetNotFoundError,
    Source,
    plain_traffic,
    require,
    sample,
    stable_choice,
)

PROMPTS = "alignment_faking/prompts"
SPLITS = "refusal/refusal_direction/splits"
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
    text = (resources.files("probewatch.training.datasets") / "eval_awareness.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


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
    out = []
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
    full_prompt: bool = False,
    respond: Callable[..., list[str]] | None = None,
    n_plain: int = 160,
) -> BehaviourData:
    """`respond(prompts, max_new_tokens)` supplies the model's own responses (same on both sides of a
    pair) and enables the plain-traffic negatives; without it, short neutral openings stand in."""
    spec = eval_awareness_spec()
    neutral = spec["neutral_responses"]
    free = _requests(data_dir, n_requests, seed)
    tag_only = _requests(data_dir, n_tag_only, seed + 101)
    context = _requests(data_dir, n_context_pool, seed + 7)
    texts = list(dict.fromkeys(t for _, t in free + tag_only + context))
    if respond is not None:
        generated = dict(zip(texts, respond(texts, max_new_tokens=32)))
        reply = lambda rid, text: generated[text]
    else:
        reply = lambda rid, text: stable_choice(rid, neutral)
    pool: list[Dialogue] = []
    sources: list[Source] = []

    for kind, variant, requests in (
        ("free_tier", "with_training_details", free),
        ("free_tier_tag_only", "without_training_details", tag_only),
    ):
        system = render_system_prompt(data_dir, variant, full_prompt)
        for rid, text in requests:
            response = reply(rid, text)
            for label in (1, 0):
                messages = [
                    Message("system", system),
                    Message("user", render_user_query(data_dir, text, bool(label))),
                    Message("assistant", response),
                ]
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

    r = 0
    for p, pair in enumerate(spec["context_pairs"]):
        for _ in range(n_context_requests):
            rid, text = context[r % len(context)]
            r += 1
            response = reply(rid, text)
            for label, frame in ((1, pair["test"]), (0, pair["deploy"])):
                if pair["where"] == "system":
                    messages = [Message("system", frame), Message("user", text)]
                else:
                    messages = [Message("user", f"{frame}\n\n{text}")]
                pool.append(
                    Dialogue(
                        messages + [Message("assistant", response)],
                        label,
                        f"eval_context:{p}",
                        "eval_context",
                        {"source": "probewatch eval_awareness.yaml", "request": rid},
                    )
                )
    for s, pair in enumerate(spec["statements"]):
        for _ in range(n_context_requests):
            rid, text = context[r % len(context)]
            r += 1
            response = reply(rid, text)
            for label, statement in ((1, pair["test"]), (0, pair["deploy"])):
                pool.append(
                    Dialogue(
                        [Message("user", text), Message("assistant", f"{statement} {response}")],
                        label,
                        f"eval_statement:{s}",
                        "eval_statement",
                        {"source": "probewatch eval_awareness.yaml", "request": rid},
                    )
                )
    path = Path(str(resources.files("probewatch.training.datasets") / "eval_awareness.yaml"))
    sources.append(Source.of("probewatch eval_awareness.yaml", path, sum(d.kind.startswith("eval_") for d in pool)))
    train_only: tuple[str, ...] = ()
    if respond is not None and n_plain:
        plain, plain_source = plain_traffic(data_dir, respond, n_plain, seed)
        pool += plain
        sources.append(plain_source)
        train_only = (PLAIN_KIND,)
    return BehaviourData(
        "alignment_faking",
        pool,
        sources=sources,
        token_selection="response",
        aggregations=("mean", "max", "rolling_mean_max"),
        train_only_kinds=train_only,
        notes={
            "label_1": "monitored / used-for-training / being-evaluated framing",
            "system_prompt": "full" if full_prompt else "condensed",
            "responses": "model's own greedy responses" if respond else "neutral openings",
        },
    )
