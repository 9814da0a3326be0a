import numpy as np
import pytest
import torch

from cir.retrieval import rank_candidates, topk_search


def _integer_features(num: int, dim: int, seed: int) -> torch.Tensor:
    """Small integers: every dot product is exact in any precision and order, and ties are frequent."""
    return torch.randint(-2, 3, (num, dim), generator=torch.Generator().manual_seed(seed)).float()


def _brute_force(queries: np.ndarray, gallery: np.ndarray, exclude: np.ndarray | None) -> list[list[int]]:
    """Full float64 score matrix, reference dropped, stable sort: ties go to the lower gallery index."""
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    rankings = []
    for i, row in enumerate(scores):
        order = np.argsort(-row, kind="stable")
        if exclude is not None and exclude[i] >= 0:
            order = order[order != exclude[i]]
        rankings.append(order.tolist())
    return rankings, scores


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("query_block,gallery_block", [(1024, 65536), (7, 10), (3, 2), (1, 1)])
@pytest.mark.parametrize("k", [1, 5, 200])
def test_topk_matches_brute_force_with_ties(dtype, query_block, gallery_block, k):
    queries = _integer_features(13, 6, seed=0)
    gallery = _integer_features(40, 6, seed=1)
    gallery[20:30] = gallery[5:15]  # exact duplicates
    exclude = torch.randint(-1, 40, (13,), generator=torch.Generator().manual_seed(2))
    exclude[:3] = -1
    exclude[3] = 7
    exclude[4] = 27  # a duplicate whose twin must stay
    expected, scores = _brute_force(queries.numpy(), gallery.numpy(), exclude.numpy())
    got_scores, got_indices = topk_search(queries, gallery.to(dtype), k, exclude=exclude, query_block=query_block, gallery_block=gallery_block)
    k_out = min(k, 39)
    assert got_indices.shape == got_scores.shape == (13, k_out)
    assert got_indices.dtype == torch.int64 and got_scores.dtype == torch.float32
    assert got_indices.tolist() == [row[:k_out] for row in expected]
    np.testing.assert_array_equal(got_scores.numpy(), np.take_along_axis(scores, got_indices.numpy(), axis=1))


def test_without_exclusion_the_whole_gallery_is_ranked():
    queries, gallery = _integer_features(5, 4, seed=3), _integer_features(9, 4, seed=4)
    expected, _ = _brute_force(queries.numpy(), gallery.numpy(), None)
    _, indices = topk_search(queries, gallery, 50, gallery_block=4)
    assert indices.tolist() == expected


def test_continuous_features_match_float64_reference():
    g = torch.Generator().manual_seed(5)
    queries = torch.nn.functional.normalize(torch.randn(30, 32, generator=g), dim=-1)
    gallery = torch.nn.functional.normalize(torch.randn(300, 32, generator=g), dim=-1)
    exclude = torch.arange(30) * 7
    expected, scores = _brute_force(queries.numpy(), gallery.numpy(), exclude.numpy())
    got_scores, got_indices = topk_search(queries, gallery, 10, exclude=exclude, query_block=8, gallery_block=64)
    assert got_indices.tolist() == [row[:10] for row in expected]
    np.testing.assert_allclose(got_scores.numpy(), np.take_along_axis(scores, got_indices.numpy(), axis=1), atol=1e-6)


def test_signed_zero_scores_tie():
    queries = torch.tensor([[-1.0], [1.0]])
    gallery = torch.tensor([[0.0], [-0.0], [0.0], [1.0]])
    _, indices = topk_search(queries, gallery, 4)
    assert indices.tolist() == [[0, 1, 2, 3], [3, 0, 1, 2]]


