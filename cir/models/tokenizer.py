"""A word-level tokenizer for models trained on a closed vocabulary (the generated benchmark's captions).

open_clip's BPE tokenizer brings a 49,408-row token embedding, which would be
most of the parameters (and of the optimiser's work) of a CLIP with a few
hundred thousand weights; a closed vocabulary needs one row per word. A model
config selects it by listing the words in `text_cfg.tokenizer_kwargs.vocabulary`
(open_clip passes `tokenizer_kwargs` through its configs and ignores them when
building the model), e.g. cir/models/configs/cir-demo.json.

Ids follow CLIP's layout: 0 pads, start-of-text comes first and end-of-text is
the largest id, because open_clip's text tower pools at the argmax token id.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

VOCABULARY_KEY = "vocabulary"
_SPECIAL_TOKENS = 3  # pad, start-of-text, end-of-text


class WordTokenizer:
    """Lowercased, whitespace-split words -> ids; a word outside the vocabulary is an error, not a silent <unk>."""

    pad_token_id = 0
    sot_token_id = 1

    def __init__(self, vocabulary: Sequence[str], context_length: int = 77) -> None:
        words = list(vocabulary)
        if not words:
            raise ValueError("a word tokenizer needs a non-empty vocabulary")
        bad = [w for w in words if not isinstance(w, str) or not w or w != w.lower() or len(w.split()) != 1]
        if bad:
            raise ValueError(f"vocabulary entries must be single lowercase words, got {bad[:5]}")
        duplicates = sorted({w for w in words if words.count(w) > 1})
        if duplicates:
            raise ValueError(f"vocabulary lists words more than once: {duplicates[:5]}")
        if context_length < 2:
            raise ValueError(f"context_length must hold start and end of text (>= 2), got {context_length}")
        self.words = words
        self.word_ids = {w: i + 2 for i, w in enumerate(words)}
        self.eot_token_id = len(words) + 2
        self.vocab_size = len(words) + _SPECIAL_TOKENS
        self.context_length = context_length

    def encode(self, text: str) -> list[int]:
        words = text.lower().split()
        unknown = [w for w in words if w not in self.word_ids]
        if unknown:
            raise ValueError(
                f"caption {text!r} has word(s) {unknown} outside the tokenizer's {len(self.words)}-word vocabulary"
            )
        return [self.word_ids[w] for w in words]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """(N, context_length) LongTensor; too long a caption is cut and still ends with end-of-text (as open_clip)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        result = torch.full((len(texts), length), self.pad_token_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id][:length]
            ids[-1] = self.eot_token_id
            result[row, : len(ids)] = torch.tensor(ids)
        return result
