"""`python -m cir.grid` here: a 2 x 2 grid (anchor x learning rate) of the demo's tiny model on the generated
benchmark, end to end through the real CLIs; reruns skip; one failed cell leaves the others' results."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cir import signals
from cir.config import ConfigError
from cir.data.synth import generate, shard_urls
from cir.grid.__main__ import cli
from cir.grid.local import run_cells
from cir.grid.plan import Grid
from cir.grid.stages import InProcessCall
from cir.signals import Stopped

GRID = Path(__file__).resolve().parents[2] / "experiments" / "grid_demo.yaml"
CELLS = ["anchor-text_lr-0.001", "anchor-text_lr-0.003", "anchor-image_lr-0.001", "anchor-image_lr-0.003"]
TINY_SYNTH = {"pretrain_samples": 16, "tune_samples": 64, "train_queries": 8, "val_queries": 24, "test_queries": 4,
              "shard_size": 64}
TINY = ["trainer.max_steps=2", "data.batch_size=16", "data.num_workers=0", "tat.trainer.enable_progress_bar=false",
        "cirr_val.eval.alphas=[0.9]", "cirr_val.eval.examples=0"]


def tiny_grid_args(synth: Path, out: Path) -> list[str]:
    """The grid's mandatory inputs (the generated benchmark) and tiny settings for every stage that has them."""
    return [f"output_dir={out}", f"data.train_shards={shard_urls(synth, 'tune')}", f"data.root={synth / 'cirr'}", *TINY]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, 0, progress=False, **TINY_SYNTH)
    return out


def run_grid(args: list[str], capfd) -> tuple[list[str], str]:
    """cir.grid's command line in this process (its CLI calls are subprocesses); stdout lines and stderr."""
    cli([str(GRID), *args])
    captured = capfd.readouterr()
    return captured.out.splitlines(), captured.err


def stage_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("[") and ("done in" in line or "skipped" in line)]


@pytest.fixture(scope="module")
def grid_run(synth, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grid") / "tiny"
    cli([str(GRID), *tiny_grid_args(synth, out)])
    return out


@pytest.mark.slow
def test_every_cell_trains_and_evaluates_the_export_it_trained(grid_run: Path) -> None:
    assert json.loads((grid_run / "grid.json").read_text())["cells"] == CELLS
    for cell in CELLS:
        anchor, lr = cell.split("_")
        record = json.loads((grid_run / cell / "tat" / "run.json").read_text())
        assert record["config"]["model"]["anchor"] == anchor.split("-")[1]
        assert record["config"]["optim"]["lr"] == float(lr.split("-")[1])
        metrics = json.loads((grid_run / cell / "cirr_val" / "metrics.json").read_text())
        assert metrics["meta/pretrained"] == record["export"] == str(grid_run / cell / "tat" / "export.pt")
        assert metrics["meta/model"] == record["export_model_name"]
        assert "cirr/val/slerp_a0.9/R@1" in metrics
        assert json.loads((grid_run / cell / "cell.json").read_text())["axes"] == {
            "model.anchor": anchor, "optim.lr": lr}


@pytest.mark.slow
def test_rerun_skips_every_call(grid_run: Path, synth: Path, capfd) -> None:
    before = {p: p.stat().st_mtime_ns for p in grid_run.rglob("*") if p.name in ("export.pt", "metrics.json")}
    lines, err = run_grid(tiny_grid_args(synth, grid_run), capfd)
    assert len(stage_lines(lines)) == 8 and all("done before, skipped" in line for line in stage_lines(lines)), lines
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert lines[-1] == f"all 4 cells done: python -m cir.report {grid_run}" and not err


@pytest.mark.slow
def test_a_failed_cell_is_reported_and_the_others_go_on(grid_run: Path, synth: Path, capfd) -> None:
    broken, after = "anchor-image_lr-0.001", "anchor-image_lr-0.003"
    export = grid_run / broken / "tat" / "export.pt"
    # garbage of the export's size: its fit is still done (its completion record checks sizes), while the evaluation
    # reading it reruns (the export's mtime is part of its fingerprint) and cannot load it
    export.write_bytes(b"\0" * export.stat().st_size)
    (grid_run / after / "cirr_val" / "metrics.json").unlink()  # the next cell's evaluation reruns after that failure
    with pytest.raises(SystemExit) as exit_info:
        run_grid(tiny_grid_args(synth, grid_run), capfd)
    assert exit_info.value.code == 1
    captured = capfd.readouterr()
    assert f"failed cells (1 of 4): {broken}" in captured.err
    assert f"cell {broken}: FAILED: `-m cir.evaluate" in captured.err
    assert f"{after}/cirr_val: done in" in captured.out
    for cell in CELLS:
        assert (grid_run / cell / "cirr_val" / "metrics.json").is_file() == (cell != broken)


def test_mandatory_inputs_and_unknown_keys_fail_before_any_cell(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"`tat.data.train_shards`: mandatory.*data.train_shards=\.\.\."):
        Grid(GRID, [f"output_dir={tmp_path}", "data.root=x"])
    with pytest.raises(ConfigError, match="`optim.lrr`: no stage of the grid has it"):
        Grid(GRID, ["data.train_shards=x", "data.root=x", "optim.lrr=1"])
    with pytest.raises(ConfigError, match="stagez"):
        Grid(GRID, ["data.train_shards=x", "data.root=x", "stagez.x=1"])
    with pytest.raises(ConfigError, match="`stages.eval`: expected a stage name that is no config section"):
        Grid(GRID, ["data.train_shards=x", "data.root=x", "stages.eval.config=demo_eval.yaml"])
    assert not any(tmp_path.iterdir())


def test_overrides_reach_the_stages_that_have_the_key_or_the_one_named(tmp_path: Path) -> None:
    grid = Grid(GRID, [f"output_dir={tmp_path}", "data.train_shards=s", "data.root=r", "data.batch_size=8",
                       "tat.data.num_workers=3"])
    cell = grid.cells[3]
    tat, evaluation = (grid.call(cell, name) for name in ("tat", "cirr_val"))
    # the grid's own values, the axes', the command line's (a `???` given there takes the later place), the folder
    assert tat.overrides == ("model.anchor=image", "optim.lr=0.003", "data.train_shards=s", "data.batch_size=8",
                             "data.num_workers=3", f"output_dir={tmp_path / cell.name / 'tat'}")
    assert evaluation.overrides == ("model.name=cir-demo", f"model.pretrained={tmp_path / cell.name / 'tat' / 'export.pt'}",
                                    "eval.cache_dir=null", "data.root=r", "data.batch_size=8",
                                    f"output_dir={tmp_path / cell.name / 'cirr_val'}")


def test_dry_run_prints_the_commands_and_runs_nothing(tmp_path: Path, capfd) -> None:
    cli([str(GRID), f"output_dir={tmp_path / 'g'}", "data.train_shards=s", f"data.root={tmp_path}", "--dry-run"])
    out = capfd.readouterr().out
    assert out.count("-m cir.fit ") == 4 and out.count("-m cir.evaluate ") == 4
    assert not (tmp_path / "g").exists()


def in_process_grid(tmp_path: Path) -> Path:
    """Two cells (seed 0, 1) of one in-process evaluation stage; the tests replace the call's run."""
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({
        "task": "grid", "output_dir": str(tmp_path / "out"), "in_process": True, "axes": {"seed": [0, 1]},
        "stages": {"val": {"cli": "evaluate", "config": str(GRID.parent / "demo_eval.yaml"),
                           "overrides": {"data.root": str(tmp_path)}}}}))
    return path


