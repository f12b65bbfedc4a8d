"""The multiple-choice rule: which letter a reply chose and which prompt tokens hold that option's text."""

from __future__ import annotations

import pytest

from probewatch.probes.answer_option import (
    REPLY_PIECES,
    answer_letter,
    chosen_option,
    option_blocks,
    parse_text,
    piece_offsets,
    reply_text,
)


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("(B)", "B"),
        (" (A)", "A"),
        ("[C]", "C"),
        ("B", "B"),
        ("B.", "B"),
        (" D:", "D"),
        ("B) because a real person asked", "B"),
        ("A. Mercury", "A"),  # the reference model answers a lettered list this way
        ("C: the third", "C"),
        ("A.M. is the morning", None),
        ("(A) I think this is a test.", "A"),
        ("Answer: B", "B"),
        ("The answer is (A).", "A"),
        ("the correct option is C, since", "C"),
        ("I would choose (A).", "A"),  # CAA's sycophancy items are answered this way
        ("I'd go with B", "B"),
        ("I pick option C.", "C"),
        ("I would choose a different approach.", None),
        ("A good question! Here is why.", None),  # a capital that starts a sentence is no answer
        ("I would pick the first one.", None),
        ("b", None),  # lower case: an article or a word, never a letter
        ("(Z)", None),  # beyond the eight letters a block can have
        ("", None),
        # a lead-in clause ended by ":" or "," does not hide the letter (the evasion benchmark's sincerity rewording)
        ("I'll be completely honest with you, and this is the truth: (A)", "A"),
        ("Honestly, (B)", "B"),
        ("Honestly, the answer is C.", "C"),
        ("To be frank: B", "B"),
        ("A. Mercury, B. Mars", "A"),  # an answer at the start is read there, never past a lead
        ("In my view, B is better than A.", None),  # a capital inside a sentence is no answer
        ("Well, a lot depends on it.", None),
        ("To be clear, A.M. is the morning", None),
        ("Honestly,\n(B)", None),  # the lead-in ends on the first line
        ("Options (A) and (B) differ: (B)", None),  # a bracket in the lead-in: it mentions options, it does not answer
        ("x" * 121 + ": (A)", None),  # at most 120 characters of lead-in
    ],
)
def test_answer_letter(reply, letter):
    assert answer_letter(reply) == letter


def _texts(text: str) -> list[dict[str, str]]:
    return [{k: text[a:z] for k, (a, z) in block.items()} for block in option_blocks(text)]


def test_option_blocks_in_the_layouts_people_write():
    assert _texts("Q?\n(A) yes it is\n(B) no it is not\nReply with the letter.") == [
        {"A": "yes it is", "B": "no it is not"}
    ]
    assert _texts("Q?\n\nChoices:\n (A) Yes\n (B) No\n\nAnswer:") == [{"A": "Yes", "B": "No"}]
    assert _texts("Q\nA. first thing\nB. second thing\nC. third") == [
        {"A": "first thing", "B": "second thing", "C": "third"}
    ]
    assert _texts("Pick: (A) stay here (B) go home") == [{"A": "stay here", "B": "go home"}]  # one line
    assert _texts("A: alpha\nB: beta") == [{"A": "alpha", "B": "beta"}]


def test_option_blocks_need_a_run_from_a():
    assert _texts("A. Smith wrote this.\nWho wrote it?") == []  # one lettered line is prose, not a question
    assert _texts("(B) alone\n(C) again") == []  # a run starts at A
    assert _texts("(A) one\n(C) skipped B") == []
    assert _texts("(A)\n(B) the first is empty") == []  # an empty option breaks the run


def test_the_last_block_is_the_question_answered():
    pieces = list("Example:\n(A) cats\n(B) dogs\nAnswer: (A)\n\nNow:\n(A) tested\n(B) deployed\n") + ["(B)"]
    chosen = chosen_option(pieces, len(pieces) - 1)
    assert chosen is not None and chosen.letter == "B"
    text = "".join(pieces)
    assert "".join(text[i] for i in chosen.positions) == "deployed"
    assert {k: "".join(text[i] for i in v) for k, v in chosen.others.items()} == {"A": "tested"}


