"""The demo's report: reading metrics.json, choosing Slerp's alpha on train, the four findings, results.md."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from cir.demo.results import (
    ANCHOR_CLAIM,
    ANCHOR_KEYS,
    ModelRun,
    SeedResult,
    best_alpha,
    findings,
    results_markdown,
    seeds_text,
    split_metrics,
    write_report,
)
from cir.demo.stats import HELD, NOISE, REVERSED


def test_split_metrics_groups_by_method_and_ignores_meta() -> None:
    flat = {"meta/model": "cir-demo", "cirr/val/image/R@1": 3.0, "cirr/val/slerp_a0.5/R@1": 9.0,
            "cirr/val/slerp_a0.5/R@5": 20.0}
    assert split_metrics(flat) == {"image": {"R@1": 3.0}, "slerp_a0.5": {"R@1": 9.0, "R@5": 20.0}}


def test_best_alpha_takes_r1_then_r5_then_the_smaller_alpha() -> None:
    table = {"image": {"R@1": 50.0, "R@5": 0.0}, "slerp_a0.2": {"R@1": 5.0, "R@5": 9.0},
             "slerp_a0.6": {"R@1": 7.0, "R@5": 10.0}, "slerp_a0.7": {"R@1": 7.0, "R@5": 12.0},
             "slerp_a0.8": {"R@1": 7.0, "R@5": 12.0}}
    assert best_alpha(table) == 0.7
    with pytest.raises(ValueError, match="no Slerp"):
        best_alpha({"image": {"R@1": 1.0}})


def _row(r1: float) -> dict[str, float]:
    return {"R@1": r1, "R@5": r1 + 10, "R@10": r1 + 20, "Rsub@1": r1 + 30}


def _hits(rate: float, seed: int, queries: int = 2000) -> np.ndarray:
    return np.random.default_rng(seed).random(queries) < rate


def _result(name: str, seed: int, r1: float, gap: float, hits: dict[str, np.ndarray] | None = None,
            baselines: dict[str, float] | None = None) -> SeedResult:
    run = ModelRun(name, name, None, None, seed)
    val = {"slerp_a0.5": _row(r1), **{method: _row(value) for method, value in (baselines or {}).items()}}
    return SeedResult(run, 0.5, val, {"gap": gap, "pair_cosine": 0.5}, hits or {})


def _results(tat: list[float], image: list[float], none: list[float], gaps: list[float],
             over_sum: tuple[float, ...] = (3.0, 3.5, 4.0)) -> dict:
    """Three seeds; the pretrained model at R@1 10, 11, 12 and gap 0.7, its hits strongly favouring Slerp, and
    Slerp's R@1 over sum per seed `over_sum` (over image and text only: 6 points or more)."""
    pre = [_result("pretrain", s, 10.0 + s, 0.7, {"slerp": _hits(0.10, s), "image": _hits(0.10, s) & _hits(0.4, 9 + s),
                                                 "text": _hits(0.01, 20 + s), "sum": _hits(0.10, s) & _hits(0.7, 30 + s)},
                   {"image": 4.0 + 0.1 * s, "text": 1.0 + 0.2 * s, "sum": 10.0 + s - over_sum[s]})
           for s in range(3)]
    return {"pretrain": pre,
            "tat_text": [_result("tat_text", s, 10.0 + s + d, g) for s, (d, g) in enumerate(zip(tat, gaps))],
            "tat_image": [_result("tat_image", s, 10.0 + s + d, 0.7) for s, d in enumerate(image)],
            "tat_none": [_result("tat_none", s, 10.0 + s + d, 0.7) for s, d in enumerate(none)]}


def test_findings_held_with_their_intervals() -> None:
    found = findings(_results(tat=[1.0, 1.2, 0.9], image=[0.0, 0.2, -0.1], none=[0.1, 0.0, 0.2], gaps=[0.5, 0.52, 0.49]))
    assert [f.verdict for f in found] == [HELD] * 4
    assert [f.held for f in found] == [True] * 4
    assert "Slerp - sum +2.97 [+2.55, +3.40] (paired bootstrap over queries, n=2000) and +3.50 [+2.26, +4.74] " \
        "(t interval over seeds, n=3)" in found[0].evidence  # 3.0, 3.5, 4.0 per seed: mean 3.5, sd 0.5, t(2) 4.30
    assert found[0].evidence.count("paired bootstrap over queries") == 3
    assert found[0].evidence.count("t interval over seeds, n=3") == 3 and "t interval over seeds, n=3" in found[1].evidence
    assert "per seed +1.00, +1.20, +0.90" in found[1].evidence and "0.700 -> 0.503" in found[3].evidence


