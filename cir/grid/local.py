"""Run a grid's cells one after the other here; a failed cell is reported and the others go on."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable

from cir.config import ConfigError
from cir.grid.plan import CELL_FILE, Cell, Grid
from cir.grid.stages import run_stages
from cir.io import write_json

GRID_FILE = "grid.json"


def write_records(grid: Grid) -> None:
    """grid.json (the cells) and each cell's cell.json, which cir.report reads for its labels."""
    write_json(grid.root / GRID_FILE, {"name": grid.cfg.name, "config": str(grid.path),
                                       "overrides": grid.argv_overrides, "cells": [c.name for c in grid.cells]})
    for cell in grid.cells:
        write_json(grid.root / cell.name / CELL_FILE, grid.record(cell))


def failure(err: Exception) -> str:
    if isinstance(err, subprocess.CalledProcessError):
        return f"`{shlex.join(err.cmd[1:])}` exited with status {err.returncode} (its output is above)"
    return str(err)


def dry_run(grid: Grid, cell: Cell, echo: Callable[[str], None]) -> None:
    for stage in grid.stages(cell):
        call = stage.calls[0]
        echo(f"  {stage.name}: done before, skipped" if call.done() else f"  {shlex.join(call.command)}")


def run_cells(grid: Grid, echo: Callable[[str], None] = print, dry: bool = False) -> list[str]:
    """Every cell in order; returns the names of the cells that failed (config error or a CLI's non-zero exit)."""
    if not dry:
        write_records(grid)
    failed: list[str] = []
    for number, cell in enumerate(grid.cells, 1):
        echo(f"cell {number}/{len(grid.cells)}: {cell.name}")
        try:
            stages = grid.stages(cell)
            for stage in stages:  # a cell's stage configs are all checked before its first stage runs
                stage.validate("grid")
            if dry:
                dry_run(grid, cell, echo)
            else:
                run_stages(stages, set(), False, echo, prefix=f"{cell.name}/")
        except (ConfigError, FileNotFoundError, subprocess.CalledProcessError) as err:
            echo(f"cell {cell.name}: FAILED: {failure(err)}")
            failed.append(cell.name)
    return failed