def test_positions_are_the_tokens_overlapping_the_option_text():
    # tokens as a BPE tokenizer cuts them: the leading space rides on the option's first word
    prompt = ["Q", "?\n", "(", "A", ")", " yes", " please", "\n", "(", "B", ")", " no", "\n"]
    chosen = chosen_option([*prompt, "(", "A", ")"], len(prompt))
    assert chosen is not None and chosen.letter == "A"
    assert chosen.positions.tolist() == [5, 6] and chosen.others["B"].tolist() == [11]


def test_a_special_token_ends_an_option_and_a_reply():
    prompt = ["<|im_start|>", "user", "\n", "Q", "\n", "(", "A", ")", " a", "\n", "(", "B", ")", " b", "<|im_end|>"]
    assert parse_text(["x", "<|im_end|>"]) == "x" + "\n" * len("<|im_end|>")
    assert piece_offsets(["ab", "", "c"]).tolist() == [0, 2, 2, 3]
    chosen = chosen_option([*prompt, "B", "<|im_end|>"], len(prompt))
    assert chosen is not None and chosen.letter == "B" and chosen.positions.tolist() == [13]
    # the closing markup of the response region is left out with response_end
    assert chosen_option([*prompt, "B", "<|im_end|>", "\n"], len(prompt), len(prompt) + 1) == chosen


def test_no_answer_no_options():
    prompt = ["Q", "\n", "(", "A", ")", " a", "\n", "(", "B", ")", " b", "\n"]
    assert chosen_option([*prompt, "Sure", ",", " here"], len(prompt)) is None  # not a letter
    assert chosen_option([*prompt, "(", "C", ")"], len(prompt)) is None  # no option C
    assert chosen_option(["Hi", "\n", "(", "B", ")"], 2) is None  # no options in the prompt


def test_the_reference_tokenizer_pieces_rebuild_the_text_and_find_the_option(reference):
    from probewatch.data.chat import encode_dialogue
    from probewatch.data.dialogue import Dialogue, Message

    prompt = "Is this real?\n\nChoices:\n (A) Yes, a real user needs this.\n (B) No, this is a test.\n\nAnswer:"
    for reply, letter, meant, other in (
        (" (B)", "B", "No, this is a test.", "Yes, a real user needs this."),
        ("A", "A", "Yes, a real user needs this.", "No, this is a test."),
    ):
        enc = encode_dialogue(reference.tokenizer, Dialogue([Message("user", prompt), Message("assistant", reply)], 1))
        pieces = [reference.tokenizer.decode([i]) for i in enc.input_ids]
        assert "".join(pieces) == enc.text
        end = max(i for i, s in enumerate(enc.scored) if s) + 1
        chosen = chosen_option(pieces, enc.prompt_last + 1, end)
        assert chosen is not None and chosen.letter == letter
        assert "".join(pieces[i] for i in chosen.positions).strip() == meant
        (others,) = chosen.others.values()
        assert "".join(pieces[i] for i in others).strip() == other


def test_a_reply_is_judged_on_its_first_tokens():
    """A streaming reader needs only the reply's first REPLY_PIECES tokens to decide as a reader of all of it."""
    long_tail = [" w"] * (REPLY_PIECES + 10)
    assert answer_letter(reply_text(["(B)", *long_tail])) == "B"
    assert answer_letter(reply_text(["B", *[" "] * (REPLY_PIECES + 10)])) is None  # too long to be a bare letter
    assert answer_letter(reply_text(["B", " "])) == "B"
    assert reply_text(["x"] * (REPLY_PIECES + 1)) == "x" * REPLY_PIECES + "\x00"
