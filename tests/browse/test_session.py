"""The page's query / compare logic against cir.evaluate's own scoring of the same features."""

from __future__ import annotations

import math

import pytest
import torch

from cir.browse.session import (
    QueryError,
    benchmark_query,
    disagreements,
    find_queries,
    search,
    slerp_alpha,
    target_ranks,
    upload_query,
)
from cir.evaluation.scoring import score_methods


def brute_force_order(gallery, row, method, alpha):
    """Gallery rows by descending score in numpy-free plain torch, the reference dropped where the protocol does."""
    from cir.slerp import compose

    query = benchmark_query(gallery, row)
    vector = compose(method, query.image[None], query.text[None], slerp_alpha(method, alpha))[0]
    scores = gallery.vectors @ vector
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return [i for i in order if i != query.exclude]


@pytest.mark.parametrize("method", ["image", "text", "sum", "slerp"])
def test_search_ranks_like_a_full_sort_and_drops_the_reference(cirr_gallery, method):
    for row in range(len(cirr_gallery.bench.queries)):
        result = search(cirr_gallery, benchmark_query(cirr_gallery, row), method, 0.7, 5, 1000)
        expected = brute_force_order(cirr_gallery, row, method, 0.7)
        assert result.rows == expected[:5]
        assert int(cirr_gallery.index.exclude[row]) not in result.rows
        assert result.scores == sorted(result.scores, reverse=True)
        target = int(cirr_gallery.index.target[row])
        assert result.metrics["rank"] == expected.index(target) + 1
        assert result.targets == {target}


def test_per_query_metrics_average_to_the_evaluation_numbers(cirr_gallery, circo_gallery):
    """Recall@K and CIRR Recall_subset@K from per-query ranks, CIRCO mAP@K from per-query AP: as score_methods."""
    for gallery in (cirr_gallery, circo_gallery):
        results = [search(gallery, benchmark_query(gallery, r), "slerp", 0.8, 10, 1000) for r in range(len(gallery.bench.queries))]
        official = score_methods(gallery.index, gallery.feats, [("slerp", 0.8)])["slerp_a0.8"]
        for k in (1, 5, 10):
            assert 100 * sum(r.metrics["rank"] <= k for r in results) / len(results) == pytest.approx(official[f"R@{k}"])
        if gallery.bench.name == "cirr":
            for k in (1, 2, 3):
                hits = sum(r.metrics["subset rank"] <= k for r in results)
                assert 100 * hits / len(results) == pytest.approx(official[f"Rsub@{k}"])
        else:
            for k in (5, 10, 25):
                mean_ap = sum(r.metrics[f"AP@{k}"] for r in results) / len(results)
                assert mean_ap == pytest.approx(official[f"mAP@{k}"])
            assert all(len(r.targets) == 3 for r in results)


def test_target_ranks_match_each_query_and_cut_at_depth(cirr_gallery):
    ranks = target_ranks(cirr_gallery, "sum", 0.5, 1000)
    one_by_one = [search(cirr_gallery, benchmark_query(cirr_gallery, r), "sum", 0.5, 1, 1000).metrics["rank"]
                  for r in range(len(ranks))]
    assert ranks.tolist() == one_by_one
    shallow = target_ranks(cirr_gallery, "sum", 0.5, 3)
    assert [r if r <= 3 else math.inf for r in one_by_one] == shallow.tolist()


def test_a_perfect_text_query_ranks_its_target_first(gallery_factory):
    gallery = gallery_factory()
    target = int(gallery.index.target[0])
    gallery.feats.text[gallery.index.text_rows[0]] = gallery.vectors[target]
    assert search(gallery, benchmark_query(gallery, 0), "text", 0.0, 3, 1000).metrics["rank"] == 1


def test_disagreements_sort_by_rank_ratio_and_skip_ties():
    a = torch.tensor([1.0, 500.0, 7.0, math.inf, 3.0, math.inf])
    b = torch.tensor([50.0, 1000.0, 7.0, 2.0, 1.0, math.inf])
    rows = disagreements(a, b, depth=1000, limit=10)
    assert [r for r, _, _ in rows] == [3, 0, 4, 1]  # inf -> 2 (clamped to 1001) first; 1 -> 50 before 500 -> 1000
    assert rows[1] == (0, 1.0, 50.0)
    assert disagreements(a, b, depth=1000, limit=2) == rows[:2]


def test_find_queries_searches_and_filters(cirr_gallery):
    ranks = torch.tensor([1.0, 20.0] * 6)
    bench = cirr_gallery.bench
    assert find_queries(bench, "RED", ranks, "all", 10, 100) == [1, 3, 5, 7, 9, 11]
    assert find_queries(bench, "", ranks, "found", 10, 100) == [0, 2, 4, 6, 8, 10]
    assert find_queries(bench, "", ranks, "missed", 10, 3) == [1, 3, 5]
    assert find_queries(bench, "caption 1", ranks, "all", 10, 100) == [1, 10, 11]
    with pytest.raises(QueryError, match="filter"):
        find_queries(bench, "", ranks, "some", 10, 100)


def test_bad_method_and_empty_caption_are_query_errors():
    assert slerp_alpha("slerp", 0.25) == 0.25 and slerp_alpha("sum", 0.25) is None
    with pytest.raises(QueryError, match="unknown method"):
        slerp_alpha("product", 0.5)
    with pytest.raises(QueryError, match="relative caption"):
        upload_query(None, None, "   ", "slerp")
