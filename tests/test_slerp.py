import math

import numpy as np
import pytest
import torch

from cir.slerp import (
    compose,
    image_only,
    method_key,
    normalized_sum,
    parse_method_key,
    slerp,
    text_only,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_slerp(v: np.ndarray, w: np.ndarray, alpha) -> np.ndarray:
    """The paper's formula in float64, written independently of cir.slerp."""
    v, w = _unit(v), _unit(w)
    theta = np.arccos(np.clip((v * w).sum(-1, keepdims=True), -1, 1))
    return _unit((np.sin((1 - alpha) * theta) * v + np.sin(alpha * theta) * w) / np.sin(theta))


def _pair(n: int = 6, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def test_endpoints_are_the_normalised_inputs():
    v, w = _pair()
    torch.testing.assert_close(slerp(v, w, 0.0), torch.from_numpy(_unit(v.numpy())))
    torch.testing.assert_close(slerp(v, w, 1.0), torch.from_numpy(_unit(w.numpy())))


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.8, 0.9])
def test_matches_formula_and_splits_the_angle(alpha):
    v, w = _pair()
    c = slerp(v, w, alpha).double().numpy()
    np.testing.assert_allclose(c, _np_slerp(v.double().numpy(), w.double().numpy(), alpha), atol=1e-6)
    vn, wn = _unit(v.double().numpy()), _unit(w.double().numpy())
    theta = np.arccos((vn * wn).sum(-1))
    np.testing.assert_allclose(np.arccos(np.clip((c * vn).sum(-1), -1, 1)), alpha * theta, atol=1e-4)
    np.testing.assert_allclose(np.arccos(np.clip((c * wn).sum(-1), -1, 1)), (1 - alpha) * theta, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(c, axis=-1), 1.0, atol=1e-6)


def test_one_side_broadcasts():
    v, w = _pair(n=5)
    single = v[0]
    expected = slerp(single.expand_as(w), w, 0.7)
    torch.testing.assert_close(slerp(single, w, 0.7), expected)
    torch.testing.assert_close(slerp(single[None], w, 0.7), expected)
    torch.testing.assert_close(slerp(v, w[0], 0.7), slerp(v, w[0].expand_as(v), 0.7))
    assert slerp(v[0], w[0], 0.7).shape == (16,)


def test_bad_shapes_are_rejected():
    v, w = _pair(n=5)
    with pytest.raises(ValueError, match="broadcast"):
        slerp(v, w[:3], 0.5)
    with pytest.raises(ValueError, match="feature size"):
        slerp(v, w[:, :8], 0.5)


def test_vector_alpha_per_row_and_learnable():
    v, w = _pair(n=4)
    alphas = [0.0, 0.3, 0.8, 1.0]
    alpha = torch.tensor(alphas, requires_grad=True)
    c = slerp(v, w, alpha)
    for i, a in enumerate(alphas):
        torch.testing.assert_close(c[i], slerp(v[i], w[i], a))
    c.sum().backward()
    assert alpha.grad is not None and torch.isfinite(alpha.grad).all() and (alpha.grad != 0).any()


def test_gradients_match_finite_differences():
    v, w = _pair(n=3, d=5)
    v, w = v.double().requires_grad_(), w.double().requires_grad_()
    alpha = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, t: slerp(a, b, t), (v, w, alpha))


def _special_pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    v, u = _pair(n=2, d=8)
    v = torch.nn.functional.normalize(v, dim=-1)
    u = torch.nn.functional.normalize(u - (u * v).sum(-1, keepdim=True) * v, dim=-1)
    just_inside = math.acos(0.9995) * 1.01  # the smallest angles the spherical branch divides by
    return {
        "parallel": (v, v.clone()),
        "parallel_scaled": (v, 2.5 * v),
        "antiparallel": (v, -v),
        "near_antiparallel": (v, -v + 1e-4 * u),
        "near_threshold": (v, math.cos(just_inside) * v + math.sin(just_inside) * u),
    }


@pytest.mark.parametrize("case", list(_special_pairs()))
@pytest.mark.parametrize("alpha_value", [0.3, 0.5])
def test_finite_values_and_gradients_at_degenerate_angles(case, alpha_value):
    v, w = (x.clone().requires_grad_() for x in _special_pairs()[case])
    alpha = torch.full((2,), alpha_value, requires_grad=True)
    c = slerp(v, w, alpha)
    assert torch.isfinite(c).all()
    (c * torch.arange(1.0, 9.0)).sum().backward()
    for name, x in (("v", v), ("w", w), ("alpha", alpha)):
        assert torch.isfinite(x.grad).all(), name


