"""What "done before, skipped" means, on real calls of a one-cell grid (tiny_grid): a fit or evaluation is done only
when its completion record, written last, says so for the fingerprint it would run with now and names every output;
an interrupted extension, a failed feature write and an edited model config are not done, and --dry-run shows a
stage that reads one that will run as running too."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from tiny_grid import make_benchmark, write_grid

import cir.models
from cir import completion, fit
from cir.grid.__main__ import cli
from cir.grid.plan import Grid
from cir.run_lock import HOLDER_NAME, LOCK_NAME

pytestmark = pytest.mark.slow
CELL = "seed-0"
BOOKKEEPING = {completion.RECORD, "stdout.log", LOCK_NAME, HOLDER_NAME}  # beside a stage's outputs


class Killed(BaseException):
    """Stands for a kill: nothing after it runs."""


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("done")
    return write_grid(root / "grid.yaml", make_benchmark(root / "benchmark"), root / "out")


def run_grid(grid_file: Path, capfd, *args: str) -> list[str]:
    """The grid's command line in this process; its stage lines."""
    try:
        cli([str(grid_file), "tat.trainer.max_steps=2", *args])
    except SystemExit as exit_info:
        assert exit_info.code == 1
    return [line for line in capfd.readouterr().out.splitlines() if line.startswith(("[", "  "))]


def folder(grid_file: Path, stage: str) -> Path:
    return grid_file.parent / "out" / CELL / stage


def assert_done_with_every_output_named(out: Path) -> None:
    record = json.loads((out / completion.RECORD).read_text())
    assert record["state"] == "done"
    present = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name not in BOOKKEEPING}
    if out.name == "tat":
        present = {p for p in present if not p.startswith(("checkpoints/", "tensorboard/"))}
    assert present == set(record["outputs"]), out


def test_the_record_is_written_last_and_names_every_output(grid_file, capfd, monkeypatch) -> None:
    replaced: list[str] = []
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        replaced.append(str(dst))

    monkeypatch.setattr(os, "replace", replace)
    run_grid(grid_file, capfd, "fresh=true")
    for stage in ("tat", "cirr_val"):
        out = folder(grid_file, stage)
        assert [p for p in replaced if p.startswith(f"{out}/")][-1] == str(out / completion.RECORD)
        assert_done_with_every_output_named(out)
    assert len(json.loads((folder(grid_file, "cirr_val") / completion.RECORD).read_text())["inputs"]) == 2


def test_a_failed_feature_write_leaves_the_evaluation_not_done_and_a_rerun_redoes_it(grid_file, capfd,
                                                                                     monkeypatch) -> None:
    run_grid(grid_file, capfd)
    out = folder(grid_file, "cirr_val")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "features" / "cirr-val.npz"))

    with monkeypatch.context() as patch:
        patch.setattr("cir.evaluation.run.save_features", full_disk)
        run_grid(grid_file, capfd, "rerun=[cirr_val]")
    assert (out / "metrics.json").is_file() and (out / "config.yaml").is_file()  # written before the features
    grid = Grid(grid_file, ["tat.trainer.max_steps=2"])
    assert grid.call(grid.cells[0], "cirr_val").why_not_done() == "interrupted"
    lines = run_grid(grid_file, capfd)
    assert "[1/2] seed-0/tat: fit demo_tat.yaml: done before, skipped" in lines
    assert any(line.startswith("[2/2] seed-0/cirr_val: done in") for line in lines), lines
    assert_done_with_every_output_named(out)


def test_dry_run_shows_the_readers_of_a_stage_that_will_run_running_too(grid_file, capfd, monkeypatch) -> None:
    run_grid(grid_file, capfd)
    assert run_grid(grid_file, capfd, "--dry-run") == ["  tat: done before, skipped",
                                                            "  cirr_val: done before, skipped"]
    lines = run_grid(grid_file, capfd, "--dry-run", "rerun=[tat]")
    assert "-m cir.fit" in lines[0] and "-m cir.evaluate" in lines[1], lines


def test_editing_layers_in_cir_demo_json_undoes_the_finished_cell(grid_file, capfd, monkeypatch) -> None:
    """cir-demo.json with another `layers` (a copy, as other tests read the shipped one): both stages would rerun."""
    run_grid(grid_file, capfd)
    configs = grid_file.parent / "configs"
    shutil.copytree(cir.models.CONFIG_DIR, configs, dirs_exist_ok=True)
    model = json.loads((configs / "cir-demo.json").read_text())
    model["vision_cfg"]["layers"] += 1
    (configs / "cir-demo.json").write_text(json.dumps(model))
    monkeypatch.setattr(completion, "shipped_configs", lambda: configs)
    grid = Grid(grid_file, ["tat.trainer.max_steps=2"])
    assert grid.call(grid.cells[0], "tat").why_not_done() == "model changed"
    lines = run_grid(grid_file, capfd, "--dry-run")
    assert "-m cir.fit" in lines[0] and "-m cir.evaluate" in lines[1], lines


def test_an_interrupted_extension_is_not_done_with_the_old_export(grid_file, capfd, monkeypatch) -> None:
    """A finished 2-step fit extended to 4 steps in its folder and killed before its export: the old run.json and
    export.pt are still there beside a config.yaml that says 4 steps; the grid with 4 steps must train again."""
    run_grid(grid_file, capfd)
    out = folder(grid_file, "tat")
    old = json.loads((out / "run.json").read_text())
    grid = Grid(grid_file, ["tat.trainer.max_steps=4"])
    call = grid.call(grid.cells[0], "tat")

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr("cir.training.export_backbone", killed)
        fit.main(str(call.config), list(call.overrides))
    assert "max_steps: 4" in (out / "config.yaml").read_text() and (out / "export.pt").is_file()
    assert json.loads((out / "run.json").read_text()) == old
    assert not call.done()
    lines = run_grid(grid_file, capfd, "tat.trainer.max_steps=4")
    assert lines[0].startswith("[1/2] seed-0/tat: fit demo_tat.yaml ...") and lines[2].startswith(
        "[2/2] seed-0/cirr_val: evaluate"), lines
    assert json.loads((out / "run.json").read_text())["global_step"] == 4
    assert_done_with_every_output_named(out)
