"""Learned fusions against hand-computed references, and scoring of a learned fusion against the zero-shot path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark, CIRQuery
from cir.evaluation.features import EvalIndex, Features
from cir.evaluation.scoring import score_fusion, score_methods
from cir.fusion import Combiner, SlerpFusion, build_fusion
from cir.slerp import slerp

E1 = torch.tensor([[1.0, 0.0, 0.0]])
E2 = torch.tensor([[0.0, 1.0, 0.0]])


def test_slerp_fusion_on_orthogonal_vectors_is_cos_sin_of_the_quarter_turn():
    fusion = SlerpFusion(0.3)
    out = fusion(E1, E2)
    # theta = pi/2, so slerp = sin((1-a) pi/2) e1 + sin(a pi/2) e2 = cos(a pi/2) e1 + sin(a pi/2) e2
    expected = torch.tensor([[math.cos(0.3 * math.pi / 2), math.sin(0.3 * math.pi / 2), 0.0]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert fusion.alpha.item() == pytest.approx(0.3, abs=1e-7)


def test_learned_alpha_gets_the_chain_rule_gradient_through_the_sigmoid():
    fusion = SlerpFusion(0.3)
    fusion(E1, E2)[0, 1].backward()
    a = 0.3
    # d/dlogit sin(a pi/2) = cos(a pi/2) * pi/2 * a (1 - a)
    expected = math.cos(a * math.pi / 2) * math.pi / 2 * a * (1 - a)
    assert fusion.alpha_logit.grad.item() == pytest.approx(expected, rel=1e-5)


def test_alpha_stays_in_unit_interval_whatever_the_logit():
    fusion = SlerpFusion(0.5)
    v, w = torch.randn(4, 8), torch.randn(4, 8)
    for logit in (-60.0, -3.0, 0.0, 3.0, 60.0):
        with torch.no_grad():
            fusion.alpha_logit.fill_(logit)
        assert 0.0 <= fusion.alpha.item() <= 1.0
        out = fusion(v, w)
        assert torch.isfinite(out).all() and torch.allclose(out.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(fusion(v, w), F.normalize(w, dim=-1), atol=1e-5)  # logit 60: alpha = 1, text only


def test_frozen_alpha_is_a_buffer_and_may_sit_on_the_ends():
    fusion = SlerpFusion(1.0, learn=False)
    assert list(fusion.parameters()) == [] and "alpha_logit" in fusion.state_dict()
    v, w = torch.randn(3, 5), torch.randn(3, 5)
    assert torch.allclose(fusion(v, w), F.normalize(w, dim=-1), atol=1e-6)
    assert torch.allclose(SlerpFusion(0.0, learn=False)(v, w), F.normalize(v, dim=-1), atol=1e-6)


@pytest.mark.parametrize("alpha, learn", [(0.0, True), (1.0, True), (1.2, False), (-0.1, False)])
def test_bad_alpha_is_rejected(alpha, learn):
    with pytest.raises(ValueError, match="alpha"):
        SlerpFusion(alpha, learn)


def test_combiner_starts_as_the_normalised_linear_mix_at_alpha():
    torch.manual_seed(0)
    combiner = Combiner(8, hidden=16, dropout=0.5, alpha=0.7).eval()
    v, w = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    assert torch.allclose(combiner(v, w), F.normalize(0.7 * w + 0.3 * v, dim=-1), atol=1e-6)


def test_combiner_matches_the_clip4cir_formula_with_trained_weights():
    torch.manual_seed(0)
    combiner = Combiner(6, hidden=10, dropout=0.0, alpha=0.5)
    with torch.no_grad():
        for p in combiner.parameters():
            p.normal_(0.0, 0.5)
    v, w = torch.randn(4, 6), torch.randn(4, 6)
    s = dict(combiner.named_parameters())

    def lin(x, name):
        return x @ s[f"{name}.weight"].T + s[f"{name}.bias"]

    proj = torch.cat([lin(w, "text_proj").clamp(min=0), lin(v, "image_proj").clamp(min=0)], dim=1)
    residual = lin(lin(proj, "mix").clamp(min=0), "out")
    gate = torch.sigmoid(lin(lin(proj, "gate.0").clamp(min=0), "gate.3"))
    expected = residual + gate * w + (1 - gate) * v
    expected = expected / expected.norm(dim=1, keepdim=True)
    assert torch.allclose(combiner(v, w), expected, atol=1e-5)


def test_combiner_dropout_acts_only_in_training():
    torch.manual_seed(0)
    combiner = Combiner(6, hidden=64, dropout=0.5)
    with torch.no_grad():
        for p in combiner.parameters():
            p.normal_(0.0, 0.5)
    v, w = torch.randn(4, 6), torch.randn(4, 6)
    combiner.eval()
    assert torch.equal(combiner(v, w), combiner(v, w))
    combiner.train()
    assert not torch.allclose(combiner(v, w), combiner(v, w))


def test_build_fusion_names_and_errors():
    assert isinstance(build_fusion("slerp", 8, alpha=0.8), SlerpFusion)
    combiner = build_fusion("combiner", 8, alpha=0.8, hidden=4, dropout=0.0)
    assert isinstance(combiner, Combiner) and combiner.text_proj.out_features == 4
    with pytest.raises(ValueError, match="unknown fusion 'sum'"):
        build_fusion("sum", 8, alpha=0.8)
    with pytest.raises(ValueError, match="hidden"):
        Combiner(8, hidden=0)


def _toy_split(n_queries: int = 12, n_gallery: int = 20, dim: int = 16) -> tuple[EvalIndex, Features]:
    """Random unit features; query i's caption feature is exactly its target's image feature."""
    g = torch.Generator().manual_seed(0)
    gallery = [f"img{i}" for i in range(n_gallery)]
    pairs = [(i % n_gallery, (i * 7 + 3) % n_gallery) for i in range(n_queries)]
    queries = [CIRQuery(str(q), gallery[r], f"caption {q}", (gallery[t],), (), gallery[t]) for q, (r, t) in enumerate(pairs)]
    index = EvalIndex.build(CIRBenchmark("cirr", "val", queries, gallery))
    image = F.normalize(torch.randn(n_gallery, dim, generator=g), dim=-1)
    text = torch.stack([image[t] for _, t in pairs])
    return index, Features(image, text)


def test_score_fusion_equals_the_zero_shot_slerp_path_and_a_perfect_fusion_scores_100():
    index, feats = _toy_split()
    learned = score_fusion(index, feats, lambda v, w: slerp(v, w, 0.3))
    assert learned == score_methods(index, feats, [("slerp", 0.3)])["slerp_a0.3"]
    assert score_fusion(index, feats, lambda v, w: w)["R@1"] == 100.0
    # a fusion that ignores the caption finds the (random) targets only by chance
    assert score_fusion(index, feats, lambda v, w: v)["R@1"] < 50.0
