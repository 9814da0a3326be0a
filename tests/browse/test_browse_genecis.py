"""The page on GeneCIS: a benchmark query ranks only its own gallery, and the per-query ranks average to the
evaluation's Recall@K; tiles show the object crop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cir.browse.render import thumbnail
from cir.browse.session import Gallery, benchmark_query, search
from cir.data.retrieval_benchmarks.genecis import load_genecis
from cir.evaluation.features import EvalIndex, Features
from cir.evaluation.scoring import score_methods


def genecis_gallery(root, task: str) -> Gallery:
    bench = load_genecis(root, task)
    index = EvalIndex.build(bench)
    generator = torch.Generator().manual_seed(1)
    feats = Features(F.normalize(torch.randn(len(index.image_ids), 16, generator=generator), dim=-1),
                     F.normalize(torch.randn(len(index.texts), 16, generator=generator), dim=-1))
    return Gallery("A", bench, index, feats)


def test_benchmark_queries_rank_their_own_gallery_as_the_evaluation(genecis_root):
    for task in ("focus_object", "focus_attribute"):
        gallery = genecis_gallery(genecis_root, task)
        ranks = []
        for row, query in enumerate(gallery.bench.queries):
            result = search(gallery, benchmark_query(gallery, row), "slerp", 0.8, 5, 1000)
            own = {gallery.bench.gallery.index(image_id) for image_id in query.subset}
            assert set(result.rows) <= own and len(result.rows) == min(5, len(own))
            assert result.scores == sorted(result.scores, reverse=True)
            ranks.append(result.metrics["rank"])
        expected = score_methods(gallery.index, gallery.feats, [("slerp", 0.8)])["slerp_a0.8"]
        recall = {f"R@{k}": 100.0 * sum(r <= k for r in ranks) / len(ranks) for k in (1, 2, 3)}
        assert recall == pytest.approx(expected, abs=1e-9)


def test_tiles_show_the_crop(genecis_root):
    gallery = genecis_gallery(genecis_root, "change_attribute")
    image_id = gallery.bench.gallery[0]
    path = gallery.bench.image_path(image_id)
    assert thumbnail(path, gallery.bench.crops[image_id]) != thumbnail(path)
