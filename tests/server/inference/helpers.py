"""Shared by the embedded-server tests: the tiny chat model's vocabulary and the stack builder."""

from __future__ import annotations

WORDS = [
    "user",
    "assistant",
    "system",
    ":",
    "hello",
    "what",
    "is",
    "the",
    "capital",
    "of",
    "france",
    "?",
    "paris",
    "a",
    "an",
    "and",
    "to",
    "you",
    "i",
    "it",
    "be",
    "say",
    "hi",
    "please",
    "thanks",
    ".",
]


def local_stack(chat_folder, tmp_path, **options):
    """The embedded stack (sidecar + chat endpoint) on the tiny chat model and its bundles, ephemeral port."""
    from probewatch.server.local.stack import LocalStack, StackOptions

    folder, bundles = chat_folder
    return LocalStack(
        StackOptions(
            model=str(folder),
            bundles=[str(p) for p in bundles],
            port=0,
            incident_db=tmp_path / "incidents.sqlite3",
            **options,
        )
    )


MESSAGES = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "what is the capital of france ?"}]
