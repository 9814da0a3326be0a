import json
import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cir.metrics import MeanAveragePrecisionAtK, RecallAtK, map_at_k, recall_at_k
from cir.retrieval import rank_candidates, topk_search

RECALL_KS = (1, 5, 10, 50)
MAP_KS = (5, 10, 25, 50)


def _problem(num_queries: int = 40, num_gallery: int = 30, seed: int = 0) -> dict[str, torch.Tensor]:
    """Integer features (exact scores, many ties), duplicated gallery rows, some targets equal to the reference."""
    gen = torch.Generator().manual_seed(seed)
    gallery = torch.randint(-2, 3, (num_gallery, 5), generator=gen).float()
    gallery[num_gallery // 2 :: 3] = gallery[: len(gallery[num_gallery // 2 :: 3])]
    reference = torch.randint(0, num_gallery, (num_queries,), generator=gen)
    target = torch.randint(0, num_gallery, (num_queries,), generator=gen)
    target[::7] = reference[::7]
    queries = gallery[target] + torch.randint(-1, 2, (num_queries, 5), generator=gen)  # targets rank high, not always first
    positives = torch.full((num_queries, 6), -1)
    for i in range(num_queries):  # like CIRCO: the target plus 0 to 5 further ground truths
        count = int(torch.randint(1, 7, (1,), generator=gen))
        others = torch.randperm(num_gallery, generator=gen)
        positives[i, :count] = torch.cat([target[i : i + 1], others[others != target[i]]])[:count]
    return {"queries": queries, "gallery": gallery, "reference": reference, "target": target, "positives": positives}


def _np_rankings(p: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """Full score matrix, stable argsort (lower index wins ties), reference removed."""
    scores = p["queries"].double().numpy() @ p["gallery"].double().numpy().T
    return [order[order != ref] for order, ref in zip(np.argsort(-scores, axis=1, kind="stable"), p["reference"].numpy())]


def _np_recall(rankings, target, ks) -> dict[int, float]:
    return {k: 100.0 * np.mean([t in r[:k] for r, t in zip(rankings, target)]) for k in ks}


def _np_map(rankings, positives, ks) -> dict[int, float]:
    result = {}
    for k in ks:
        aps = []
        for ranking, pos in zip(rankings, positives):
            gt = {int(g) for g in pos if g >= 0}
            hits, total = 0, 0.0
            for i, item in enumerate(ranking[:k], start=1):
                if item in gt:
                    hits += 1
                    total += hits / i
            aps.append(total / min(k, len(gt)))
        result[k] = 100.0 * np.mean(aps)
    return result


def _topk(p: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    return topk_search(p["queries"], p["gallery"], k, exclude=p["reference"], gallery_block=7)[1]


def test_recall_matches_brute_force_including_k_beyond_gallery():
    p = _problem()
    expected = _np_recall(_np_rankings(p), p["target"].numpy(), RECALL_KS)
    got = recall_at_k(_topk(p, max(RECALL_KS)), p["target"], RECALL_KS)
    assert got.keys() == expected.keys()
    for k in RECALL_KS:
        assert got[k] == pytest.approx(expected[k], abs=1e-9)
    assert got[50] < 100.0  # targets equal to the reference are misses even when K exceeds the gallery


def test_map_matches_brute_force_including_k_beyond_gallery():
    p = _problem(seed=1)
    expected = _np_map(_np_rankings(p), p["positives"].numpy(), MAP_KS)
    got = map_at_k(_topk(p, max(MAP_KS)), p["positives"], MAP_KS)
    for k in MAP_KS:
        assert got[k] == pytest.approx(expected[k], abs=1e-9)


def test_recall_by_hand():
    topk = torch.tensor([[3, 1, 2], [0, 2, 1], [5, 4, -1]])
    target = torch.tensor([1, 7, 5])
    # query 0 hits at position 2, query 1 never, query 2 at position 1
    assert recall_at_k(topk, target, (1, 2, 3, 10)) == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 200 / 3, 10: 200 / 3})


def test_target_equal_to_reference_is_a_miss():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    reference = torch.tensor([0, 2])
    topk = topk_search(queries, gallery, 10, exclude=reference)[1]
    assert recall_at_k(topk, reference, (1, 2)) == {1: 0.0, 2: 0.0}
    assert recall_at_k(topk, torch.tensor([2, 1]), (1, 2)) == {1: 100.0, 2: 100.0}


def test_map_by_hand():
    topk = torch.tensor([[1, 9, 2, 8, 3], [7, 6, 5, 4, 3]])
    positives = torch.tensor([[1, 2, 3, 4], [5, -1, -1, -1]])
    # query 0: hits at ranks 1, 3, 5 with precisions 1, 2/3, 3/5 and 4 ground truths
    #   AP@1 = 1/1, AP@3 = (1 + 2/3)/3, AP@5 = (1 + 2/3 + 3/5)/4
    # query 1: one hit at rank 3, precision 1/3, 1 ground truth
    #   AP@1 = 0, AP@3 = 1/3, AP@5 = 1/3
    expected = {1: 100 * (1 + 0) / 2, 3: 100 * (5 / 9 + 1 / 3) / 2, 5: 100 * (17 / 60 * 2 + 1 / 3) / 2}
    assert map_at_k(topk, positives, (1, 3, 5)) == pytest.approx(expected)
    # fewer retrieved than K: AP@10 still divides by min(10, #gt) = 4 for query 0
    assert map_at_k(topk[:1, :3], positives[:1], (10,)) == pytest.approx({10: 100 * (1 + 2 / 3) / 4})


def test_map_differs_from_torchmetrics_normaliser():
    # one of two ground truths retrieved at rank 1: CIRCO AP@5 = 1/2, hit-normalised AP would be 1
    assert map_at_k(torch.tensor([[0, 5, 6, 7, 8]]), torch.tensor([[0, 1]]), (5,)) == {5: 50.0}


def test_bad_inputs_are_rejected():
    topk = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="target holds -1"):
        recall_at_k(topk, torch.tensor([0, -1]), (1,))
    with pytest.raises(ValueError, match="shape"):
        recall_at_k(topk, torch.tensor([0]), (1,))
    with pytest.raises(ValueError, match="no ground truth"):
        map_at_k(topk, torch.tensor([[0, -1], [-1, -1]]), (1,))
    with pytest.raises(ValueError, match="positives lists the same"):
        map_at_k(topk, torch.tensor([[0, 0], [1, -1]]), (1,))
    with pytest.raises(ValueError, match="topk lists the same"):
        map_at_k(torch.tensor([[0, 0], [1, 0]]), torch.tensor([[0, -1], [1, -1]]), (2,))
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(topk, torch.tensor([0, 1]), (0, 5))
    with pytest.raises(ValueError, match="topk must be"):
        recall_at_k(topk.float(), torch.tensor([0, 1]), (1,))


