"""Query composition: spherical interpolation of image and text embeddings, and its baselines.

Every function here L2-normalises its inputs itself (callers may pass raw
encoder outputs), computes in at least float32 (half-precision trigonometry
near theta = 0 loses the angle), and returns unit vectors in the promoted
input dtype, broadcast over a batch where one side is a single vector.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor

METHODS = ("image", "text", "sum", "slerp")

_SLERP_KEY = re.compile(r"slerp_a(\d+(?:\.\d+)?)")


def _prepare(v: Tensor, w: Tensor) -> tuple[Tensor, Tensor, torch.dtype]:
    """Validate shapes, normalise in the compute dtype and broadcast; return the output dtype too."""
    for name, x in (("v", v), ("w", w)):
        if not isinstance(x, Tensor) or x.dim() not in (1, 2) or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor of shape (D,) or (N, D), got {getattr(x, 'shape', type(x))}")
    if v.shape[-1] != w.shape[-1]:
        raise ValueError(f"v and w differ in feature size: {v.shape[-1]} vs {w.shape[-1]}")
    out_dtype = torch.promote_types(v.dtype, w.dtype)
    compute_dtype = torch.promote_types(out_dtype, torch.float32)
    try:
        v, w = torch.broadcast_tensors(F.normalize(v.to(compute_dtype), dim=-1), F.normalize(w.to(compute_dtype), dim=-1))
    except RuntimeError:
        raise ValueError(f"v {tuple(v.shape)} and w {tuple(w.shape)} do not broadcast: batch sizes must match or one side be a single vector") from None
    return v, w, out_dtype


def _alpha_tensor(alpha: float | Tensor, like: Tensor) -> Tensor:
    """Alpha as a column that broadcasts against (N, D); tensors keep their autograd graph (alpha may be learned)."""
    if isinstance(alpha, Tensor):
        if alpha.dim() > 1:
            raise ValueError(f"alpha must be a float, a 0-d tensor or an N-vector, got shape {tuple(alpha.shape)}")
        return alpha.to(device=like.device, dtype=like.dtype).unsqueeze(-1)
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (0 = image only, 1 = text only), got {alpha}")
    return torch.tensor(alpha, device=like.device, dtype=like.dtype)


def slerp(v: Tensor, w: Tensor, alpha: float | Tensor, parallel_threshold: float = 0.9995) -> Tensor:
    """Spherical interpolation from the image embedding v (alpha = 0) to the text embedding w (alpha = 1).

    Where |v . w| > parallel_threshold, sin(theta) is too small to divide by, so
    a normalised linear interpolation is used, as in the paper's code. Both
    branches are evaluated on safe values and selected with torch.where so
    that neither a NaN value nor a NaN gradient can come from the unused one.
    Exactly antiparallel inputs at alpha = 0.5 have no defined direction and
    give the zero vector (finite, not unit norm). Tensor alphas are not range
    checked, so that learned alphas need no device sync.
    """
    v, w, out_dtype = _prepare(v, w)
    a = _alpha_tensor(alpha, v)
    cos = (v * w).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    parallel = cos.abs() > parallel_threshold
    theta = torch.arccos(torch.where(parallel, torch.zeros_like(cos), cos))
    sin_theta = torch.sin(theta)
    spherical = (torch.sin((1.0 - a) * theta) * v + torch.sin(a * theta) * w) / sin_theta
    linear = (1.0 - a) * v + a * w
    spherical, linear = torch.broadcast_tensors(spherical, linear)
    parallel = parallel.expand_as(spherical)
    # The spherical branch is finite everywhere (theta = pi/2 where parallel), so where() is NaN-safe.
    return F.normalize(torch.where(parallel, linear, spherical), dim=-1).to(out_dtype)


def image_only(v: Tensor, w: Tensor) -> Tensor:
    """Baseline: rank by the reference image alone (the caption is ignored)."""
    v, _, out_dtype = _prepare(v, w)
    return v.to(out_dtype)


def text_only(v: Tensor, w: Tensor) -> Tensor:
    """Baseline: rank by the caption alone (the reference image is ignored)."""
    _, w, out_dtype = _prepare(v, w)
    return w.to(out_dtype)


def normalized_sum(v: Tensor, w: Tensor) -> Tensor:
    """Baseline: the normalised sum of the normalised embeddings (the chord midpoint, not slerp at 0.5 in general)."""
    v, w, out_dtype = _prepare(v, w)
    return F.normalize(v + w, dim=-1).to(out_dtype)


def _check_method(method: str, alpha: float | Tensor | None) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown composition method {method!r}; expected one of {METHODS}")
    if method == "slerp" and alpha is None:
        raise ValueError("method 'slerp' needs alpha (the text weight in [0, 1])")
    if method != "slerp" and alpha is not None:
        raise ValueError(f"alpha applies only to method 'slerp', not {method!r}")


def compose(method: str, v: Tensor, w: Tensor, alpha: float | Tensor | None = None) -> Tensor:
    """Compose the query embedding with one of METHODS; alpha is given for 'slerp' only."""
    _check_method(method, alpha)
    if method == "image":
        return image_only(v, w)
    if method == "text":
        return text_only(v, w)
    if method == "sum":
        return normalized_sum(v, w)
    return slerp(v, w, alpha)


def _format_alpha(alpha: float) -> str:
    """Shortest fixed-point form with at least one decimal: 0.8 -> '0.8', 1 -> '1.0', 0.85 -> '0.85'."""
    text = f"{alpha:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def method_key(method: str, alpha: float | None = None) -> str:
    """The name a composition is reported under in metrics.json, e.g. 'sum' or 'slerp_a0.8'."""
    _check_method(method, alpha)
    if method != "slerp":
        return method
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    return f"slerp_a{_format_alpha(alpha)}"


def parse_method_key(key: str) -> tuple[str, float | None]:
    """Inverse of method_key: 'slerp_a0.8' -> ('slerp', 0.8), 'image' -> ('image', None)."""
    if key in METHODS and key != "slerp":
        return key, None
    match = _SLERP_KEY.fullmatch(key)
    if match is None:
        raise ValueError(f"not a method key: {key!r}; expected one of 'image', 'text', 'sum' or 'slerp_a<alpha>' such as 'slerp_a0.8'")
    alpha = float(match.group(1))
    if alpha > 1.0:
        raise ValueError(f"method key {key!r}: alpha must lie in [0, 1]")
    return "slerp", alpha