def test_degenerate_sizes():
    gallery = _integer_features(1, 3, seed=6)
    scores, indices = topk_search(_integer_features(2, 3, seed=7), gallery, 5, exclude=torch.tensor([0, -1]))
    assert indices.shape == scores.shape == (2, 0)
    scores, indices = topk_search(torch.empty(0, 3), _integer_features(4, 3, seed=8), 2)
    assert indices.shape == (0, 2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"k": 0}, "k must be"),
        ({"k": -3}, "k must be"),
        ({"k": 2, "exclude": torch.tensor([0, 1])}, "exclude must be"),
        ({"k": 2, "exclude": torch.tensor([0, 1, 9])}, r"outside \[-1, 6\)"),
        ({"k": 2, "exclude": torch.tensor([0, 1, -2])}, "outside"),
        ({"k": 2, "query_block": 0}, "query_block"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        topk_search(_integer_features(3, 4, seed=9), _integer_features(6, 4, seed=10), **kwargs)


def test_bad_features_are_rejected():
    queries, gallery = _integer_features(3, 4, seed=9), _integer_features(6, 4, seed=10)
    with pytest.raises(ValueError, match="feature size"):
        topk_search(queries, gallery[:, :3], 2)
    gallery[2, 1] = float("nan")
    with pytest.raises(ValueError, match="gallery holds NaN"):
        topk_search(queries, gallery, 2)


@pytest.mark.parametrize("k", [1, 5])
def test_wide_rows_with_ties_across_the_kth_place_match_brute_force(k):
    # 4 x (k + 1) x 128 columns and more: the column-group path, with equal scores straddling the k-th place
    num_gallery = 4 * (k + 1) * 128 + 37
    queries = _integer_features(6, 3, seed=11)
    gallery = _integer_features(num_gallery, 3, seed=12)
    expected, scores = _brute_force(queries.numpy(), gallery.numpy(), None)
    for row, ranking in zip(scores, expected):
        assert row[ranking[k - 1]] == row[ranking[k]]  # the tie these features make sure of
    got_scores, got_indices = topk_search(queries, gallery, k, gallery_block=num_gallery)
    assert got_indices.tolist() == [row[:k] for row in expected]
    np.testing.assert_array_equal(got_scores.numpy(), np.take_along_axis(scores, got_indices.numpy(), axis=1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_bad_value_in_the_last_gallery_block_is_rejected(bad):
    queries, gallery = _integer_features(3, 4, seed=13), _integer_features(10, 4, seed=14)
    gallery[9, 2] = bad
    with pytest.raises(ValueError, match="gallery holds"):
        topk_search(queries, gallery, 2, gallery_block=4)


def test_finite_values_whose_sum_overflows_are_accepted():
    queries = torch.full((2, 4), 0.25)  # scores 3e38 and 1.5e38: finite; the gallery's sum is not
    gallery = torch.full((6, 4), 3.0e38)
    gallery[1::2] *= 0.5
    _, indices = topk_search(queries, gallery, 2, gallery_block=3)
    assert indices.tolist() == [[0, 2], [0, 2]]


def _candidate_reference(scores: np.ndarray, candidates: np.ndarray, exclude: np.ndarray) -> list[list[int]]:
    ranked = []
    for i, row in enumerate(candidates):
        valid = [int(c) for c in row if c >= 0 and c != exclude[i]]
        valid.sort(key=lambda c: (-scores[i, c], c))
        ranked.append(valid + [-1] * (len(row) - len(valid)))
    return ranked


@pytest.mark.parametrize("query_block", [1024, 3])
def test_rank_candidates_matches_brute_force(query_block):
    gen = torch.Generator().manual_seed(11)
    queries, gallery = _integer_features(12, 5, seed=12), _integer_features(30, 5, seed=13)
    gallery[10:15] = gallery[0:5]
    candidates = torch.stack([torch.randperm(30, generator=gen)[:6] for _ in range(12)])
    candidates[:, 5] = torch.where(torch.arange(12) % 2 == 0, -1, candidates[:, 5])
    candidates[1, 0] = -1
    exclude = candidates[:, 1].clone()  # the reference is usually one of the img_set members
    exclude[2] = -1
    exclude[3] = 29 if 29 not in candidates[3] else 28
    _, scores = _brute_force(queries.numpy(), gallery.numpy(), None)
    expected = _candidate_reference(scores, candidates.numpy(), exclude.numpy())
    got = rank_candidates(queries, gallery.half(), candidates, exclude, query_block=query_block)
    assert got.tolist() == expected


def test_rank_candidates_over_the_whole_gallery_agrees_with_topk_search():
    queries, gallery = _integer_features(6, 4, seed=14), _integer_features(20, 4, seed=15)
    exclude = torch.tensor([0, 3, -1, 19, 5, 5])
    ranked = rank_candidates(queries, gallery, torch.arange(20).repeat(6, 1), exclude)
    _, indices = topk_search(queries, gallery, 19, exclude=exclude)
    assert ranked[:, :19].tolist() == indices.tolist()


def test_rank_candidates_rejects_duplicates_and_bad_indices():
    queries, gallery = _integer_features(2, 4, seed=16), _integer_features(8, 4, seed=17)
    with pytest.raises(ValueError, match="twice"):
        rank_candidates(queries, gallery, torch.tensor([[1, 2, 1], [3, -1, -1]]), None)
    with pytest.raises(ValueError, match="candidates holds indices outside"):
        rank_candidates(queries, gallery, torch.tensor([[1, 2, 8], [3, -1, -1]]), None)