def test_parallel_inputs_give_the_common_direction():
    v, _ = _pair(n=2)
    torch.testing.assert_close(slerp(v, 4 * v, 0.6), torch.from_numpy(_unit(v.numpy())))


def test_fallback_is_normalised_lerp():
    v, w = _pair(n=4)
    vn, wn = _unit(v.double().numpy()), _unit(w.double().numpy())
    near = _unit(vn + 0.01 * wn)  # cos(v, near) > 0.9995
    assert ((vn * near).sum(-1) > 0.9995).all()
    expected = _unit(0.4 * vn + 0.6 * near)
    np.testing.assert_allclose(slerp(torch.from_numpy(vn), torch.from_numpy(near), 0.6).numpy(), expected, atol=1e-7)
    # a lowered threshold sends ordinary pairs through the same branch
    cos = (vn * wn).sum(-1)
    lerp = slerp(v, w, 0.6, parallel_threshold=float(np.abs(cos).min()) - 1e-3)
    np.testing.assert_allclose(lerp.numpy(), _unit(0.4 * vn + 0.6 * wn), atol=1e-6)
    assert not np.allclose(lerp.numpy(), _np_slerp(vn, wn, 0.6), atol=1e-3)


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
def test_half_precision_agrees_with_float32(dtype, atol):
    v, w = _pair(n=8, d=64)
    v, w = v.to(dtype), w.to(dtype)
    out = slerp(v, w, 0.8)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), slerp(v.float(), w.float(), 0.8), atol=atol, rtol=0)
    assert slerp(v, w.float(), 0.8).dtype == torch.float32


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_alpha_out_of_range_is_rejected(bad):
    v, w = _pair()
    with pytest.raises(ValueError, match="alpha"):
        slerp(v, w, bad)


def test_baselines():
    v, w = _pair()
    vn, wn = _unit(v.numpy()), _unit(w.numpy())
    np.testing.assert_allclose(image_only(v, w).numpy(), vn, atol=1e-6)
    np.testing.assert_allclose(text_only(v, w).numpy(), wn, atol=1e-6)
    np.testing.assert_allclose(normalized_sum(v, w).numpy(), _unit(vn + wn), atol=1e-6)
    assert image_only(v[0], w).shape == w.shape
    assert normalized_sum(v.half(), w.half()).dtype == torch.float16


def test_compose_dispatches_and_rejects_bad_methods():
    v, w = _pair()
    torch.testing.assert_close(compose("image", v, w), image_only(v, w))
    torch.testing.assert_close(compose("text", v, w), text_only(v, w))
    torch.testing.assert_close(compose("sum", v, w), normalized_sum(v, w))
    torch.testing.assert_close(compose("slerp", v, w, 0.8), slerp(v, w, 0.8))
    with pytest.raises(ValueError, match="unknown composition method 'lerp'"):
        compose("lerp", v, w)
    with pytest.raises(ValueError, match="needs alpha"):
        compose("slerp", v, w)
    with pytest.raises(ValueError, match="only to method 'slerp'"):
        compose("sum", v, w, 0.5)


@pytest.mark.parametrize(
    "method,alpha,key",
    [("image", None, "image"), ("text", None, "text"), ("sum", None, "sum"), ("slerp", 0.8, "slerp_a0.8"),
     ("slerp", 0.85, "slerp_a0.85"), ("slerp", 1.0, "slerp_a1.0"), ("slerp", 0.0, "slerp_a0.0"), ("slerp", 1, "slerp_a1.0"),
     ("slerp", 0.1 + 0.2, "slerp_a0.3")],
)
def test_method_keys_round_trip(method, alpha, key):
    assert method_key(method, alpha) == key
    parsed = parse_method_key(key)
    assert parsed[0] == method and (parsed[1] is None if alpha is None else math.isclose(parsed[1], alpha, abs_tol=1e-6))


@pytest.mark.parametrize("key", ["slerp", "slerp_a", "slerp_a1.5", "slerp_0.8", "Slerp_a0.8", "image_a0.8", ""])
def test_parse_rejects_malformed_keys(key):
    with pytest.raises(ValueError, match="key"):
        parse_method_key(key)


def test_method_key_rejects_alpha_out_of_range():
    with pytest.raises(ValueError, match="alpha"):
        method_key("slerp", 1.2)
