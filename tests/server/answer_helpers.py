"""`answer` bundles for the tiny model (live parity tests of token selection `answer`).

The tiny random model has no tokenizer, so its bundles carry a vocabulary table written here: a few ids
spell a multiple-choice question ("Which is true?\n(A) yes indeed\n(B) no never\nAnswer:") and its
replies, every other id a word that is no option and no answer. The tests choose the ids of the prompt
and force the reply's, so they know which tokens the probe must read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from probewatch.probes import Threshold
from probewatch.probes.synthetic import synthetic_manifest, synthetic_tensors, write_synthetic_bundle
from probewatch.probes.vocab import vocab_tensors
from tests.server.conftest import D_TINY

SPELLING = {
    3: "Which",
    4: " is",
    5: " true",
    6: "?",
    7: "\n",
    8: "(A)",
    9: " yes",
    10: " indeed",
    11: "(B)",
    12: " no",
    13: " never",
    14: "Answer",
    15: ":",
    16: " I",
    17: " think",
    18: "A",
    19: " good",
    20: "<|im_end|>",
}
#: piece of every tiny-model id (256): the spelled ones above, the rest words like " w42"
TINY_PIECES = [SPELLING.get(i, f" w{i}") for i in range(256)]
#: "Which is true?\n(A) yes indeed\n(B) no never\nAnswer:" as ids; option A's text is positions 6-7, B's 10-11
QUESTION = [3, 4, 5, 6, 7, 8, 9, 10, 7, 11, 12, 13, 7, 14, 15]
OPTION_A = [6, 7]
OPTION_B = [10, 11]


def write_answer_bundles(root: Path, fingerprint: str, threshold: float = 0.0) -> list[Path]:
    """ans (layer 1, answer, mean, standardized; shares layer 1 with the tiny `dec` probe), ans-ml (layers 0
    and 2, answer, max: a multi-layer answer probe whose prompt tokens join like any other) and ans-att
    (layer 2, answer, attention pooling: two columns per token), all alerting at `threshold`."""
    paths = []
    for probe_id, layers, aggregation, standardize in (
        ("ans", [1], "mean", True),
        ("ans-ml", [0, 2], "max", False),
        ("ans-att", [2], "attention", True),
    ):
        attention = aggregation == "attention"
        manifest = synthetic_manifest(
            probe_id,
            d_model=D_TINY,
            layer=layers[0],
            layers=layers if len(layers) > 1 else None,
            model_id="tiny",
            fingerprint=fingerprint,
            n_layers=4,
            kind="attention" if attention else "linear",
            aggregation=aggregation,
            token_selection="answer",
            normalization="standardize" if standardize else "none",
            threshold=Threshold(value=threshold, method="fixed", fpr=None),
        )
        tensors = synthetic_tensors(
            D_TINY * len(layers),
            torch.Generator().manual_seed(40 + layers[-1] + 7 * attention),
            bias=0.1,
            standardize=standardize,
            attention=attention,
        )
        if attention:  # a query spread of a few units: the weights differ between tokens, none takes all
            tensors["query"] = tensors["query"] * 4.0
        paths.append(write_synthetic_bundle(root, manifest, tensors={**tensors, **vocab_tensors(TINY_PIECES)})[0])
    return paths


def expected_positions(tokens: list[int], n_prompt: int) -> list[int]:
    """The positions an answer probe reads for these tokens: by the table, as the sidecar must."""
    from probewatch.probes.selection import selection_mask

    positions = np.arange(len(tokens))
    pieces = [TINY_PIECES[t] for t in tokens]
    return positions[selection_mask("answer", positions, n_prompt, pieces=pieces)].tolist()
