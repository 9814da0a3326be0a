"""Evaluation on the device: features equal CPU's within the precision's tolerance, top-K equals CPU's exactly,
and the merged export of a device-trained LoRA model loads in plain open_clip with the same features."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from cir.data.retrieval_benchmarks import load_benchmarks
from cir.evaluation import run
from cir.evaluation.evaluator import BenchmarkEvaluator
from cir.models import apply_lora, create_backbone, export_open_clip
from cir.retrieval import rank_candidates, topk_search

# Feature tables are kept at fp16 (cir.evaluation.features.Features), so float32 encoding on the device matches CPU to
# fp16 rounding plus summation order; under bf16 autocast (8 mantissa bits) each row keeps its direction
# (worst cosine 0.99994 for ViT-B-32 under CPU autocast).
FLOAT32_ATOL = 2e-3
BF16_MIN_COSINE = 0.999


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_evaluation_features_on_the_device_equal_cpus(target, precision, cirr_root) -> None:
    (bench,) = load_benchmarks("cirr", cirr_root, "val")
    torch.manual_seed(0)
    backbone = create_backbone(target.model, "none").eval()
    evaluator = BenchmarkEvaluator([bench], ["slerp"], [0.8], batch_size=32)
    image_set, text_set = (loader.dataset for loader in evaluator.dataloaders(backbone))
    rows = min(16, len(image_set))
    with torch.no_grad():  # the reference: a plain float32 loop on CPU
        image_ref = backbone.encode_image(torch.stack([image_set[i][1] for i in range(rows)]))
        text_ref = backbone.encode_text(torch.stack([text_set[i][1] for i in range(len(text_set))]))
    run.encode(evaluator, backbone, {"accelerator": target.accelerator, "devices": 1, "precision": precision,
                                     "enable_progress_bar": False})
    ((_, _, feats),) = evaluator.features()
    assert backbone.device.type == target.device
    pairs = [(feats.image[:rows].float().cpu(), image_ref), (feats.text.float().cpu(), text_ref)]
    for got, expected in pairs:
        if precision == "32-true":
            torch.testing.assert_close(got, expected, atol=FLOAT32_ATOL, rtol=0)
        else:
            cosine = F.cosine_similarity(got, expected, dim=-1)
            assert cosine.min() >= BF16_MIN_COSINE, cosine.min()


def exact_features(rows: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """fp16 multiples of 1/8 in [-1, 1]: every inner product is exact in float32 on any device and in any summation
    order, so the two rankings must agree bit for bit, ties (frequent here) included."""
    return (torch.randint(-8, 9, (rows, dim), generator=generator) / 8).half()


def test_top_k_and_candidate_ranking_on_the_device_equal_cpus(first) -> None:
    generator = torch.Generator().manual_seed(0)
    queries, gallery = exact_features(300, 64, generator), exact_features(8192, 64, generator)
    exclude = torch.randint(-1, 8192, (300,), generator=generator)
    cpu = topk_search(queries, gallery, 50, exclude=exclude, gallery_block=2048, query_block=128)
    dev = topk_search(queries.to(first.device), gallery.to(first.device), 50, exclude=exclude, gallery_block=2048,
                      query_block=128)
    assert dev[0].device.type == first.device
    assert torch.equal(dev[0].cpu(), cpu[0]) and torch.equal(dev[1].cpu(), cpu[1])
    candidates = torch.stack([torch.randperm(8192, generator=generator)[:50] for _ in range(300)])
    ranked = rank_candidates(queries.to(first.device), gallery.to(first.device), candidates, exclude)
    assert torch.equal(ranked.cpu(), rank_candidates(queries, gallery, candidates, exclude))


def test_merged_export_of_a_device_model_loads_in_plain_open_clip(first, tmp_path) -> None:
    torch.manual_seed(0)
    backbone = create_backbone(first.model, "none")
    apply_lora(backbone, ("image",), r=16, alpha=16, dropout=0.0)
    with torch.no_grad():  # as if trained: LoRA B starts at zero, which would make the merge a no-op
        for name, param in backbone.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    backbone = backbone.to(first.device).eval()
    size = backbone.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(2)).to(first.device)
    with torch.no_grad():
        expected = backbone.encode_image(images)
    path = export_open_clip(backbone, tmp_path / "tat.pt")
    model = open_clip.create_model(backbone.name, pretrained=str(path), device=first.device).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images, normalize=True), expected, atol=1e-4, rtol=0)
