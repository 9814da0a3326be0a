"""The demo (experiments/demo.yaml, a grid) end to end on a tiny run, through cir.fit as a user runs it: every stage
runs through the real CLIs, reruns skip, results.md has the table."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cir import fit
from cir.config import run_cli
from cir.data.synth import vocabulary
from cir.demo.hits import load_features, query_hits
from cir.grid.plan import Grid
from cir.models import CONFIG_DIR
from cir.slerp import method_key

DEMO = Path(__file__).resolve().parents[2] / "experiments" / "demo.yaml"
TINY_SYNTH = ["synth.pretrain_samples=96", "synth.tune_samples=64", "synth.train_queries=24", "synth.val_queries=24",
              "synth.test_queries=4", "synth.shard_size=64"]
# every stage that has the key: the trainings (max_steps), the trainings and evaluations (the rest)
TINY_STAGES = ["trainer.max_steps=2", "data.batch_size=16", "data.num_workers=0", "trainer.enable_progress_bar=false"]
# one training seed keeps the test short (the findings test runs 3), with the ablations and the supervised step
SEED = ["axes.seed=[3]", "stages.tat_image.enabled=true", "stages.tat_none.enabled=true",
        "stages.sup_from_tat.enabled=true", "stages.sup_from_pretrain.enabled=true"]
SHARED = ["benchmark", "pretrain", "pretrain_val", "pretrain_train"]  # run once, before the cells
MODELS = ["tat_text", "tat_image", "tat_none", "sup_from_tat", "sup_from_pretrain"]
STAGES = SHARED + [f"seed-3/{name}{part}" for name in MODELS for part in ("", "_val", "_train")]


def run_demo(out: Path, *extra: str) -> list[str]:
    """Through cir.fit's dispatch of `task: grid`, as a user runs it; returns the printed lines."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        fit.main(str(DEMO), [f"output_dir={out}", *TINY_SYNTH, *TINY_STAGES, *SEED, *extra])
    return printed.getvalue().splitlines()


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("demo") / "run"
    return out, run_demo(out)


def stage_lines(lines: list[str]) -> dict[str, str]:
    return {line.split("] ")[1].split(":")[0]: line for line in lines if line.startswith("[") and "done" in line}


def test_every_stage_runs_and_writes_its_output(tiny_demo) -> None:
    out, lines = tiny_demo
    assert list(stage_lines(lines)) == STAGES
    cell = out / "seed-3"
    for folder in [out / "pretrain", *(cell / name for name in MODELS)]:
        assert (folder / "export.pt").is_file() and (folder / "run.json").is_file()
    record = json.loads((cell / "tat_image" / "run.json").read_text())
    assert record["config"]["model"]["anchor"] == "image" and record["config"]["seed"] == 3
    assert record["config"]["model"]["pretrained"] == str(out / "pretrain" / "export.pt")
    # one pretraining for every cell: the seed axis leaves its seed as demo_pretrain.yaml has it
    assert json.loads((out / "pretrain" / "run.json").read_text())["config"]["seed"] == 0
    assert record["config"]["data"]["train_shards"] == str(out / "benchmark" / "shards" / "tune-{000000..000000}.tar")
    assert json.loads((cell / "sup_from_tat" / "run.json").read_text())["config"]["init_from"] == str(
        cell / "tat_text" / "export.pt")
    for split in ("val", "train"):
        metrics = json.loads((cell / f"tat_none_{split}" / "metrics.json").read_text())
        assert metrics["meta/pretrained"] == str(cell / "tat_none" / "export.pt")
        assert f"cirr/{split}/slerp_a0.5/R@1" in metrics
        assert ("modality_gap/gap" in metrics) == (split == "val")  # the gap pairs: val only
    gap = json.loads((out / "pretrain_val" / "metrics.json").read_text())
    assert gap["modality_gap/pairs"] > 0 and 0.0 <= gap["modality_gap/gap"] <= 2.0


def test_per_query_hits_from_the_export_give_the_evaluations_recall(tiny_demo) -> None:
    out, _ = tiny_demo
    folder = out / "pretrain_val"
    metrics = json.loads((folder / "metrics.json").read_text())
    features = load_features(folder / "features" / "cirr-val.npz")
    for method, alpha in (("image", None), ("text", None), ("sum", None), ("slerp", 0.5), ("slerp", 0.8)):
        for k in (1, 5):
            hits = query_hits(features, method, alpha, k=k)
            assert hits.shape == (24,)
            assert 100.0 * hits.mean() == pytest.approx(metrics[f"cirr/val/{method_key(method, alpha)}/R@{k}"], abs=1e-6)


def test_results_table_plot_and_tensorboard(tiny_demo) -> None:
    out, lines = tiny_demo
    text = (out / "results.md").read_text()
    header = "| model | method | alpha per seed | R@1 | R@5 | R@10 | Rsub@1 |"
    assert header in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.count("|") == 8 and line != header]
    labels = [row.split(" | ")[0][2:] for row in rows]
    assert labels == ["pretrained CLIP"] * 4 + ["TAT (text anchor)", "image anchor", "no anchor",
                                                 "supervised from TAT", "supervised from pretrained"]
    assert "Slerp - image only" in text and "TAT narrows the modality gap: gap narrowed by" in text
    assert "one seed: training noise not measured" in text and "t interval over seeds," not in text  # one seed
    assert "tuned from pretrained CLIP (seed 0), which is trained once" in text
    assert "Measured on: " in text and "CPU time" in text
    assert (out / "alpha_sweep.png").stat().st_size > 1000
    assert list((out / "tensorboard" / "summary").glob("events.*"))
    assert lines[-1].endswith(f"tensorboard --logdir {out}") and any(str(out / "results.md") in line for line in lines)


