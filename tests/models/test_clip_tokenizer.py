"""ClipBPETokenizer gives open_clip's SimpleTokenizer ids exactly, and is what a CLIP backbone tokenizes with."""

from __future__ import annotations

import json
import pickle
import random
import string
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip import tokenizer as oc_tokenizer

from cir.models import clip_tokenizer
from cir.models.clip_tokenizer import ClipBPETokenizer, fast_tokenizer
from cir.models.factory import _tokenizer
from cir.models.tokenizer import WordTokenizer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# Text that open_clip's cleaning changes (or that takes the slow path), with what each one exercises.
AWKWARD = [
    "",
    "   ",
    "A Photo  of\tthe\nDOG ",  # tab and newline: not printable, open_clip's own encode
    "Tom &amp; Jerry",  # an HTML entity, unescaped by ftfy and html.unescape
    "&amp;lt;b&amp;gt; twice escaped",
    "fish & chips",  # "&" without an entity
    "caf\u00e9 cr\u00e8me",  # NFC letters
    "cafe\u0301",  # a combining accent, composed by NFC
    "\uff26\uff55\uff4c\uff4c width",  # fullwidth letters
    "\u201ccurly\u201d \u2018quotes\u2019",
    "\ufb01sh ligature",
    "\x1b[31mred\x1b[0m terminal escapes",
    "mojibake: caf\u00c3\u00a9",
    "line\r\nbreaks\rhere",
    "a bell\x07 and a delete\x7f",
    "emoji \U0001f642 and \u4e2d\u6587 text",
    "numbers 12345 and 3.14, it's we're they'll I'd",
    "<b>bold</b> &amp; tags",
    "WeIrD   CaSe!!! ???",
]


def fixture_strings() -> list[str]:
    """Every string in the real annotation excerpts (CIRR, CIRCO, FashionIQ, GeneCIS captions and ids)."""
    found: list[str] = []

    def walk(value) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for path in sorted(FIXTURES.rglob("*.json")):
        walk(json.loads(path.read_text()))
    return found


def random_texts(count: int, alphabet: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(alphabet, k=rng.randint(0, 60))) for _ in range(count)]


@pytest.fixture(scope="module")
def reference() -> oc_tokenizer.SimpleTokenizer:
    return open_clip.get_tokenizer("ViT-B-32")


def test_a_clip_backbone_tokenizes_with_it(reference) -> None:
    assert isinstance(_tokenizer("ViT-B-32", None), ClipBPETokenizer)
    assert isinstance(reference, oc_tokenizer.SimpleTokenizer)


def test_same_ids_as_open_clip(reference) -> None:
    long_caption = " ".join(["word"] * 74)  # 74 words + start + end = 76 ids; one more fills the context exactly
    texts = [
        *fixture_strings(),
        *AWKWARD,
        long_caption,
        long_caption + " two",
        long_caption + " two three",
        " ".join(["many", "words"] * 100),
        *random_texts(2000, string.printable, seed=0),
        *random_texts(300, string.ascii_letters + " &;#\u00e9\u201c\u00c3\u00a9\u3000\x1b[m", seed=1),
    ]
    assert len(texts) > 2400
    fast = ClipBPETokenizer(reference)
    assert fast(texts).dtype == torch.long
    assert torch.equal(fast(texts), reference(texts))
    for length in (1, 2, 5, 16):
        assert torch.equal(fast(texts[-300:], context_length=length), reference(texts[-300:], context_length=length))
    assert torch.equal(fast("one string"), reference("one string"))
    assert fast([]).shape == reference([]).shape == (0, 77)


def test_plain_text_is_left_as_it_is_by_ftfy_and_html() -> None:
    """The shortcut's premise, checked on the installed ftfy: open_clip's `lower` cleaning of printable ASCII without
    "&" is whitespace_clean + lower. Every one- and two-character string, and random longer ones."""
    alphabet = [chr(c) for c in range(0x20, 0x7F) if chr(c) != "&"]
    plain = [*alphabet, *(a + b for a in alphabet for b in alphabet), *random_texts(3000, "".join(alphabet), seed=2)]
    assert all(clip_tokenizer._plain(text) for text in plain)
    clean = oc_tokenizer.get_clean_fn("lower")
    assert [clean(text) for text in plain] == [oc_tokenizer.whitespace_clean(text).lower() for text in plain]
    # and the check can fail: each of these is changed by the cleaning and is not plain
    for text in ("&amp;", "\u201cx\u201d", "\ufb01", "a\x07b", "e\u0301"):
        assert clean(text) != oc_tokenizer.whitespace_clean(text).lower()
        assert not clip_tokenizer._plain(text)


def test_word_cache_is_bounded(reference, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clip_tokenizer, "WORD_CACHE", 3)
    fast = ClipBPETokenizer(reference)
    texts = ["alpha beta gamma delta", "epsilon alpha zeta", "beta beta eta theta iota"]
    for text in texts:
        assert torch.equal(fast(text), reference(text))
        assert len(fast._words) <= 3


def test_other_tokenizers_are_used_as_they_are(reference) -> None:
    assert isinstance(fast_tokenizer(reference), ClipBPETokenizer)
    for other in (
        oc_tokenizer.SimpleTokenizer(clean="whitespace"),
        oc_tokenizer.SimpleTokenizer(reduction_mask="simple"),
        WordTokenizer(["a", "b"]),
    ):
        assert fast_tokenizer(other) is other
        with pytest.raises(ValueError, match="SimpleTokenizer with 'lower' cleaning"):
            ClipBPETokenizer(other)


def test_survives_pickling_for_loader_workers(reference) -> None:
    fast = ClipBPETokenizer(reference)
    fast(["warm the word cache"])
    copy = pickle.loads(pickle.dumps(fast))
    assert torch.equal(copy(AWKWARD), reference(AWKWARD))
