"""The demo's report: reading metrics.json, choosing Slerp's alpha on train, the four findings, results.md."""

from __future__ import annotations

import json

import pytest

from cir.demo.report import (
    ModelRun,
    best_alpha,
    findings,
    split_metrics,
    write_report,
)


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


BASELINES = {"image": _row(4.0), "text": _row(1.0), "sum": _row(8.0)}


def test_findings_all_hold() -> None:
    slerp = {"pretrain": _row(10.0), "tat_text": _row(12.0), "tat_image": _row(11.0), "tat_none": _row(11.5)}
    found = findings(slerp, BASELINES, {"pretrain": 0.7, "tat_text": 0.5})
    assert [f.held for f in found] == [True, True, True, True]
    assert "12.00" in found[1].evidence and "0.700 -> 0.500" in found[3].evidence


@pytest.mark.parametrize(
    "change, broken",
    [
        ({"pretrain": _row(8.0)}, 0),  # ties the sum baseline: not a win
        ({"pretrain": _row(11.9), "tat_text": _row(11.8)}, 1),
        ({"tat_none": _row(12.5)}, 2),
        ({"tat_image": _row(12.0)}, 2),  # a tie is not a win either
    ],
)
def test_each_finding_can_fail_on_its_own(change, broken) -> None:
    slerp = {"pretrain": _row(10.0), "tat_text": _row(12.0), "tat_image": _row(11.0), "tat_none": _row(11.5), **change}
    found = findings(slerp, BASELINES, {"pretrain": 0.7, "tat_text": 0.5})
    assert [i for i, f in enumerate(found) if not f.held] == [broken]


def test_a_wider_gap_after_tat_does_not_hold() -> None:
    slerp = {"pretrain": _row(10.0), "tat_text": _row(12.0), "tat_image": _row(11.0), "tat_none": _row(11.5)}
    assert not findings(slerp, BASELINES, {"pretrain": 0.5, "tat_text": 0.6})[3].held


def _write_model(root, name: str, val_r1: dict[str, float], train_r1: dict[str, float], gap: float) -> ModelRun:
    run = ModelRun(name, f"model {name}", root / name / "val", root / name / "train", root / name / "gap.json")
    for folder, r1 in ((run.val_dir, val_r1), (run.train_dir, train_r1)):
        folder.mkdir(parents=True)
        metrics = {"meta/model": "x"}
        for method, value in r1.items():
            metrics.update({f"cirr/val/{method}/{metric}": v for metric, v in _row(value).items()})
        (folder / "metrics.json").write_text(json.dumps(metrics))
    run.gap_file.write_text(json.dumps({"gap": gap, "pair_cosine": 0.1, "pairs": 10}))
    return run


def test_report_uses_the_train_alpha_on_val_and_writes_everything(tmp_path) -> None:
    sweep = {"slerp_a0.0": 1.0, "slerp_a0.5": 5.0, "slerp_a1.0": 2.0}
    pre = _write_model(tmp_path, "pretrain", {"image": 4.0, "text": 1.0, "sum": 3.0, **sweep},
                       {"image": 0.0, "text": 0.0, "sum": 0.0, "slerp_a0.0": 1.0, "slerp_a0.5": 2.0, "slerp_a1.0": 3.0}, 0.7)
    # on train alpha 1.0 wins, so val reports slerp_a1.0 (2.0), not val's own best (5.0 at alpha 0.5)
    runs = [pre] + [_write_model(tmp_path, n, sweep, sweep, 0.5) for n in ("tat_text", "tat_image", "tat_none")]
    lines: list[str] = []
    write_report(tmp_path, runs, 61.0, lines.append)
    text = (tmp_path / "results.md").read_text()
    assert "| model pretrain | Slerp | 1.0 | 2.00 | 12.00 | 22.00 | 32.00 |" in text
    assert "| model tat_text | Slerp | 0.5 | 5.00 |" in text
    assert "| model pretrain | image only |  | 4.00 |" in text
    assert "| model tat_text | 0.500 | 0.100 |" in text
    assert "did NOT hold: Slerp beats image only" in text and "- held: TAT raises Slerp R@1" in text
    assert "1.0 min" in text
    assert (tmp_path / "alpha_sweep.png").stat().st_size > 1000
    assert list((tmp_path / "tensorboard" / "summary").glob("events.*"))
    assert any("results.md" in line for line in lines)


def test_missing_metrics_name_the_file(tmp_path) -> None:
    run = ModelRun("pretrain", "p", tmp_path / "v", tmp_path / "t", tmp_path / "g.json")
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        write_report(tmp_path, [run], 1.0, print)
