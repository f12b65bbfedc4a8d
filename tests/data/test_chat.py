"""Chat-template encoding and the scored-region mask."""

from __future__ import annotations

import pytest

from probewatch.data import Dialogue, Message, encode_dialogue, pad_batch

pytestmark = pytest.mark.compat


@pytest.fixture(scope="module")
def tokenizer(reference):
    return reference.tokenizer


def test_last_assistant_message_is_the_scored_region(tokenizer):
    enc = encode_dialogue(
        tokenizer, [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hello there, friend!"}]
    )
    scored = [tokenizer.decode([t]) for t, s in zip(enc.input_ids, enc.scored) if s]
    assert "".join(scored) == "Hello there, friend!"
    assert (
        enc.input_ids
        == tokenizer.apply_chat_template(
            [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hello there, friend!"}],
            tokenize=True,
            return_dict=True,
        )["input_ids"]
    )
    assert tokenizer.decode(enc.input_ids[: enc.prompt_last + 1]).endswith("<|im_start|>assistant\n")


def test_user_ending_dialogue_scores_the_generation_prompt_position(tokenizer):
    dialogue = Dialogue([Message("system", "Be brief."), Message("user", "How do I bake bread?")], 0)
    enc = encode_dialogue(tokenizer, dialogue)
    assert enc.n_scored == 1 and enc.scored[-1] and enc.prompt_last == len(enc.input_ids) - 1
    prompt = tokenizer.apply_chat_template(
        dialogue.as_chat(), add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert enc.input_ids == prompt


def test_repeated_content_picks_the_last_assistant_turn(tokenizer):
    msgs = [
        {"role": "user", "content": "Repeat: yes"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "yes"},
    ]
    enc = encode_dialogue(tokenizer, msgs)
    first_scored = enc.scored.index(True)
    assert enc.n_scored == 1 and first_scored > len(enc.input_ids) - 6


def test_pad_batch_right_and_left():
    from probewatch.data.chat import EncodedDialogue

    a = EncodedDialogue([5, 6, 7], [False, True, True], "", 0)
    b = EncodedDialogue([8], [True], "", 0)
    ids, attn, scored = pad_batch([a, b], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and attn.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert scored.tolist() == [[False, True, True], [True, False, False]]
    ids, attn, _ = pad_batch([a, b], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]


def test_tokenizer_without_chat_template_uses_the_fallback(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(
        models.WordLevel({"[UNK]": 0, "user": 1, "assistant": 2, ":": 3, "hi": 4, "yo": 5}, unk_token="[UNK]")
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    enc = encode_dialogue(fast, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert [i for i, s in zip(enc.input_ids, enc.scored) if s] == [5]


def test_a_bare_assistant_transcript_is_scored_on_its_content(tokenizer):
    """A transcript with only the assistant's text (nothing to prompt it) is a normal thing to
    score; chat templates refuse an empty prompt, so the content is located in the full render."""
    enc = encode_dialogue(tokenizer, [{"role": "assistant", "content": "The car has no problems at all."}])
    scored = [tokenizer.decode([t]) for t, s in zip(enc.input_ids, enc.scored) if s]
    assert "".join(scored) == "The car has no problems at all."
    assert tokenizer.decode(enc.input_ids[: enc.prompt_last + 1]).endswith("<|im_start|>assistant\n")
