"""Attention with separate q/k/v projections, a drop-in for open_clip's nn.MultiheadAttention.

nn.MultiheadAttention keeps q, k and v in one fused `in_proj_weight` and never
calls `out_proj.forward`, so peft cannot put LoRA on the query and value
projections alone (the paper's < 0.5 % trainable setting). `split_attention`
swaps every open_clip ResidualAttentionBlock's MHA for `SplitAttention`, whose
projections are ordinary nn.Linear layers initialised from the fused weights;
`fuse_attention` turns them back into nn.MultiheadAttention so a merged model is
a plain open_clip model again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn


class SplitAttention(nn.Module):
    """Multi-head attention as open_clip calls nn.MultiheadAttention, with separate q/k/v/out Linear layers.

    Returns `(output, None)` like MHA with `need_weights=False`. Masks follow MHA's
    convention: a bool `attn_mask` / `key_padding_mask` is True where attention is
    *not* allowed, a float one is added to the logits; `attn_mask` is (L, S) or
    (N * num_heads, L, S).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        # Weights are always overwritten (from_mha) or loaded, so skip the random init.
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.utils.skip_init(nn.Linear, embed_dim, embed_dim, bias=bias, device=device, dtype=dtype) for _ in range(4)
        )

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> SplitAttention:
        """Copy an MHA's fused projection into separate layers (same outputs, same requires_grad)."""
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "SplitAttention handles MultiheadAttention with kdim == vdim == embed_dim, "
                "add_bias_kv=False and add_zero_attn=False only"
            )
        weight = mha.in_proj_weight
        bias = mha.in_proj_bias
        split = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=bias is not None,
            batch_first=mha.batch_first,
            device=weight.device,
            dtype=weight.dtype,
        )
        biases = bias.chunk(3) if bias is not None else (None, None, None)
        pairs = [*zip((split.q_proj, split.k_proj, split.v_proj), weight.chunk(3), biases)]
        pairs.append((split.out_proj, mha.out_proj.weight, mha.out_proj.bias))
        for proj, w, b in pairs:
            _assign(proj.weight, w)
            if b is not None:
                _assign(proj.bias, b)
        return split

    def to_mha(self) -> nn.MultiheadAttention:
        """Fuse the projections back into an nn.MultiheadAttention (the inverse of `from_mha`)."""
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if type(proj) is not nn.Linear:
                raise TypeError(
                    f"cannot fuse a {type(proj).__name__} projection: merge and unload the LoRA adapters first"
                )
        weight = self.q_proj.weight
        has_bias = self.q_proj.bias is not None
        mha = nn.MultiheadAttention(
            self.embed_dim,
            self.num_heads,
            dropout=self.dropout,
            bias=has_bias,
            batch_first=self.batch_first,
            device=weight.device,
            dtype=weight.dtype,
        )
        projs = (self.q_proj, self.k_proj, self.v_proj)
        _assign(mha.in_proj_weight, torch.cat([p.weight for p in projs]))
        _assign(mha.out_proj.weight, self.out_proj.weight)
        if has_bias:
            _assign(mha.in_proj_bias, torch.cat([p.bias for p in projs]))
            _assign(mha.out_proj.bias, self.out_proj.bias)
        return mha

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise NotImplementedError(
                "SplitAttention does not return attention weights: call it with need_weights=False"
            )
        if query.dim() != 3:
            raise ValueError(f"SplitAttention expects batched 3-D inputs, got query of shape {tuple(query.shape)}")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, tgt_len, _ = query.shape
        src_len = key.shape[1]
        q = self._heads(self.q_proj(query), n, tgt_len)
        k = self._heads(self.k_proj(key), n, src_len)
        v = self._heads(self.v_proj(value), n, src_len)
        mask = _combined_mask(attn_mask, key_padding_mask, n, self.num_heads, tgt_len, src_len, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(n, tgt_len, self.embed_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None

    def _heads(self, x: torch.Tensor, n: int, length: int) -> torch.Tensor:
        return x.view(n, length, self.num_heads, self.head_dim).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


def _assign(param: nn.Parameter, value: torch.Tensor) -> None:
    """Copy `value` into `param` and carry over whether it is trained."""
    with torch.no_grad():
        param.copy_(value)
    param.requires_grad_(value.requires_grad)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """MHA mask -> additive float mask (bool True means 'masked out')."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def _combined_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    n: int,
    heads: int,
    tgt_len: int,
    src_len: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """One additive mask broadcastable to (N, heads, L, S) for scaled_dot_product_attention."""
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, dtype)
        if mask.dim() == 3:
            mask = mask.view(n, heads, tgt_len, src_len)
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, dtype).view(n, 1, 1, src_len)
        mask = padding if mask is None else mask + padding
    return mask


def _swap_block_attention(
    model: nn.Module, select: Callable[[str], bool], source: type[nn.Module], convert: Callable[[nn.Module], nn.Module]
) -> int:
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, ResidualAttentionBlock) and select(name) and type(module.attn) is source:
            module.attn = convert(module.attn)
            count += 1
    return count


def split_attention(model: nn.Module, select: Callable[[str], bool] = lambda name: True) -> int:
    """Replace the MHA of every open_clip ResidualAttentionBlock whose module name passes `select`; returns how many."""
    return _swap_block_attention(model, select, nn.MultiheadAttention, SplitAttention.from_mha)


def fuse_attention(model: nn.Module) -> int:
    """Turn every SplitAttention back into nn.MultiheadAttention; returns how many."""
    return _swap_block_attention(model, lambda name: True, SplitAttention, SplitAttention.to_mha)
