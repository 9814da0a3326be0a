"""Run a grid here: its shared stages, then its cells one after the other; a failed cell is reported and the others
go on. With `report:` set, the cross-cell report is written once every cell is done."""

from __future__ import annotations

import contextlib
import importlib
import logging
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from cir import signals
from cir.config import ConfigError
from cir.grid.children import exit_text
from cir.grid.plan import CELL_FILE, REPORTS, Grid
from cir.grid.stages import Stage, decide, run_stages
from cir.io import write_json
from cir.signals import Stopped

GRID_FILE = "grid.json"
FAILURES = (ConfigError, FileNotFoundError, subprocess.CalledProcessError)
log = logging.getLogger(__name__)


def write_records(grid: Grid) -> None:
    """grid.json (the cells) and each cell's cell.json, which cir.report reads for its labels."""
    write_json(grid.root / GRID_FILE, {"name": grid.cfg.name, "config": str(grid.path),
                                       "overrides": grid.argv_overrides, "cells": [c.name for c in grid.cells]})
    for cell in grid.cells:
        write_json(grid.root / cell.name / CELL_FILE, grid.record(cell))


def failure(err: Exception) -> str:
    if isinstance(err, subprocess.CalledProcessError):
        return f"`{shlex.join(err.cmd[1:])}` ended with {exit_text(err.returncode)} (its output is above)"
    if isinstance(err, FAILURES):
        return str(err)
    log.debug("the failure's traceback", exc_info=err)
    return f"{type(err).__name__}: {err} (an in-process call; --debug shows the traceback)"


def dry_run(stages: Sequence[Stage], rerun: set[str], fresh: bool, echo: Callable[[str], None],
            ran: Sequence[str] = ()) -> list[str]:
    """What run_stages would do, as commands: a stage that reads one that will run is shown running, not done."""
    ran = list(ran)
    for stage in stages:
        runs, _ = decide(stage, rerun, fresh, ran)
        echo(f"  {shlex.join(stage.call.command)}" if runs else f"  {stage.name}: done before, skipped")
        if runs:
            ran.append(stage.name)
    return ran


def cpu_seconds() -> float:
    """User + sys time of this process and its finished children (CLI processes, data-loader workers)."""
    return sum(usage.ru_utime + usage.ru_stime
               for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """In-process calls: cir's own log lines stay, everyone else's info lines (one set per Trainer and per model)
    would drown the stage lines. With --debug (cir logging at DEBUG) everything stays."""
    if logging.getLogger("cir").getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    # Importing lightning.pytorch sets its logger to INFO; imported first inside the block (the grid's first fit), it
    # would undo the level set here and print its "GPU available" lines twice (its handler and the root's).
    import lightning.pytorch  # noqa: F401
    names = ("", "lightning.pytorch", "lightning.fabric", "cir")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names[:-1]:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("cir").setLevel(logging.INFO)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def stop_if_signalled(err: Exception) -> None:
    """An in-process call that failed after the grid received a stop signal (its DataLoader worker died of the same
    signal) stops the grid with that signal, not just its cell: the grid must not go on to the next cell."""
    signum = signals.received()
    if signum:
        raise Stopped(signum) from err


def run_cells(grid: Grid, echo: Callable[[str], None] = print, dry: bool = False,
              warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> list[str]:
    """The shared stages, then every cell in order; returns the names of the cells that failed (config error or a
    CLI's non-zero exit). Every call is checked before the first one runs, so a typo costs no work; a failed shared
    stage fails every cell. In-process, any exception of a call fails its cell only, as a process's exit would."""
    start, cpu_start = time.perf_counter(), cpu_seconds()
    caught = Exception if grid.cfg.in_process else FAILURES
    lines, failed = grid.check()
    for line in lines:
        warn(line)
    if len(failed) == len(grid.cells):
        return failed
    shared = grid.shared_stages()
    if dry:
        if shared:
            echo("shared stages:")
        ran = dry_run(shared, grid.rerun(None), grid.cfg.fresh, echo)
        for number, cell in enumerate(grid.cells, 1):
            if cell.name not in failed:
                echo(f"cell {number}/{len(grid.cells)}: {cell.name}")
                dry_run(grid.stages(cell), grid.rerun(cell), grid.cfg.fresh, echo, ran)
        return failed
    write_records(grid)
    with quiet_logs() if grid.cfg.in_process else contextlib.nullcontext():
        try:
            ran = run_stages(shared, grid.rerun(None), grid.cfg.fresh, echo) if shared else []
        except caught as err:
            stop_if_signalled(err)
            warn(f"shared stages: FAILED: {failure(err)}")
            return [c.name for c in grid.cells]
        for number, cell in enumerate(grid.cells, 1):
            if cell.name in failed:
                continue
            echo(f"cell {number}/{len(grid.cells)}: {cell.name}")
            try:
                run_stages(grid.stages(cell), grid.rerun(cell), grid.cfg.fresh, echo, ran=ran, prefix=f"{cell.name}/")
            except caught as err:
                stop_if_signalled(err)
                warn(f"cell {cell.name}: FAILED: {failure(err)}")
                failed.append(cell.name)
        if grid.cfg.report is not None and not failed:
            report = importlib.import_module(REPORTS[grid.cfg.report]).grid_report
            report(grid, time.perf_counter() - start, cpu_seconds() - cpu_start, echo)
    return failed
