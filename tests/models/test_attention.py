from __future__ import annotations

import pytest
import torch
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from cir.models import SplitAttention, fuse_attention, split_attention

E, H, N, L = 32, 4, 3, 5


def _mha(batch_first: bool) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first)
    with torch.no_grad():  # MHA initialises biases to zero: make them count
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    return mha.eval()


def _masks(kind: str) -> dict[str, torch.Tensor]:
    causal_bool = torch.ones(L, L, dtype=torch.bool).triu(1)
    if kind == "none":
        return {}
    if kind == "float_causal":
        return {"attn_mask": torch.zeros(L, L).masked_fill(causal_bool, float("-inf"))}
    if kind == "bool_causal":
        return {"attn_mask": causal_bool}
    if kind == "float_per_head":
        return {"attn_mask": torch.randn(N * H, L, L, generator=torch.Generator().manual_seed(3))}
    if kind == "key_padding":
        padding = torch.zeros(N, L, dtype=torch.bool)
        padding[0, -2:] = True
        return {"key_padding_mask": padding, "attn_mask": causal_bool}
    raise AssertionError(kind)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kind", ["none", "float_causal", "bool_causal", "float_per_head", "key_padding"])
def test_split_attention_matches_multihead_attention(batch_first: bool, kind: str) -> None:
    mha = _mha(batch_first)
    split = SplitAttention.from_mha(mha).eval()
    shape = (N, L, E) if batch_first else (L, N, E)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    masks = _masks(kind)
    expected = mha(x, x, x, need_weights=False, **masks)[0]
    got, weights = split(x, x, x, need_weights=False, **masks)
    assert weights is None
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_split_attention_cross_attention_with_other_length() -> None:
    mha = _mha(True)
    split = SplitAttention.from_mha(mha).eval()
    g = torch.Generator().manual_seed(2)
    q, kv = torch.randn(N, L, E, generator=g), torch.randn(N, L + 3, E, generator=g)
    torch.testing.assert_close(split(q, kv, kv)[0], mha(q, kv, kv, need_weights=False)[0], atol=1e-5, rtol=0)


def test_round_trip_restores_the_fused_weights_bit_for_bit() -> None:
    mha = _mha(True)
    mha.out_proj.weight.requires_grad_(False)
    back = SplitAttention.from_mha(mha).to_mha()
    assert back.state_dict().keys() == mha.state_dict().keys()
    for key, value in mha.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    assert back.in_proj_weight.requires_grad and not back.out_proj.weight.requires_grad


def test_split_attention_rejects_unsupported_calls() -> None:
    split = SplitAttention.from_mha(_mha(True))
    x = torch.randn(N, L, E)
    with pytest.raises(NotImplementedError, match="need_weights=False"):
        split(x, x, x, need_weights=True)
    with pytest.raises(ValueError, match="kdim"):
        SplitAttention.from_mha(nn.MultiheadAttention(E, H, kdim=E // 2, vdim=E // 2))


@pytest.mark.parametrize("name", ["cir-tiny", "vit-b-32-mini"])
def test_split_model_gives_the_original_features(name, build, images, captions, vit_b32_mini_config) -> None:
    if name == "vit-b-32-mini":
        name = str(vit_b32_mini_config)
    reference, backbone = build(name), build(name)
    blocks = [m for m in backbone.model.modules() if isinstance(m, ResidualAttentionBlock)]
    assert split_attention(backbone.model) == len(blocks) == 4
    assert not any(isinstance(m, nn.MultiheadAttention) for m in backbone.model.modules())
    x, tokens = images(reference), reference.tokenize(captions)
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_image(x), reference.encode_image(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(backbone.encode_text(tokens), reference.encode_text(tokens), atol=1e-5, rtol=0)


def test_fuse_restores_the_open_clip_state_dict(build) -> None:
    reference, backbone = build(), build()
    split_attention(backbone.model)
    assert fuse_attention(backbone.model) == 4
    fused, original = backbone.model.state_dict(), reference.model.state_dict()
    assert fused.keys() == original.keys()
    assert all(torch.equal(fused[k], original[k]) for k in original)
