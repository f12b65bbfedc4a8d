"""Fixtures of the embedded-server tests: a tiny llama + word-level tokenizer folder and its bundles."""

from __future__ import annotations

import pytest

from tests.conftest import make_tiny_model
from tests.probes.helpers import make_bundle
from tests.server.inference.helpers import WORDS


@pytest.fixture(scope="session")
def chat_folder(tmp_path_factory):
    """A tiny llama + word-level fast tokenizer saved as an HF folder (no chat template: the fallback)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
    vocab = {t: i for i, t in enumerate(specials + WORDS + [f"w{i}" for i in range(256 - len(specials) - len(WORDS))])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )
    model = make_tiny_model("llama", seed=7)
    model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id = 0, 1, 2
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 2
    folder = tmp_path_factory.mktemp("chat-model")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    from probewatch.models import fingerprint_folder

    fp = fingerprint_folder(folder)
    bundles = tmp_path_factory.mktemp("chat-bundles")
    paths = [
        make_bundle(bundles, "dec", layer=1, d=64, seed=1, aggregation="max", fingerprint=fp, threshold=-100.0)[0],
        make_bundle(bundles, "avg", layer=2, d=64, seed=2, aggregation="mean", fingerprint=fp, threshold=100.0)[0],
    ]
    return folder, paths
