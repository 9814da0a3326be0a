"""The demo end to end on a tiny run: every stage runs through the real CLIs, reruns skip, results.md has the table."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cir import fit
from cir.config import ConfigError, run_cli
from cir.data.synth import vocabulary
from cir.demo.hits import load_features, query_hits
from cir.demo.pipeline import build_plan, load_demo_config, pending_shards
from cir.models import CONFIG_DIR
from cir.slerp import method_key

DEMO = Path(__file__).resolve().parents[2] / "experiments" / "demo.yaml"
TINY_SYNTH = ["synth.pretrain_samples=96", "synth.tune_samples=64", "synth.train_queries=24", "synth.val_queries=24",
              "synth.test_queries=4", "synth.shard_size=64"]
QUIET = "trainer.enable_progress_bar=false"
TINY_STAGES = [f"{section}.{key}" for section in ("pretrain", "tat", "supervised")
               for key in ("trainer.max_steps=2", "data.batch_size=16", "data.num_workers=0", QUIET)]
SEED = ["demo.seeds=[3]", "demo.supervised=true"]  # one training seed keeps the test short; the findings test runs 3
STAGES = ["synth"] + [f"{name}_s3" for name in (
    "pretrain", "eval_pretrain", "tat_text", "eval_tat_text", "tat_image", "eval_tat_image", "tat_none", "eval_tat_none",
    "sup_from_tat_text", "eval_sup_from_tat_text", "sup_from_pretrain", "eval_sup_from_pretrain")]


def run_demo(out: Path, *extra: str) -> list[str]:
    """Through cir.fit's dispatch of `task: demo`, as a user runs it; returns the printed lines."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert fit.main(str(DEMO), [f"output_dir={out}", *TINY_SYNTH, *TINY_STAGES, *SEED, *extra]) == out
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
    for name in ("pretrain", "tat_text", "tat_image", "tat_none", "sup_from_tat_text", "sup_from_pretrain"):
        assert (out / f"{name}_s3" / "export.pt").is_file() and (out / f"{name}_s3" / "run.json").is_file()
    record = json.loads((out / "tat_image_s3" / "run.json").read_text())
    assert record["config"]["model"]["anchor"] == "image" and record["config"]["seed"] == 3
    assert record["config"]["model"]["pretrained"] == str(out / "pretrain_s3" / "export.pt")
    assert json.loads((out / "sup_from_tat_text_s3" / "run.json").read_text())["config"]["init_from"] == str(
        out / "tat_text_s3" / "export.pt")
    for split in ("val", "train"):
        metrics = json.loads((out / "eval_tat_none_s3" / split / "metrics.json").read_text())
        assert metrics["meta/pretrained"] == str(out / "tat_none_s3" / "export.pt")
        assert f"cirr/{split}/slerp_a0.5/R@1" in metrics
    gap = json.loads((out / "eval_pretrain_s3" / "gap.json").read_text())
    assert gap["pairs"] > 0 and 0.0 <= gap["gap"] <= 2.0


def test_per_query_hits_from_the_export_give_the_evaluations_recall(tiny_demo) -> None:
    out, _ = tiny_demo
    folder = out / "eval_pretrain_s3" / "val"
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
    assert "Measured on: " in text and "CPU time" in text
    assert (out / "alpha_sweep.png").stat().st_size > 1000
    assert list((out / "tensorboard" / "summary").glob("events.*"))
    assert lines[-1].endswith(f"tensorboard --logdir {out}") and any(str(out / "results.md") in line for line in lines)


def test_rerun_skips_every_stage_and_rerun_redoes_one(tiny_demo) -> None:
    out, _ = tiny_demo
    export = out / "pretrain_s3" / "export.pt"
    before = export.stat().st_mtime_ns
    lines = run_demo(out)
    assert all("skipped" in line for line in stage_lines(lines).values())
    assert export.stat().st_mtime_ns == before
    metrics = out / "eval_tat_none_s3" / "val" / "metrics.json"
    before = metrics.stat().st_mtime_ns
    lines = stage_lines(run_demo(out, "demo.rerun=[eval_tat_none_s3]"))
    assert [name for name, line in lines.items() if "skipped" not in line] == ["eval_tat_none_s3"]
    assert metrics.stat().st_mtime_ns > before


def test_config_errors_stop_before_any_stage(tmp_path, capsys) -> None:
    for bad, key in (("demo.fresh=maybe", "demo.fresh"), ("tat.optim.lrr=1", "optim.lrr"),
                     ("demo.rerun=[nope]", "demo.rerun"), ("synth.image_size=4", "synth"), ("demo.seeds=[1,1]", "demo.seeds"),
                     ("demo.anchors=[txt]", "demo.anchors"), ("demo.anchors=[image] demo.supervised=true", "demo.anchors")):
        with pytest.raises(SystemExit):
            run_cli(fit.main, [str(DEMO), f"output_dir={tmp_path / 'x'}", *bad.split()])
        err = capsys.readouterr().err
        assert key in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="task"):
        load_demo_config(DEMO, ["task=tat"])


@pytest.mark.parametrize("name", ["cir-demo", "cir-demo-wide"])
def test_demo_model_configs_cover_the_benchmark_vocabulary(name) -> None:
    config = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    assert config["text_cfg"]["tokenizer_kwargs"]["vocabulary"] == vocabulary()


@pytest.mark.parametrize("name, expected", [
    ("demo_premise_gap.yaml", {"pretrain_s0": {"model.name": "cir-demo-wide", "optim.temperature": 0.01,
                                               "optim.learn_temperature": False},
                               "tat_text_s0": {"model.name": "cir-demo-wide", "trainer.max_steps": 120}}),
    ("demo_premise_captions.yaml", {"tat_none_s2": {"model.name": "cir-demo", "trainer.max_steps": 120}}),
])
def test_the_premise_variants_check_every_stage_and_say_what_they_change(name, expected, tmp_path) -> None:
    path = DEMO.parent / name
    cfg = load_demo_config(path, [f"output_dir={tmp_path}"])
    stages, _ = build_plan(cfg, path.parent, pending_shards(tmp_path / "synth"))
    for stage in stages:
        stage.validate()
    configs = {stage.name: stage.calls[0].resolve() for stage in stages if stage.name in expected}
    for stage, values in expected.items():
        assert {key: OmegaConf.select(configs[stage], key) for key in values} == values
    assert cfg.synth.pretrain_captions == (4 if "captions" in name else 1)
