"""Reading a GGUF file's metadata (not its tensors): the chat template and the vocabulary.

The embedded engine needs two facts before it serves anything: the model's own chat template
(rendered by the platform, so message text is never parsed for control tokens) and the length of
its longest token (how the gateway refuses a prompt too long to fit without tokenizing it). Both
sit in the header of the GGUF file, a sequence of typed key-value pairs; this reads just those.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"

# Value types of the GGUF format: struct codes of the fixed-size ones.
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """The file is not a GGUF file this reader understands."""


@dataclass(slots=True, frozen=True)
class ModelFacts:
    chat_template: str | None
    # The most characters of text one token covers. Vocabularies are stored as text: byte-level
    # BPE spells each byte as one character, SentencePiece spells text as text ("▁" a space, a
    # byte as "<0x41>"); either way a token's stored characters are at least those it covers.
    longest_token_chars: int
    vocab_size: int


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise GGUFError("the file ends inside its header")
    return data


def _scalar(f: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        (length,) = struct.unpack("<Q", _read(f, 8))
        return _read(f, length)
    code = _FIXED.get(kind)
    if code is None:
        raise GGUFError(f"unknown value type {kind}")
    return struct.unpack("<" + code, _read(f, struct.calcsize(code)))[0]


def read_facts(path: str | Path) -> ModelFacts:
    """The chat template (if any), the longest token and the vocabulary's size."""
    template: str | None = None
    longest = vocab = 0
    with open(path, "rb") as f:
        if _read(f, 4) != MAGIC:
            raise GGUFError(f"{path} is not a GGUF file")
        version, _tensors, count = struct.unpack("<IQQ", _read(f, 20))
        if version < 2:
            raise GGUFError(f"GGUF version {version} is too old")
        for _ in range(count):
            key = _scalar(f, _STRING).decode("utf-8", "replace")
            (kind,) = struct.unpack("<I", _read(f, 4))
            if kind != _ARRAY:
                value = _scalar(f, kind)
                if key == "tokenizer.chat_template":
                    template = value.decode("utf-8", "replace")
                continue
            item_kind, items = struct.unpack("<IQ", _read(f, 12))
            if key == "tokenizer.ggml.tokens" and item_kind == _STRING:
                vocab = items
                for _ in range(items):
                    longest = max(longest, len(_scalar(f, _STRING).decode("utf-8", "replace")))
            elif item_kind in _FIXED:
                f.seek(items * struct.calcsize(_FIXED[item_kind]), 1)  # skipped without reading
            else:
                for _ in range(items):
                    _scalar(f, item_kind)
    if not vocab:
        raise GGUFError(f"{path} has no tokenizer.ggml.tokens")
    return ModelFacts(template, longest, vocab)
