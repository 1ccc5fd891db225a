"""The model's window as the chunker counts it: equal to the model's own tokenizer."""

from __future__ import annotations

import random

from tokenizers import Tokenizer

from activities.embed import bundled_model_path
from activities.token_budget import model_token_budget
from tests.documents import lorem

ASCII = "ab_c$%^&*()0123456789xyzQWE \t\n\r.,;:'\"`~|\\/<>?![]{}+=-\x00\x01\x0b\x0c\x1f\x7f"


def test_the_bundled_models_window_is_counted_as_its_tokenizer_counts() -> None:
    """The Python count of ASCII text (and the tokenizer's, for the rest) gives the model's
    own token count, [CLS] and [SEP] included, for prose, punctuation, control characters,
    words past WordPiece's 100 characters and non-ASCII text."""
    budget = model_token_budget(bundled_model_path())
    assert budget is not None and budget.limit == 256
    tokenizer = Tokenizer.from_file(f"{bundled_model_path()}/tokenizer.json")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    rng = random.Random(5)
    texts = [
        *(lorem(5, seed=seed)[:1000] for seed in range(20)),
        *("".join(rng.choice(ASCII) for _ in range(rng.randint(0, 400))) for _ in range(300)),
        "x" * 150 + " short " + "Supercalifragilistic" * 6,
        "",
        "   \n\n  ",
        "café naïve Ünïcode — “quotes” 東京は日本の首都です",
    ]
    for text in [*texts, *texts]:  # the second time from the word cache
        assert budget.count(text) == len(tokenizer.encode(text).ids), repr(text)


def test_a_model_folder_without_a_tokenizer_file_has_no_budget(tmp_path: object) -> None:
    assert model_token_budget(str(tmp_path)) is None
    assert model_token_budget("sentence-transformers/all-MiniLM-L6-v2") is None
