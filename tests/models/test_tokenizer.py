"""The word-level tokenizer and its selection by a model config's text_cfg.tokenizer_kwargs.vocabulary."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from cir.models import create_backbone
from cir.models.tokenizer import WordTokenizer

WORDS = ["make", "it", "blue", "a", "red", "circle"]


def test_ids_follow_clips_layout() -> None:
    tokens = WordTokenizer(WORDS, context_length=8)(["make it blue", "A red  circle"])
    # pad 0, start 1, words from 2 in vocabulary order, end-of-text the largest id (open_clip pools at the argmax)
    assert tokens.tolist() == [[1, 2, 3, 4, 8, 0, 0, 0], [1, 5, 6, 7, 8, 0, 0, 0]]
    assert tokens.dtype == torch.long


def test_a_long_caption_is_cut_and_still_ends_with_end_of_text() -> None:
    tokenizer = WordTokenizer(WORDS, context_length=4)
    assert tokenizer("make it a red circle").tolist() == [[1, 2, 3, 8]]
    assert tokenizer("blue", context_length=6).tolist() == [[1, 4, 8, 0, 0, 0]]


def test_unknown_word_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"\['green'\]"):
        WordTokenizer(WORDS)(["make it green"])


@pytest.mark.parametrize(
    "vocabulary, context_length, message",
    [([], 8, "non-empty"), (["a", "a"], 8, "more than once"), (["Red"], 8, "lowercase"), (["two words"], 8, "single"),
     (["a"], 1, "context_length")],
)
def test_bad_vocabulary(vocabulary, context_length, message) -> None:
    with pytest.raises(ValueError, match=message):
        WordTokenizer(vocabulary, context_length)


def _config(tmp_path, vocab_size: int):
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 8, "vocab_size": vocab_size, "width": 32, "heads": 2, "layers": 1,
                     "tokenizer_kwargs": {"vocabulary": WORDS}},
    }
    path = tmp_path / f"words-{vocab_size}.json"
    path.write_text(json.dumps(config))
    return path


def test_model_config_with_a_vocabulary_gets_the_word_tokenizer(tmp_path) -> None:
    torch.manual_seed(0)
    backbone = create_backbone(str(_config(tmp_path, len(WORDS) + 3)), "none").eval()
    assert isinstance(backbone.tokenizer, WordTokenizer)
    tokens = backbone.tokenize(["make it blue", "a red circle"])
    assert tokens.shape == (2, 8)
    with torch.no_grad():
        features = backbone.encode_text(tokens)
        # open_clip pools at the end-of-text token: the features ignore what the padding after it holds
        padded = tokens.clone()
        padded[:, 6:] = 3
        torch.testing.assert_close(backbone.encode_text(padded), features)
    assert backbone.model.token_embedding.num_embeddings == len(WORDS) + 3


def test_vocab_size_that_does_not_fit_the_vocabulary_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="vocab_size is 100"):
        create_backbone(str(_config(tmp_path, 100)), "none")


def test_configs_without_a_vocabulary_keep_open_clips_tokenizer(build) -> None:
    tokenizer = build().tokenizer
    assert not isinstance(tokenizer, WordTokenizer)
    assert torch.equal(tokenizer(["a dog"]), open_clip.get_tokenizer("cir-tiny")(["a dog"]))