def test_in_process_any_exception_of_a_call_fails_its_cell_only(tmp_path: Path, monkeypatch) -> None:
    path = in_process_grid(tmp_path)
    ran: list[str] = []

    def run(call: InProcessCall, from_scratch: bool) -> None:
        ran.append(call.out.parent.name)
        if call.out.parent.name == "seed-0":
            raise RuntimeError("boom")

    monkeypatch.setattr(InProcessCall, "run", run)
    lines: list[str] = []
    warnings: list[str] = []
    assert run_cells(Grid(path, []), lines.append, warn=warnings.append) == ["seed-0"]
    assert ran == ["seed-0", "seed-1"] and "[1/1] seed-1/val: done in 0 s" in lines
    assert warnings == ["cell seed-0: FAILED: RuntimeError: boom (an in-process call; --debug shows the traceback)"]


def test_in_process_a_call_failing_after_a_stop_signal_stops_the_grid(tmp_path: Path, monkeypatch) -> None:
    """A SIGTERM that also killed the fit's DataLoader worker surfaces as the worker's RuntimeError: the grid stops
    with the signal (exit 143 through cir.signals) instead of failing the cell and going on to the next."""
    path = in_process_grid(tmp_path)
    ran: list[str] = []

    def run(call: InProcessCall, from_scratch: bool) -> None:
        ran.append(call.out.parent.name)
        signals.note(signal.SIGTERM)
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated")

    monkeypatch.setattr(InProcessCall, "run", run)
    monkeypatch.setattr(signals, "_received", [])
    with pytest.raises(Stopped) as stopped:
        run_cells(Grid(path, []), lambda line: None, warn=lambda line: None)
    assert stopped.value.code == 143 and ran == ["seed-0"]


def test_in_process_calls_hide_lightnings_info_lines_even_when_the_first_call_imports_it() -> None:
    """The grid's first in-process fit imports Lightning, whose import sets its logger back to INFO: its "GPU
    available" lines then printed twice (its own handler and the root's). A fresh process, as a user's grid runs."""
    script = ("import sys; from cir.logs import setup_logging; from cir.grid.local import quiet_logs\n"
              "setup_logging(); assert 'lightning' not in sys.modules\n"
              "with quiet_logs():\n"
              "    from lightning.pytorch.utilities import rank_zero_info\n"
              "    rank_zero_info('GPU available: False, used: False')\n"
              "    import logging; logging.getLogger('cir.test').info('ours')\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "GPU available" not in run.stdout + run.stderr
    assert "ours" in run.stderr
