"""Stages of CLI calls that skip on rerun: the runner behind `python -m cir.grid` (and so the embedded demo).

A call is one `python -m cir.fit | cir.evaluate | cir.submit | cir.data.synth`
with a stage YAML and overrides, run in a process of its own or (InProcessCall)
in this one. A call counts as done when its completion record
(cir.completion) says done with the fingerprint it would run with now (config,
model config JSON, weights, data) and every output it names is there. A fit or
synth whose folder holds an interrupted run of the same fingerprint resumes
there (the generator starts its files afresh); any other call that is
not done starts from an empty folder (so cir.fit never resumes a checkpoint of
another config). Stages that read the output of a stage that ran rerun too,
from scratch.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from cir import completion
from cir.config import ConfigError, load_config
from cir.data.synth import settings as synth_settings
from cir.grid.children import run_child
from cir.schema import EvaluateConfig, FitConfig

MODULES = {"fit": "cir.fit", "evaluate": "cir.evaluate", "submit": "cir.submit", "synth": "cir.data.synth"}
CLIS = tuple(MODULES)
SCHEMAS = {"fit": FitConfig, "evaluate": EvaluateConfig, "submit": EvaluateConfig, "synth": synth_settings.SynthRunConfig}
STDOUT_LOG = "stdout.log"  # an in-process evaluation's printed table

@functools.lru_cache(maxsize=1024)
def _load(cli: str, config: Path, overrides: tuple[str, ...], modified_ns: int) -> DictConfig:
    return load_config(SCHEMAS[cli], config, overrides)


@dataclass(frozen=True)
class CliCall:
    """One call of `python -m cir.<cli>`: a stage YAML, overrides and the folder it writes (its output_dir)."""

    cli: str  # a key of MODULES
    config: Path
    overrides: tuple[str, ...]
    out: Path

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", MODULES[self.cli], str(self.config), *self.overrides]

    def load(self) -> DictConfig:
        """The config the CLI will run with (light: what a SLURM job decides its call by before it starts the CLI).

        A copy of a cached load: a grid builds each call, and the calls it reads, many times over (about 50 ms a
        load, 10 s of the demo's run). The key holds the config file's modification time, not its bases'."""
        return copy.deepcopy(_load(self.cli, self.config, self.overrides, self.config.stat().st_mtime_ns))

    def resolve(self) -> DictConfig:
        """The config the CLI will run with, validated by the checks the CLI runs first (cir.config_checks)."""
        from cir.config_checks import check_config  # it reads Lightning's Trainer; loading a config does not

        cfg = self.load()
        check_config(self.cli, cfg)
        return cfg

    def why_not_done(self) -> str | None:
        """None when the call's outputs are complete for what it would run with now; else why not, in a few words."""
        return completion.why_not_done(self.out, completion.fingerprint(self.load()))

    def done(self) -> bool:
        return self.why_not_done() is None

    def resumable(self) -> bool:
        """The folder holds an interrupted run of this very call, to go on with (a fit or synth; an evaluation or
        submission starts afresh, leaving nothing of an earlier attempt beside its outputs)."""
        return self.cli in ("fit", "synth") and completion.same_run(self.out, completion.fingerprint(self.load()))

    def prepare(self, from_scratch: bool) -> None:
        """Empty the folder unless it holds a run to go on with or is done."""
        if from_scratch or not (self.resumable() or self.done()):
            shutil.rmtree(self.out, ignore_errors=True)

    def run(self, from_scratch: bool) -> None:
        """In a process of its own (failures stay in it) that ends with the grid (cir.grid.children); its output goes
        to the terminal."""
        self.prepare(from_scratch)
        run_child(self.command)


class InProcessCall(CliCall):
    """The CLI's main in this process, saving a fresh interpreter's imports per call (seconds each, which a grid of
    small calls such as the embedded demo feels). Training keeps Lightning's progress bar on the terminal; an
    evaluation's or submission's printed table goes to stdout.log in its folder."""

    def run(self, from_scratch: bool) -> None:
        self.prepare(from_scratch)
        if self.cli == "synth":
            synth_settings.run(self.load())
            return
        main = importlib.import_module(MODULES[self.cli]).main
        if self.cli == "fit":
            main(str(self.config), list(self.overrides))
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / STDOUT_LOG, "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
            main(str(self.config), list(self.overrides))


class Stage:
    """A named step of one call; `name` is its folder and what a rerun names; `needs` the stages whose output it
    reads. A grid's stage (cir.grid.plan.GridStage) builds its call on each access instead of holding one."""

    def __init__(self, name: str, title: str, call: CliCall | None = None, needs: Sequence[str] = ()) -> None:
        self.name, self.title, self.needs = name, title, tuple(needs)
        self._call = call

    @property
    def call(self) -> CliCall:
        assert self._call is not None, f"stage {self.name} has no call"
        return self._call

    def validate(self) -> None:
        call = self.call
        try:
            call.resolve()
        except ConfigError as err:
            raise ConfigError(f"grid stage {self.name} ({call.config.name} + the grid's overrides): {err}") from None

    def done(self) -> bool:
        return self.call.done()

    def run(self, from_scratch: bool) -> None:
        call = self.call
        if from_scratch or not call.done():
            call.run(from_scratch)


def decide(stage: Stage, rerun: set[str], fresh: bool, ran: Sequence[str]) -> tuple[bool, bool]:
    """(whether the stage runs, whether from scratch): `fresh`, `rerun` and a stage it reads that ran (or will, in
    a dry run) make it run from scratch; otherwise it runs when it is not done."""
    forced = fresh or stage.name in rerun or any(need in ran for need in stage.needs)
    return forced or not stage.done(), forced


def run_stages(
    stages: Sequence[Stage],
    rerun: set[str],
    fresh: bool,
    echo: Callable[[str], None] = print,
    ran: Sequence[str] = (),
    prefix: str = "",
) -> list[str]:
    """Run what is not done; `fresh`, `rerun` and stages reading one that ran (in `ran` or now) run from scratch.

    Returns `ran` extended by the stages run here; `prefix` (a grid cell) leads each stage name. An exception from
    a stage propagates after its `...` line.
    """
    ran = list(ran)
    width = len(str(len(stages)))
    for number, stage in enumerate(stages, 1):
        tag = f"[{number:>{width}}/{len(stages)}] {prefix}{stage.name}"
        runs, forced = decide(stage, rerun, fresh, ran)
        if not runs:
            echo(f"{tag}: {stage.title}: done before, skipped")
            continue
        echo(f"{tag}: {stage.title} ...")
        start = time.perf_counter()
        stage.run(from_scratch=forced)
        ran.append(stage.name)
        echo(f"{tag}: done in {time.perf_counter() - start:.0f} s")
    return ran
