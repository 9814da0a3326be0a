"""open_clip's CLIP BPE tokenizer: the same ids at about a seventh of the CPU (the training loader's tokens path).

open_clip's SimpleTokenizer spends about 75 us on a short caption: ftfy's
fix_text (20 us) runs a dozen fixers over text that is nearly always plain
ASCII, every word is byte-encoded and looked up again, and each row of the
result is filled from its own small tensor (20 us). In the loader's workers that
was 0.05-0.08 of the decode + crop + resize floor (benchmarks/README.md, issue 33).
`ClipBPETokenizer` removes those three costs and nothing else:

- Cleaning. For printable ASCII text without "&", open_clip's `lower` cleaning
  (ftfy.fix_text, html.unescape twice, strip, whitespace_clean, lower) equals
  whitespace_clean + lower: html.unescape returns text without "&" unchanged,
  ftfy's encoding fix returns ASCII unchanged, its HTML fix needs "&", and each
  of its other fixers (C1 controls, ligatures, widths, curly quotes, line
  breaks, surrogates, terminal escapes, control characters, NFC) maps only
  characters outside 0x20-0x7E. tests/models/test_clip_tokenizer.py checks
  this against the installed ftfy, so an ftfy that starts changing such text
  fails the suite instead of changing tokens. Any other text goes through
  open_clip's own `encode`.
- Words. The ids of a word (one match of open_clip's pattern) depend on the
  word alone, so they are remembered (up to WORD_CACHE words, then forgotten).
- The tensor is made once from padded rows, through numpy.

Any tokenizer other than a SimpleTokenizer with `lower` cleaning and plain
truncation is used as it is (`fast_tokenizer`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from open_clip import tokenizer as oc_tokenizer

WORD_CACHE = 1 << 18  # words remembered before the cache is cleared: bounded memory on open-vocabulary corpora


def _plain(text: str) -> bool:
    """Text whose open_clip `lower` cleaning is whitespace_clean + lower (see the module docstring)."""
    return text.isascii() and text.isprintable() and "&" not in text


class ClipBPETokenizer:
    """Same ids as `tokenizer(texts)` (an open_clip SimpleTokenizer with `lower` cleaning), computed faster."""

    def __init__(self, tokenizer: oc_tokenizer.SimpleTokenizer) -> None:
        if not handles(tokenizer):
            raise ValueError(f"ClipBPETokenizer needs a SimpleTokenizer with 'lower' cleaning, got {tokenizer!r}")
        self.tokenizer = tokenizer
        self.context_length: int = tokenizer.context_length
        self.vocab_size: int = tokenizer.vocab_size
        self.sot_token_id: int = tokenizer.sot_token_id
        self.eot_token_id: int = tokenizer.eot_token_id
        self._words: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        """open_clip's SimpleTokenizer.encode(text)."""
        if not _plain(text):
            return self.tokenizer.encode(text)
        tok, words, ids = self.tokenizer, self._words, []
        for word in tok.pat.findall(oc_tokenizer.whitespace_clean(text).lower()):
            word_ids = words.get(word)
            if word_ids is None:
                if len(words) >= WORD_CACHE:
                    words.clear()
                unicode_word = "".join(tok.byte_encoder[b] for b in word.encode("utf-8"))
                word_ids = words[word] = [tok.encoder[piece] for piece in tok.bpe(unicode_word).split(" ")]
            ids += word_ids
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """LongTensor[N, context_length]: start, ids, end, zeros; cut to the context with end last, as open_clip does."""
        length = context_length or self.context_length
        rows = []
        for text in [texts] if isinstance(texts, str) else texts:
            row = [self.sot_token_id, *self.encode(text)]
            if len(row) >= length:
                del row[length - 1 :]
            row.append(self.eot_token_id)
            row += [0] * (length - len(row))
            rows.append(row)
        return torch.from_numpy(np.array(rows, dtype=np.int64).reshape(len(rows), length))  # 3x torch.tensor's speed


def handles(tokenizer: object) -> bool:
    """Whether ClipBPETokenizer reproduces `tokenizer` (open_clip's default CLIP tokenizer)."""
    lower = getattr(oc_tokenizer, "_clean_lower", None)  # open_clip's `lower` cleaning (get_clean_fn("lower"))
    return (
        type(tokenizer) is oc_tokenizer.SimpleTokenizer
        and lower is not None
        and getattr(tokenizer, "clean_fn", None) is lower
        and getattr(tokenizer, "reduction_fn", None) is None
    )


def fast_tokenizer(tokenizer):
    """ClipBPETokenizer(tokenizer) where it gives the same ids, else `tokenizer` itself."""
    return ClipBPETokenizer(tokenizer) if handles(tokenizer) else tokenizer
