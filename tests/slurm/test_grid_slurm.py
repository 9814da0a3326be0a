"""`python -m cir.grid --slurm` on the real one-node cluster: the 2 x 2 grid of tests/grid with a second evaluation
stage, so each cell is a training job (slurm/tat.sbatch) and an array of two evaluations that waits on it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from slurm_cluster import LocalSlurm, wait_for

from cir.data.synth import generate, shard_urls
from cir.grid.__main__ import cli
from cir.grid.plan import Grid
from cir.report.collect import collect

REPO = Path(__file__).resolve().parents[2]
CELLS = {"anchor-text_lr-0.001", "anchor-text_lr-0.003", "anchor-image_lr-0.001", "anchor-image_lr-0.003"}
TINY_SYNTH = {"pretrain_samples": 16, "tune_samples": 64, "train_queries": 8, "val_queries": 24, "test_queries": 4,
              "shard_size": 64}
TINY = ["trainer.max_steps=2", "data.batch_size=16", "data.num_workers=0", "tat.trainer.enable_progress_bar=false",
        "eval.alphas=[0.9]", "eval.examples=0"]


def grid_file(tmp_path: Path) -> Path:
    """experiments/grid_demo.yaml with absolute stage files, one CPU per job, and the same evaluation on train."""
    cfg = OmegaConf.load(REPO / "experiments" / "grid_demo.yaml")
    for stage in cfg.stages.values():
        stage.config = str(REPO / "experiments" / stage.config)
    cfg.stages.cirr_train = OmegaConf.merge(cfg.stages.cirr_val, {"overrides": {"data.split": "train"}})
    cfg.slurm = {"template": str(REPO / "slurm" / "tat.sbatch"), "fit": ["--ntasks-per-node=1", "--cpus-per-task=1"],
                 "other": ["--ntasks=1", "--cpus-per-task=1"]}
    path = tmp_path / "grid.yaml"
    OmegaConf.save(cfg, path)
    return path


@pytest.mark.slurm
@pytest.mark.slow
def test_grid_submits_training_jobs_and_dependent_arrays_then_skips_and_reports_every_cell(
        slurm_cluster: LocalSlurm, tmp_path: Path, monkeypatch, capfd) -> None:
    for key in ("SLURM_CONF", "PATH"):  # sbatch and squeue of this test's cluster; its jobs run this Python
        monkeypatch.setenv(key, slurm_cluster.env[key])
    synth = tmp_path / "synth"
    generate(synth, 0, progress=False, **TINY_SYNTH)
    out = tmp_path / "grid"
    args = [str(grid_file(tmp_path)), f"output_dir={out}", f"data.train_shards={shard_urls(synth, 'tune')}",
            f"data.root={synth / 'cirr'}", *TINY, "--slurm"]

    def submit() -> list[str]:
        cli(args)
        return capfd.readouterr().out.splitlines()

    def diagnose(what: str) -> str:
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted((out / "slurm").glob("*.out")))
        return f"{what}\n{logs}\n{slurm_cluster.logs()}"

    lines = submit()
    jobs = json.loads((out / "jobs.json").read_text())
    assert set(jobs) == {f"{cell}/{stage}" for cell in CELLS for stage in ("tat", "cirr_val", "cirr_train")}
    sbatch = [line for line in lines if line.startswith("sbatch ")]
    assert len(sbatch) == 8, lines  # per cell: the training job and one array of its two evaluations
    for cell in CELLS:
        train = jobs[f"{cell}/tat"]["job"]
        array = jobs[f"{cell}/cirr_val"]["job"].split("_")[0]
        assert re.fullmatch(r"\d+", train) and jobs[f"{cell}/cirr_train"]["job"] == f"{array}_1"
        assert jobs[f"{cell}/cirr_val"]["job"] == f"{array}_0"
        arrays = [line for line in sbatch if f"--dependency=afterok:{train} " in line]
        assert len(arrays) == 1 and "--array=0-1 " in arrays[0], sbatch
        assert any(str(REPO / "slurm" / "tat.sbatch") in line and f"output_dir={out / cell / 'tat'}" in line
                   for line in sbatch)

    again = submit()  # at once: every call is queued, running or (a fast one) done; nothing is submitted twice
    assert not [line for line in again if line.startswith("sbatch ")], again
    assert sum("still queued or running, skipped" in line or "done before, skipped" in line for line in again) == 12
    assert json.loads((out / "jobs.json").read_text()) == jobs

    ids = {entry["job"] for entry in jobs.values()}
    try:
        wait_for(lambda: not ids & set(slurm_cluster.run("squeue", "-h", "-r", "-o", "%i").stdout.split()), 540,
                 "the grid's jobs to leave the queue", interval=1.0)
    except TimeoutError as err:
        pytest.fail(diagnose(str(err)))
    # every call's outputs complete with its config (job records age out of scontrol, so outputs are the evidence)
    grid = Grid(args[0], args[1:-1])
    unfinished = [f"{cell.name}/{stage.name}" for cell in grid.cells for stage in grid.stages(cell) if not stage.done()]
    if unfinished:
        pytest.fail(diagnose(f"calls not done after their jobs left the queue: {unfinished}"))

    rows = collect([out])
    assert {(row.cell, row.split) for row in rows} == {(cell, split) for cell in CELLS for split in ("val", "train")}
    assert all(("cirr", "R@1") in row.metrics for row in rows)

    done = submit()
    assert not [line for line in done if line.startswith("sbatch ")]
    assert sum("done before, skipped" in line for line in done) == 12, done
