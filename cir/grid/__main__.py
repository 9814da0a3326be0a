"""`python -m cir.grid CONFIG [key=value ...] [--slurm] [--dry-run] [--debug]`: every cell of a grid of runs.

`key=value` reaches every stage whose config has the key, `STAGE.key=value`
one stage, grid keys (output_dir, name, slurm.*) the grid. Locally the cells
run one after the other; a cell whose calls are complete with the same
config is skipped; a failed cell is reported, the others go on, and the exit
status is 1 naming the failed cells. `--slurm` submits the cells with sbatch
(jobs.json in the grid folder), `--dry-run` prints the commands instead.
`--only CELL/STAGE` (or `--only STAGE` for a shared stage) runs one call (what the grid's SLURM jobs run).
`python -m cir.fit CONFIG` runs a grid config (`task: grid`) the same way.
A grid holds its folder locked while it runs or submits (cir.run_lock): a second
grid on the same folder stops at once, naming the holder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from cir.config import ConfigError, run_cli
from cir.grid.local import run_cells, write_records
from cir.grid.plan import Grid
from cir.grid.slurm import Submitter
from cir.run_lock import RunLock


def run_one(grid: Grid, key: str) -> None:
    """One call of one cell, in place of this process (its exit status is the job's)."""
    cell_name, _, stage = key.rpartition("/")
    cell = grid.cells[0] if not cell_name and stage in grid.shared else next(
        (c for c in grid.cells if c.name == cell_name and stage not in grid.shared), None)
    if cell is None or stage not in grid.stage_names:
        raise ConfigError(f"--only {key}: expected CELL/STAGE with a cell from {[c.name for c in grid.cells]} "
                          f"and a stage from {grid.stage_names}, or a shared stage from {grid.shared}")
    call = grid.call(cell, stage)  # not validated here: the CLI does that as it starts
    call.prepare(from_scratch=False)
    sys.stdout.flush()
    os.execv(sys.executable, call.command)


def main(path: str | None, overrides: list[str], slurm: bool = False, dry_run: bool = False,
         only: str | None = None) -> list[str]:
    """Runs (or submits, or prints) the grid; returns the failed cells."""
    if path is None:
        raise ConfigError("usage: python -m cir.grid CONFIG [key=value ...] [--only CELL/STAGE] [--slurm] [--dry-run]")
    grid = Grid(path, overrides)
    if only is not None:
        run_one(grid, only)
    dry = dry_run
    # a config error in every cell runs nothing: the grid folder is then neither made nor locked
    nothing_runs = dry or len(grid.check()[1]) == len(grid.cells)
    with contextlib.nullcontext() if nothing_runs else RunLock(grid.root, "grid"):
        if slurm:
            if not dry:
                write_records(grid)
            failed = Submitter(grid, dry=dry).submit_all()
        else:
            failed = run_cells(grid, dry=dry)
    if failed:
        print(f"failed cells ({len(failed)} of {len(grid.cells)}): {', '.join(failed)}", file=sys.stderr)
    elif not dry and slurm:
        print(f"all {len(grid.cells)} cells submitted or done: python -m cir.report {grid.root}")
    elif not dry and grid.cfg.report is None:
        print(f"all {len(grid.cells)} cells done: python -m cir.report {grid.root}")
    return failed


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", metavar="CELL/STAGE", help="run one call of one cell (STAGE alone: a shared "
                        "stage), in place of this process: what the grid's SLURM jobs run")
    parser.add_argument("--slurm", action="store_true", help="submit the cells with sbatch (jobs.json in the grid folder)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands (and what is done) instead of running")


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    failed = run_cli(main, argv, "grid", prog, options)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    cli()
