"""Token texts end to end: the attach client sends each token's text on Close, a real sidecar keeps them
with the incident under its text policy (full / redacted with an e-mail masked on every token it spans /
none), and the review page shows the words (a prompt_last probe: the prompt's tail)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from fastapi.testclient import TestClient

from probewatch.server.client.hf_attach import attach
from probewatch.server.client.token_texts import token_pieces
from probewatch.server.review.app import create_review_app
from probewatch.server.review.auth import AuthConfig
from probewatch.server.review.catalog import Catalog
from probewatch.server.store import IncidentStore
from probewatch.server.store.privacy_tokens import MASK
from tests.probes.helpers import make_bundle
from tests.server.conftest import D_TINY

pytestmark = pytest.mark.compat

EMAIL = "jo.doe@example.com"
PROMPT = f"Mail {EMAIL} today. Say ok!"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what a byte-level BPE vocabulary is written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


@pytest.fixture(scope="module")
def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: one token per UTF-8 byte, ids 0..255 (the tiny model's vocab)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@pytest.fixture(scope="module")
def hot_bundles(tmp_path_factory, tiny_fp):
    """Two probes that alert on every generation: `hot` (response, max) and `tail` (prompt_last)."""
    root = tmp_path_factory.mktemp("hot-bundles")
    hot, _ = make_bundle(root, "hot", layer=1, d=D_TINY, seed=1, aggregation="max", fingerprint=tiny_fp, threshold=-1e6)
    tail, _ = make_bundle(
        root, "tail", layer=2, d=D_TINY, seed=3, aggregation="last", fingerprint=tiny_fp, threshold=-1e6
    )
    manifest = json.loads((tail / "manifest.json").read_text())
    manifest["token_selection"] = "prompt_last"
    manifest["behaviour"] = "refusal"
    (tail / "manifest.json").write_text(json.dumps(manifest))
    return [hot, tail]


def test_token_pieces_join_to_the_text_and_keep_split_characters_whole(byte_tokenizer):
    text = "Héllo 👋 ok"
    ids = byte_tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(byte_tokenizer, ids)
    assert len(pieces) == len(ids) == len(text.encode())
    assert "".join(pieces) == text
    # é is 2 bytes: its text goes to the second token, the first is empty; the emoji's 4 bytes likewise
    assert pieces[1:3] == ["", "é"] and pieces[7:11] == ["", "", "", "👋"]


def _generate_alerting(tiny_model, tokenizer, sidecar) -> tuple[str, int]:
    monitor = attach(tiny_model, tokenizer, sidecar=sidecar.address, wait_s=10)
    try:
        ids = torch.tensor([tokenizer(PROMPT, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode():
            tiny_model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=6,
                do_sample=False,
                pad_token_id=0,
                generation_ids=["g1"],
            )
        result = monitor.last_generations[0].result(10)
        assert result.monitored and result.status == "closed", result
        assert {a["probe"] for a in result.alerts} == {"hot", "tail"}, result.alerts
        return "g1", ids.shape[1]
    finally:
        monitor.detach()


@pytest.mark.parametrize("mode", ["full", "redacted", "none"])
def test_token_texts_kept_under_the_text_policy(mode, tiny_model, byte_tokenizer, hot_bundles, start_sidecar, tmp_path):
    db = tmp_path / f"{mode}.sqlite3"
    sidecar = start_sidecar(hot_bundles, incident_db=db, store_text=mode)
    gid, n_prompt = _generate_alerting(tiny_model, byte_tokenizer, sidecar)
    sidecar.stop(5)
    store = IncidentStore.open(db)  # the review app keeps its CSRF key in the store
    hot = store.find(generation_id=gid, probe="hot")[0]
    incident = store.get(int(hot.id))
    assert incident.text_policy == mode
    texts = {int(p): t for p, t in incident.token_texts}
    start = PROMPT.index(EMAIL)  # one byte a token: character offset == position
    email = range(start, start + len(EMAIL))
    if mode == "none":
        assert texts == {} and incident.prompt is None
    elif mode == "full":
        assert set(range(n_prompt)) <= set(texts)  # a short prompt is kept whole (tail + context)
        assert "".join(texts[p] for p in range(n_prompt)) == PROMPT
        assert max(texts) >= n_prompt  # and the response's tokens
    else:
        assert [texts[p] for p in email] == ["[email]"] + [MASK] * (len(EMAIL) - 1)
        assert "".join(texts[p] for p in range(n_prompt) if p not in email) == PROMPT.replace(EMAIL, "")
        assert EMAIL not in json.dumps(incident.to_json())
    _check_review_page(store, int(hot.id), mode, n_prompt)
    store.close()


def _check_review_page(store: IncidentStore, incident_id: int, mode: str, n_prompt: int) -> None:
    app = create_review_app(store, AuthConfig(local_reviewer="alice"), Catalog([], discover=False))
    with TestClient(app, base_url="http://127.0.0.1") as client:  # the app answers loopback hosts only
        page = client.get(f"/incidents/{incident_id}")
    assert page.status_code == 200
    heatmaps = re.findall(r'data-probe="([^"]+)".*?<div class="tokens">(.*?)</div>', page.text, re.S)
    cells = {probe: re.findall(r'data-pos="(\d+)"[^>]*>([^<]*)</span>', html) for probe, html in heatmaps}
    words = {probe: {int(p): t for p, t in c} for probe, c in cells.items()}
    if mode == "none":
        assert "--store-text none" in page.text
        assert words["hot"] and all(t.startswith("#") for t in words["hot"].values())
        return
    assert all(not t.startswith("#") for t in words["hot"].values())
    # prompt_last: the prompt's last 8 tokens up to the scored one, not a lone last token
    tail = words["tail"]
    assert [p for p in sorted(tail) if p < n_prompt] == list(range(n_prompt - 8, n_prompt))
    assert "".join(tail[p] for p in range(n_prompt - 8, n_prompt)) == PROMPT[-8:]
    if mode == "redacted":
        assert "masked (█)" in page.text and EMAIL not in page.text
