"""The embedding model's window, in tokens: how much of a chunk the model reads.

A sentence-transformers model reads a text up to its `max_seq_length` tokens (256 for the
bundled all-MiniLM-L6-v2: ~1000 characters of English, ~250 of Chinese) and drops the rest
unseen, so the chunker keeps every chunk within it (activities/chunk.py).

Counting a chunk's tokens with the model's own tokenizer costs ~0.4 ms per 1000 characters,
~1 % of the model's time per chunk, on the cores the model uses. For the BERT WordPiece
tokenizers of the sentence-transformers models (the bundled one included), ASCII text is
counted in Python instead, from the same pieces the tokenizer splits it into and a cache of
each word's count: about ten times cheaper, and equal to the tokenizer's count (a test
compares them).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What BertNormalizer(clean_text) drops from ASCII text: control characters but tab, line ends.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# BertPreTokenizer's pieces of lowercased ASCII text: runs of letters and digits, and each
# punctuation character alone; whitespace separates.
_PIECE = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")
_CACHED_WORDS_MAX = 200_000  # the word cache is emptied past this many words


@dataclass(frozen=True)
class TokenBudget:
    """The embedding model's window: the model reads a text up to `limit` tokens (its
    `max_seq_length`, special tokens included) and drops the rest unseen."""

    count: Callable[[str], int]
    limit: int


def model_token_budget(model_path: str) -> TokenBudget | None:
    """The window of the sentence-transformers model in the folder `model_path`; None for a
    model without a fast tokenizer file there (e.g. a model hub name)."""
    from tokenizers import Tokenizer

    folder = Path(model_path)
    if not (folder / "tokenizer.json").is_file():
        return None
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    config = folder / "sentence_bert_config.json"
    limit = json.loads(config.read_text()).get("max_seq_length", 512) if config.exists() else 512
    lock = threading.Lock()  # a tokenizer shared by threads fails with "Already borrowed"

    def exact(text: str) -> int:
        with lock:
            return len(tokenizer.encode(text))

    if not _plain_wordpiece(json.loads((folder / "tokenizer.json").read_text())):
        return TokenBudget(exact, int(limit))
    special = exact("")  # [CLS] and [SEP]
    words: dict[str, int] = {}

    def count(text: str) -> int:
        if not text.isascii() or _CONTROL.search(text):
            return exact(text)
        if len(words) > _CACHED_WORDS_MAX:
            words.clear()
        total = special
        for word in _PIECE.findall(text.lower()):
            tokens = words.get(word)
            if tokens is None:
                with lock:
                    tokens = words[word] = len(tokenizer.model.tokenize(word))
            total += tokens
        return total

    return TokenBudget(count, int(limit))


def _plain_wordpiece(config: dict[str, Any]) -> bool:
    """Whether the tokenizer is BERT's lowercasing WordPiece, whose ASCII pieces `_PIECE`
    finds."""
    normalizer = config.get("normalizer") or {}
    return (
        normalizer.get("type") == "BertNormalizer"
        and normalizer.get("lowercase") is True
        and normalizer.get("clean_text") is True
        and (config.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
        and (config.get("model") or {}).get("type") == "WordPiece"
    )