@pytest.mark.parametrize(
    "change, finding, verdict",
    [
        # mean +0.17, but the seeds disagree: within noise (the other anchors move along, text anchoring still wins)
        ({"tat": [1.0, -1.0, 0.5], "image": [0.0, -2.2, -0.6], "none": [0.1, -2.0, -0.4]}, 1, NOISE),
        ({"tat": [-1.0, -1.1, -0.9], "image": [-2.0, -2.1, -1.8], "none": [-1.9, -2.2, -2.0]}, 1, REVERSED),
        ({"none": [1.5, 1.6, 1.4]}, 2, REVERSED),  # no anchor beats text anchoring reliably: the claim is reversed
        ({"image": [0.9, 1.3, 0.8]}, 2, NOISE),
        ({"gaps": [0.75, 0.76, 0.74]}, 3, REVERSED),  # TAT widened the gap
        ({"gaps": [0.71, 0.72, 0.73]}, 3, NOISE),  # wider by 0.02 ± 0.01: not enough for 3 seeds
        # the hits favour Slerp over sum by 3 points (bootstrap held) but the seeds disagree: judged by both, noise
        ({"over_sum": (3.0, -2.0, 0.5)}, 0, NOISE),
        ({"over_sum": (-3.0, -3.5, -4.0)}, 0, NOISE),  # seeds reversed, queries held: the two intervals disagree
    ],
)
def test_each_finding_can_fail_on_its_own(change, finding, verdict) -> None:
    args = {"tat": [1.0, 1.2, 0.9], "image": [0.0, 0.2, -0.1], "none": [0.1, 0.0, 0.2], "gaps": [0.5, 0.52, 0.49]}
    found = findings(_results(**{**args, **change}))
    assert [i for i, f in enumerate(found) if f.verdict != HELD] == [finding]
    assert found[finding].verdict == verdict


def test_a_model_trained_once_stands_beside_every_seed() -> None:
    """The demo pretrains once: each TAT seed is compared with that one model (the t interval covers TAT's seeds),
    and the methods on it are judged over queries only."""
    # the pretrained model's R@1 at seeds 0, 1, 2 would be 10, 11, 12; TAT's is 11.0, 11.2, 11.1
    results = _results(tat=[1.0, 0.2, -0.9], image=[0.0, -0.8, -1.9], none=[0.1, -1.0, -1.8], gaps=[0.5, 0.52, 0.49])
    once = results["pretrain"][0]  # R@1 10, gap 0.7
    results["pretrain"] = [once]
    with pytest.raises(ValueError, match="different seeds"):  # one seed of a model trained per seed: no pairs
        findings(results)
    results["pretrain"] = [replace(once, run=replace(once.run, shared=True))]
    slerp_wins, tat_raises, anchors, gap_narrows = findings(results)
    assert [f.verdict for f in (slerp_wins, tat_raises, anchors, gap_narrows)] == [HELD] * 4
    assert slerp_wins.evidence.count("paired bootstrap over queries, n=2000") == 3
    assert "t interval over seeds" not in slerp_wins.evidence
    assert "t interval over seeds, n=3" in tat_raises.evidence and "per seed +1.00, +1.20, +1.10" in tat_raises.evidence
    assert "t interval over seeds, n=3" in gap_narrows.evidence and "0.700 -> 0.503" in gap_narrows.evidence
    assert " ".join(seeds_text(results)) == (
        "(percent), mean ± standard deviation over the training seeds 0, 1, 2 of the models tuned from pretrain "
        "(seed 0), which is trained once: its rows have no spread, and the intervals cover the tuning seeds' "
        "training noise, not its own (one seed: no spread).")

def test_one_seed_judges_training_by_queries_only_and_the_gap_not_at_all() -> None:
    hits = {m: _hits(0.1, 1) for m in ("slerp", "image", "text", "sum")}
    results = {"pretrain": [_result("pretrain", 0, 10.0, 0.7, hits)],
               "tat_text": [_result("tat_text", 0, 12.0, 0.5, {"slerp": _hits(0.2, 2)})]}
    slerp_wins, tat_raises, gap_narrows = findings(results)  # no image / no anchor models: that finding is left out
    assert slerp_wins.verdict == NOISE  # identical hits: every difference is exactly zero
    assert tat_raises.verdict == HELD and "one seed: training noise not measured" in tat_raises.evidence
    assert gap_narrows.verdict == "not judged" and "needs 2 seeds" in gap_narrows.evidence