def test_zero_queries_raise():
    with pytest.raises(ValueError, match="no queries"):
        recall_at_k(torch.empty(0, 5, dtype=torch.long), torch.empty(0, dtype=torch.long), (1,))
    with pytest.raises(ValueError, match="no queries"):
        map_at_k(torch.empty(0, 5, dtype=torch.long), torch.empty(0, 3, dtype=torch.long), (1,))
    with pytest.warns(UserWarning, match="before the ``update``"), pytest.raises(ValueError, match="no queries"):
        RecallAtK().compute()


def test_classes_accumulate_batches_like_one_call():
    p = _problem(num_queries=50, seed=2)
    topk = _topk(p, 50)
    recall, mean_ap = RecallAtK(), MeanAveragePrecisionAtK()
    for rows in (slice(0, 17), slice(17, 18), slice(18, 50)):
        recall.update(topk[rows], p["target"][rows])
        mean_ap.update(topk[rows], p["positives"][rows])
    rankings = _np_rankings(p)
    expected_recall = _np_recall(rankings, p["target"].numpy(), RECALL_KS)
    expected_map = _np_map(rankings, p["positives"].numpy(), MAP_KS)
    assert recall.compute() == pytest.approx({f"R@{k}": v for k, v in expected_recall.items()}, abs=1e-9)
    assert mean_ap.compute() == pytest.approx({f"mAP@{k}": v for k, v in expected_map.items()}, abs=1e-5)


def test_recall_subset_with_rank_candidates():
    p = _problem(num_queries=12, seed=3)
    gen = torch.Generator().manual_seed(4)
    subsets = torch.stack([torch.randperm(30, generator=gen)[:6] for _ in range(12)])
    subsets[subsets == p["reference"][:, None]] = -1
    subsets[:, 0] = p["reference"]  # CIRR img_sets contain the reference
    subsets[::3, 5] = -1  # padding
    target = torch.where(subsets[:, 2] >= 0, subsets[:, 2], subsets[:, 3])
    scores = p["queries"].double().numpy() @ p["gallery"].double().numpy().T
    expected = {}
    for k in (1, 2, 3):
        hits = []
        for i in range(12):
            members = sorted((int(c) for c in subsets[i] if c >= 0 and c != p["reference"][i]), key=lambda c: (-scores[i, c], c))
            hits.append(int(target[i]) in members[:k])
        expected[f"Rsub@{k}"] = 100.0 * np.mean(hits)
    metric = RecallAtK(ks=(1, 2, 3), prefix="Rsub")
    metric.update(rank_candidates(p["queries"], p["gallery"], subsets, p["reference"]), target)
    assert metric.compute() == pytest.approx(expected, abs=1e-9)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, splits: list[list[int]], out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        p = _problem(num_queries=sum(map(sum, splits)), seed=5)
        topk = _topk(p, 50)
        results = []
        start = 0
        for split in splits:
            rows = slice(start + sum(split[:rank]), start + sum(split[: rank + 1]))
            start += sum(split)
            recall, mean_ap = RecallAtK(), MeanAveragePrecisionAtK()
            if rows.stop > rows.start:
                recall.update(topk[rows], p["target"][rows])
                mean_ap.update(topk[rows], p["positives"][rows])
            results.append({**recall.compute(), **mean_ap.compute()})
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_ddp_sync_equals_single_process(tmp_path):
    # two scenarios over disjoint query ranges: 7 / 3 queries per rank, and all 5 on rank 0 with none on rank 1.
    # fork, not spawn: a spawned child re-imports torchmetrics (about 10 s of CPU each on a small machine)
    splits = [[7, 3], [5, 0]]
    mp.start_processes(_ddp_worker, args=(2, _free_port(), splits, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    p = _problem(num_queries=15, seed=5)
    topk = _topk(p, 50)
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for scenario, rows in enumerate((slice(0, 10), slice(10, 15))):
        expected = {
            **{f"R@{k}": v for k, v in recall_at_k(topk[rows], p["target"][rows], RECALL_KS).items()},
            **{f"mAP@{k}": v for k, v in map_at_k(topk[rows], p["positives"][rows], MAP_KS).items()},
        }
        for rank in range(2):
            got = per_rank[rank][scenario]
            assert got.keys() == expected.keys()
            for key, value in expected.items():
                assert math.isclose(got[key], value, abs_tol=1e-5), (scenario, rank, key)
