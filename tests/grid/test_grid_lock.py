"""Two grids on one folder: the second stops at once, naming the first (cir.run_lock on the grid's folder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cir.grid.__main__ import cli

GRID = Path(__file__).resolve().parents[2] / "experiments" / "grid_demo.yaml"
HOLD = ("import sys; from cir.run_lock import RunLock\nwith RunLock(sys.argv[1], 'grid'):\n"
        "    print('held', flush=True); sys.stdin.read()")


def test_a_second_grid_on_a_folder_in_use_stops_naming_the_holder(tmp_path, capsys):
    root = tmp_path / "grid"
    (tmp_path / "cirr").mkdir()  # the grid's cells pass their checks: only then does it take its folder's lock
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as stop:
            cli([str(GRID), f"output_dir={root}", f"data.train_shards={tmp_path}/tune-000000.tar",
                 f"data.root={tmp_path}/cirr"])
    finally:
        holder.kill()
        holder.wait()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"config key `output_dir`: {root} is in use by another grid (pid {holder.pid} on " in err
    assert not (root / "grid.json").exists()