def test_without_the_ablations_results_say_the_anchor_claim_was_not_run_and_how_to_run_it() -> None:
    results = _results(tat=[1.0, 0.2, -0.9], image=[0.0] * 3, none=[0.0] * 3, gaps=[0.5, 0.52, 0.49])
    line = f"- **not run**: {ANCHOR_CLAIM}: the anchor ablations are off by default (`{ANCHOR_KEYS}`)"
    assert line not in results_markdown(results, findings(results), 60.0, 90.0)
    del results["tat_image"], results["tat_none"]
    assert line in results_markdown(results, findings(results), 60.0, 90.0)


def _write_model(root, name: str, seed: int, val_r1: dict[str, float], train_r1: dict[str, float], gap: float) -> ModelRun:
    folder = root / f"{name}_s{seed}"
    run = ModelRun(name, f"model {name}", folder / "val", folder / "train", seed)
    for path, r1 in ((run.val_dir, val_r1), (run.train_dir, train_r1)):
        path.mkdir(parents=True)
        metrics = {"meta/model": "x"}
        for method, value in r1.items():
            metrics.update({f"cirr/val/{method}/{metric}": v for metric, v in _row(value).items()})
        if path == run.val_dir:  # what eval.gap_pairs adds to the val evaluation's metrics
            metrics.update({"modality_gap/gap": gap, "modality_gap/pair_cosine": 0.1, "modality_gap/pairs": 10})
        (path / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_report_uses_the_train_alpha_on_val_and_gives_mean_and_spread_over_seeds(tmp_path) -> None:
    runs = []
    for seed, shift in ((0, 0.0), (1, 2.0)):
        sweep = {"slerp_a0.0": 1.0 + shift, "slerp_a0.5": 5.0 + shift, "slerp_a1.0": 2.0 + shift}
        train = {"slerp_a0.0": 1.0, "slerp_a0.5": 2.0, "slerp_a1.0": 3.0 - seed * 2}
        # seed 0: alpha 1.0 wins on train, so val reports slerp_a1.0 (2.0), not val's own best (5.0 at alpha 0.5)
        runs.append(_write_model(tmp_path, "pretrain", seed, {"image": 4.0, "text": 1.0, "sum": 3.0, **sweep},
                                 {"image": 0.0, "text": 0.0, "sum": 0.0, **train}, 0.7))
        runs += [_write_model(tmp_path, n, seed, sweep, sweep, 0.5 + 0.1 * seed) for n in ("tat_text", "tat_image", "tat_none")]
    lines: list[str] = []
    write_report(tmp_path, runs, 61.0, lines.append, cpu_s=120.0)
    text = (tmp_path / "results.md").read_text()
    # R@1 2.0 (seed 0, alpha 1.0) and 7.0 (seed 1, alpha 0.5): mean 4.50, standard deviation 3.54
    assert "| model pretrain | Slerp | 1.0, 0.5 | 4.50 ± 3.54 | 14.50 ± 3.54 |" in text
    assert "| model tat_text | Slerp | 0.5, 0.5 | 6.00 ± 1.41 |" in text
    assert "| model pretrain | image only |  | 4.00 ± 0.00 |" in text
    assert "| model tat_text | 0.550 ± 0.071 | 0.100 ± 0.000 |" in text
    assert "TAT raises Slerp R@1 over the pretrained model: TAT - pretrained +1.50 [" in text
    assert "t interval over seeds, n=2" in text and "Slerp beats" not in text  # no exported features: no hits
    assert "1.0 min" in text and "CPU time (user + sys, this process and its workers): 2.0 min" in text
    assert "Measured on: " in text
    assert (tmp_path / "alpha_sweep.png").stat().st_size > 1000
    assert list((tmp_path / "tensorboard" / "summary").glob("events.*"))
    assert any("results.md" in line for line in lines)


def test_missing_metrics_or_gap_name_the_file(tmp_path) -> None:
    run = ModelRun("pretrain", "p", tmp_path / "v", tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="metrics.json: missing"):
        write_report(tmp_path, [run], 1.0, print)
    run = _write_model(tmp_path, "pretrain", 0, {"slerp_a0.5": 1.0}, {"slerp_a0.5": 1.0}, 0.5)
    metrics = run.val_dir / "metrics.json"
    metrics.write_text(json.dumps({k: v for k, v in json.loads(metrics.read_text()).items() if "modality" not in k}))
    with pytest.raises(FileNotFoundError, match="no modality gap; the val evaluation needs eval.gap_pairs"):
        write_report(tmp_path, [run], 1.0, print)