def test_rerun_skips_every_stage_and_rerun_redoes_one(tiny_demo) -> None:
    out, _ = tiny_demo
    export = out / "pretrain" / "export.pt"
    before = export.stat().st_mtime_ns
    lines = run_demo(out)
    assert list(stage_lines(lines)) == STAGES and all("skipped" in line for line in stage_lines(lines).values())
    assert export.stat().st_mtime_ns == before
    metrics = out / "seed-3" / "tat_none_val" / "metrics.json"
    before = metrics.stat().st_mtime_ns
    lines = stage_lines(run_demo(out, "rerun=[seed-3/tat_none_val]"))
    assert [name for name, line in lines.items() if "skipped" not in line] == ["seed-3/tat_none_val"]
    assert metrics.stat().st_mtime_ns > before


def test_config_errors_stop_before_any_stage(tmp_path, capsys) -> None:
    for bad, key in (("fresh=maybe", "fresh"), ("tat_text.optim.lrr=1", "optim.lrr"), ("rerun=[nope]", "rerun"),
                     ("synth.image_size=4", "synth"), ("axes.seed=[1,1]", "axes"), ("report=tabel", "report")):
        with pytest.raises(SystemExit):
            run_cli(fit.main, [str(DEMO), f"output_dir={tmp_path / 'x'}", *bad.split()])
        err = capsys.readouterr().err
        assert key in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()


def test_by_default_each_seed_runs_tat_and_its_evaluations_only(tmp_path) -> None:
    """The anchor ablations and the supervised step are off by default (the demo's time); one key each turns on."""
    grid = Grid(DEMO, [f"output_dir={tmp_path}"])
    assert [[s.name for s in grid.stages(cell)] for cell in grid.cells] == [["tat_text", "tat_text_val",
                                                                              "tat_text_train"]] * 3
    grid = Grid(DEMO, [f"output_dir={tmp_path}", "stages.tat_image.enabled=true", "stages.tat_none.enabled=true"])
    assert [s.name for s in grid.stages(grid.cells[0])] == [f"{name}{part}" for name in MODELS[:3]
                                                            for part in ("", "_val", "_train")]


def test_one_pretraining_for_every_seed_or_one_per_seed_when_unshared(tmp_path) -> None:
    grid = Grid(DEMO, [f"output_dir={tmp_path}", "stages.tat_none.enabled=true"])
    assert [s.name for s in grid.shared_stages()] == ["benchmark", "pretrain", "pretrain_val", "pretrain_train"]
    assert not any(o.startswith("seed=") for o in grid.shared_stages()[1].call.overrides)
    assert "seed=1" in grid.call(grid.cells[1], "tat_none").overrides
    unshared = [f"stages.{name}.shared=false" for name in ("pretrain", "pretrain_val", "pretrain_train")]
    grid = Grid(DEMO, [f"output_dir={tmp_path}", *unshared])
    pretrain = grid.call(grid.cells[1], "pretrain")
    assert "seed=1" in pretrain.overrides and pretrain.out == tmp_path / "seed-1" / "pretrain"
    assert f"model.pretrained={pretrain.out / 'export.pt'}" in grid.call(grid.cells[1], "tat_text").overrides

@pytest.mark.parametrize("name", ["cir-demo", "cir-demo-wide"])
def test_demo_model_configs_cover_the_benchmark_vocabulary(name) -> None:
    config = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    assert config["text_cfg"]["tokenizer_kwargs"]["vocabulary"] == vocabulary()


@pytest.mark.parametrize("name, expected", [
    ("demo_premise_gap.yaml", {"pretrain": {"model.name": "cir-demo-wide", "optim.temperature": 0.01,
                                            "optim.learn_temperature": False},
                               "tat_text": {"model.name": "cir-demo-wide", "trainer.max_steps": 120},
                               "tat_none_val": {"model.name": "cir-demo-wide"},
                               "benchmark": {"synth.pretrain_captions": 1}}),
    ("demo_premise_captions.yaml", {"tat_none": {"model.name": "cir-demo", "trainer.max_steps": 120},
                                    "pretrain": {"trainer.max_steps": 500},
                                    "benchmark": {"synth.pretrain_captions": 4}}),
])
def test_the_premise_variants_check_every_stage_and_say_what_they_change(name, expected, tmp_path) -> None:
    grid = Grid(DEMO.parent / name, [f"output_dir={tmp_path}"])
    stages = {stage.name: stage for cell in grid.cells for stage in grid.stages(cell)} | {
        stage.name: stage for stage in grid.shared_stages()}
    for stage in stages.values():
        stage.validate()
    for stage, values in expected.items():
        cfg = stages[stage].call.resolve()
        assert {key: OmegaConf.select(cfg, key) for key in values} == values
