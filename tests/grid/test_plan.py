"""A grid's plan without running it: shared stages, grid-wide overrides, `${needs.N...}`, rerun names, cell names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cir.config import ConfigError
from cir.grid.__main__ import cli
from cir.grid.plan import Grid
from cir.grid.stages import CliCall, InProcessCall

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def write_grid(tmp_path: Path, **changes) -> Path:
    """A benchmark shared by every cell, a training per cell that reads it, and the training's evaluation."""
    grid = {
        "task": "grid", "output_dir": str(tmp_path / "out"), "axes": {"seed": [0, 1]},
        "stages": {
            "benchmark": {"cli": "synth", "config": str(EXPERIMENTS / "demo_synth.yaml"), "shared": True,
                          "overrides": {"synth.tune_samples": 2500}},
            "tat": {"cli": "fit", "config": str(EXPERIMENTS / "demo_tat.yaml"), "needs": ["benchmark"],
                    "overrides": {"data.train_shards": "${stage.benchmark.shards.tune}"}},
            "val": {"cli": "evaluate", "config": str(EXPERIMENTS / "demo_eval.yaml"), "needs": ["tat"],
                    "overrides": {"model.pretrained": "${needs.0.export}", "data.root": "${stage.benchmark.cirr}",
                                  "eval.cache_dir": "${root}/cache"}},
        },
        **changes,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_a_shared_stage_runs_once_in_the_grid_folder_and_cells_read_what_it_writes(tmp_path) -> None:
    grid = Grid(write_grid(tmp_path), [])
    out = tmp_path / "out"
    assert [s.name for s in grid.shared_stages()] == ["benchmark"]
    assert [s.name for s in grid.stages(grid.cells[1])] == ["tat", "val"]
    synth = grid.shared_stages()[0].call
    assert synth.cli == "synth" and synth.out == out / "benchmark"
    assert synth.command[1:3] == ["-m", "cir.data.synth"]
    tat, val = (grid.call(grid.cells[1], name) for name in ("tat", "val"))
    # 2,500 tune samples in shards of 1,000: three shards, known before they are written
    assert f'data.train_shards="{out / "benchmark" / "shards" / "tune-{000000..000002}.tar"}"' in tat.overrides
    assert tat.out == out / "seed-1" / "tat" and "seed=1" in tat.overrides
    assert f"model.pretrained={out / 'seed-1' / 'tat' / 'export.pt'}" in val.overrides
    assert f"data.root={out / 'benchmark' / 'cirr'}" in val.overrides
    assert f"eval.cache_dir={out / 'cache'}" in val.overrides
    for stage in [*grid.shared_stages(), *grid.stages(grid.cells[0])]:
        stage.validate()
    assert type(tat) is CliCall
    assert type(Grid(write_grid(tmp_path, in_process=True), []).call(grid.cells[0], "tat")) is InProcessCall


def test_no_axis_reaches_a_shared_stage_and_a_shared_stage_reads_no_cell(tmp_path) -> None:
    with pytest.raises(ConfigError, match="reaches shared stage benchmark, which runs once for all cells"):
        Grid(write_grid(tmp_path, axes={"synth.seed": [0, 1]}), [])
    with pytest.raises(ConfigError, match="`benchmark.enabled` reaches shared stage benchmark"):
        Grid(write_grid(tmp_path, axes={"variant": {"a": {"benchmark.enabled": False}}}), [])
    path = write_grid(tmp_path)
    with pytest.raises(ConfigError, match="`stages.benchmark.needs`: expected shared stages only"):
        Grid(path, ["stages.benchmark.needs=[tat]"])
    # the command line may set it: the same value for every cell
    assert "synth.seed=4" in Grid(path, ["synth.seed=4"]).shared_stages()[0].call.overrides


def test_an_axis_passes_a_shared_stage_that_has_its_key_by(tmp_path) -> None:
    """The demo's shape: one pretraining for every cell, the axis `seed` varying what the cells tune from it."""
    stages = yaml.safe_load(write_grid(tmp_path).read_text())["stages"]
    stages["pretrain"] = {"cli": "fit", "config": str(EXPERIMENTS / "demo_pretrain.yaml"), "shared": True,
                          "needs": ["benchmark"], "overrides": {"seed": 7}}
    stages["tat"]["overrides"]["model.pretrained"] = "${stage.pretrain.export}"
    grid = Grid(write_grid(tmp_path, stages={name: stages[name] for name in ("benchmark", "pretrain", "tat", "val")}),
                [])
    assert [s.name for s in grid.shared_stages()] == ["benchmark", "pretrain"]
    pretrain = grid.shared_stages()[1].call
    assert "seed=7" in pretrain.overrides and pretrain.out == tmp_path / "out" / "pretrain"
    for cell, seed in zip(grid.cells, (0, 1)):
        tat = grid.call(cell, "tat")
        assert f"seed={seed}" in tat.overrides and f"model.pretrained={pretrain.out / 'export.pt'}" in tat.overrides


def test_grid_wide_overrides_reach_stages_like_the_command_line_and_come_before_it(tmp_path) -> None:
    path = write_grid(tmp_path, overrides={"data.batch_size": 8, "tat.optim.lr": 0.01})
    grid = Grid(path, ["tat.data.batch_size=4"])
    tat, val = (grid.call(grid.cells[0], name).overrides for name in ("tat", "val"))
    assert "data.batch_size=4" in tat and "data.batch_size=8" not in tat and "optim.lr=0.01" in tat
    assert "data.batch_size=8" in val and "optim.lr=0.01" not in val
    with pytest.raises(ConfigError, match="config key `overrides`: config key `optim.lrr`: no stage of the grid has it"):
        Grid(write_grid(tmp_path, overrides={"optim.lrr": 1}), [])


def test_rerun_names_stages_or_cell_stages_and_a_typo_is_refused(tmp_path) -> None:
    grid = Grid(write_grid(tmp_path), ["rerun=[val, seed-1/tat, benchmark]"])
    first, second = grid.cells
    assert grid.rerun(first) == {"val", "benchmark"} and grid.rerun(second) == {"val", "tat", "benchmark"}
    assert "benchmark" in grid.rerun(None) and "tat" not in grid.rerun(None)
    for bad in ("valz", "seed-7/tat", "seed-0/benchmark"):
        with pytest.raises(ConfigError, match="config key `rerun`"):
            Grid(write_grid(tmp_path), [f"rerun=[{bad}]"])


def test_cells_need_names_of_their_own_and_reports_are_known(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config key `axes`: expected values that give every cell its own name"):
        Grid(write_grid(tmp_path, axes={"seed": [1, 1]}), [])
    with pytest.raises(ConfigError, match="config key `report`"):
        Grid(write_grid(tmp_path, report="tabel"), [])


def test_dry_run_prints_the_shared_call_before_the_cells(tmp_path, capfd) -> None:
    cli([str(write_grid(tmp_path)), "--dry-run"])
    out = capfd.readouterr().out.splitlines()
    assert out[0] == "shared stages:" and "-m cir.data.synth" in out[1] and out[2] == "cell 1/2: seed-0"
    assert sum("-m cir.fit " in line for line in out) == 2 and not (tmp_path / "out").exists()
