"""One rule for where a generated sequence ends."""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from probewatch.stop_tokens import stop_token_ids


class _Tok:
    eos_token_id = 7


def test_kwargs_config_and_tokenizer_all_count():
    config = GenerationConfig(eos_token_id=[2, 3], pad_token_id=0)
    assert stop_token_ids(config, _Tok()) == {0, 2, 3, 7}
    assert stop_token_ids(config, None, {"eos_token_id": torch.tensor([9]), "pad_token_id": 5}) == {0, 2, 3, 5, 9}
    assert stop_token_ids(GenerationConfig(), None) == set()
