"""Submit a grid with SLURM's own tools: sbatch per training cell through slurm/tat.sbatch, the rest as jobs (arrays
where several wait on the same jobs) that depend on them with afterok; jobs.json in the grid folder keeps the ids.

A call whose outputs are complete is skipped, and so is one whose job is still
queued or running (squeue); a call that reads a stage submitted now is
submitted again too. Evaluation and submission jobs run
`python -m cir.grid CONFIG ... --only CELL/STAGE`, so they read the export a
training job wrote when they start.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cir.config import ConfigError
from cir.grid.plan import Cell, Grid
from cir.grid.stages import CliCall, Stage
from cir.io import write_json

JOBS_FILE = "jobs.json"
LOGS = "slurm"


def read_jobs(root: Path) -> dict[str, dict[str, Any]]:
    path = root / JOBS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def queued_jobs(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> set[str]:
    """Ids of the jobs squeue lists (pending, running, ...); array tasks one by one, as `<array>_<task>`."""
    result = run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


class Submitter:
    """One submission of a grid: decides per call skip / wait on its queued job / submit, and submits."""

    def __init__(self, grid: Grid, echo: Callable[[str], None] = print, dry: bool = False,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
        self.grid, self.echo, self.dry, self.run = grid, echo, dry, run
        self.logs = grid.root / LOGS
        self.recorded = read_jobs(grid.root)
        try:
            self.active = queued_jobs(run)
        except (OSError, subprocess.CalledProcessError) as err:
            if not dry:
                raise FileNotFoundError(f"squeue, to see which jobs of the grid are still queued, failed: {err}") from None
            self.active = set()  # a dry run shows the commands on a machine without SLURM too
        self.ids: dict[str, str | None] = {}  # call key -> job id to wait on (None: done, nothing to wait on)
        self.submitted: dict[str, dict[str, Any]] = {}
        self.groups: dict[tuple[str, ...], list[tuple[str, CliCall]]] = {}
        self.dry_jobs = 0  # job ids a dry run makes up

    def sbatch(self, options: list[str], tail: list[str]) -> str:
        command = ["sbatch", "--parsable", *options, *tail]
        self.echo(shlex.join(command))
        if self.dry:
            self.dry_jobs += 1
            return f"<job{self.dry_jobs}>"
        self.logs.mkdir(parents=True, exist_ok=True)
        result = self.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip().split(";")[0]

    def dependency(self, needs: list[str]) -> list[str]:
        waiting = []
        for key in needs:
            group = next((deps for deps, members in self.groups.items() if key in (k for k, _ in members)), None)
            if group is not None:
                self.flush(group)
            if self.ids.get(key):
                waiting.append(self.ids[key])
        return [f"--dependency=afterok:{':'.join(waiting)}"] if waiting else []

    def key(self, cell: Cell | None, stage: str) -> str:
        """A call's name in jobs.json and for --only: CELL/STAGE, a shared stage's name alone."""
        return stage if cell is None or stage in self.grid.shared else f"{cell.name}/{stage}"

    def plan(self, cell: Cell | None, stages: list[Stage]) -> None:
        """Skip, wait on or submit each call of `stages` (a cell's, or the shared ones with `cell` None)."""
        for stage in stages:
            key = self.key(cell, stage.name)
            call = stage.call
            needs = [self.key(cell, n) for n in stage.needs]
            forced = any(self.ids.get(n) for n in needs)
            job = self.recorded.get(key, {}).get("job")
            if not forced and call.done():
                self.echo(f"{key}: done before, skipped")
                self.ids[key] = None
            elif job in self.active:
                self.echo(f"{key}: job {job} still queued or running, skipped")
                self.ids[key] = job
            else:
                if not self.dry:
                    call.prepare(from_scratch=forced)
                spec = self.grid.cfg.stages[stage.name]
                if call.cli == "fit":
                    options = [f"--job-name={self.grid.cfg.name}:{key}", f"--output={self.logs}/{key.replace('/', '.')}.%j.out",
                               *self.dependency(needs), *self.grid.cfg.slurm.fit, *spec.sbatch]
                    template = str(Path(self.grid.cfg.slurm.template).resolve())
                    self.record(key, self.sbatch(options, [template, str(call.config), *call.overrides]))
                else:
                    deps = tuple(self.dependency(needs))
                    self.groups.setdefault(deps + tuple(spec.sbatch), []).append((key, call))

    def flush(self, group: tuple[str, ...]) -> None:
        """Submit a group of non-training calls that wait on the same jobs: one job, or a job array."""
        members = self.groups.pop(group)
        keys = [key for key, _ in members]
        only = ["python", "-m", "cir.grid", str(self.grid.path), *self.grid.argv_overrides, "--only"]
        options = [f"--job-name={self.grid.cfg.name}:{keys[0] if len(keys) == 1 else 'array'}",
                   *group, *self.grid.cfg.slurm.other]
        if len(keys) == 1:
            options.append(f"--output={self.logs}/{keys[0].replace('/', '.')}.%j.out")
            job = self.sbatch(options, [f"--wrap=exec {shlex.join([*only, keys[0]])}"])
            self.record(keys[0], job)
            return
        calls = " ".join(shlex.quote(k) for k in keys)
        options += [f"--array=0-{len(keys) - 1}", f"--output={self.logs}/array.%A_%a.out"]
        # sbatch --wrap runs /bin/sh: task i takes the i-th of the positional parameters
        script = f'set -- {calls}; shift "$SLURM_ARRAY_TASK_ID"; exec {shlex.join(only)} "$1"'
        job = self.sbatch(options, [f"--wrap={script}"])
        for task, key in enumerate(keys):
            self.record(key, f"{job}_{task}")

    def record(self, key: str, job: str) -> None:
        self.ids[key] = job
        self.submitted[key] = {"job": job, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def submit_all(self) -> list[str]:
        """Check every call, then plan and submit every cell; writes jobs.json (unless a dry run); returns the cells
        that failed their check or their planning."""
        lines, failed = self.grid.check()
        for line in lines:
            self.echo(line)
        if len(failed) == len(self.grid.cells):
            return failed
        try:
            self.plan(None, self.grid.shared_stages())
        except (ConfigError, FileNotFoundError) as err:
            self.echo(f"shared stages: FAILED: {err}")
            return [c.name for c in self.grid.cells]
        for cell in self.grid.cells:
            if cell.name in failed:
                continue
            try:
                self.plan(cell, self.grid.stages(cell))
            except (ConfigError, FileNotFoundError) as err:
                self.echo(f"cell {cell.name}: FAILED: {err}")
                failed.append(cell.name)
        while self.groups:
            self.flush(next(iter(self.groups)))
        for key, entry in self.submitted.items():
            self.echo(f"{key}: job {entry['job']}")
        if not self.dry:
            write_json(self.grid.root / JOBS_FILE, {**self.recorded, **self.submitted})
        return failed
