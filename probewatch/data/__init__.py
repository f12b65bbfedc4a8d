"""Dialogue data: the JSONL contract, converters from public formats, chat-template encoding."""

from probewatch.data.chat import EncodedDialogue, encode_dialogue, pad_batch, render
from probewatch.data.convert import CONVERTERS, convert_file, detect_format
from probewatch.data.dialogue import Dialogue, Message, iter_dialogues, load_dialogues, parse_dialogue, write_dialogues

__all__ = [
    "CONVERTERS",
    "Dialogue",
    "EncodedDialogue",
    "Message",
    "convert_file",
    "detect_format",
    "encode_dialogue",
    "iter_dialogues",
    "load_dialogues",
    "pad_batch",
    "parse_dialogue",
    "render",
    "write_dialogues",
]
