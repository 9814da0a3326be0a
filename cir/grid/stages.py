"""Stages of CLI calls that skip on rerun: the runner behind `python -m cir.grid` (and so the embedded demo).

A call is one `python -m cir.fit | cir.evaluate | cir.submit | cir.data.synth`
with a stage YAML and overrides, run in a process of its own or (InProcessCall)
in this one. A fit or evaluation counts as done when its completion record
(cir.completion) says done with the fingerprint it would run with now (config,
model config JSON, weights, data) and every output it names is there; a
synth or submit call when its outputs exist and the config.yaml in its
folder equals the config it would run with now. A fit whose folder holds an
interrupted run of the same fingerprint resumes there; any other call that is
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

from omegaconf import DictConfig, OmegaConf

from cir import completion
from cir.completion import config_text
from cir.config import ConfigError, check_kwargs, load_config, to_yaml
from cir.data.synth import settings as synth_settings
from cir.grid.children import run_child
from cir.io import atomic_write_text
from cir.schema import EvaluateConfig, FitConfig

CONFIG_FILE = "config.yaml"  # cir.fit, cir.evaluate and cir.data.synth write their config here; for cir.submit the runner does
MODULES = {"fit": "cir.fit", "evaluate": "cir.evaluate", "submit": "cir.submit", "synth": "cir.data.synth"}
CLIS = tuple(MODULES)
SCHEMAS = {"fit": FitConfig, "evaluate": EvaluateConfig, "submit": EvaluateConfig, "synth": synth_settings.SynthRunConfig}
STDOUT_LOG = "stdout.log"  # an in-process evaluation's printed table
SUBMISSION_GLOB = "*_submission.json"

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
        """The config the CLI will run with, validated the way the CLI validates it."""
        import lightning as L  # the checks need the training and evaluation code; loading a config does not

        from cir.evaluation.run import check_eval_config
        from cir.training import check_fit_config

        cfg = self.load()
        if self.cli == "synth":
            synth_settings.check_synth_config(cfg)
            return cfg
        if self.cli == "fit":
            check_fit_config(cfg)
        else:
            check_eval_config(cfg)
        check_kwargs(cfg.trainer, L.Trainer, "trainer")
        return cfg

    @property
    def recorded(self) -> bool:
        """Whether the CLI keeps a completion record (cir.fit, cir.evaluate)."""
        return self.cli in ("fit", "evaluate")

    def same_config(self) -> bool:
        """The folder's config.yaml is the one this call would run with (the launch shape aside, see
        cir.completion.LAUNCH_KEYS)."""
        written = self.out / CONFIG_FILE
        return written.is_file() and config_text(OmegaConf.create(written.read_text())) == config_text(self.load())

    def why_not_done(self) -> str | None:
        """None when the call's outputs are complete for what it would run with now; else why not, in a few words."""
        if self.recorded:
            return completion.why_not_done(self.out, completion.fingerprint(self.load()))
        finished = synth_settings.completed(self.out) if self.cli == "synth" else any(self.out.glob(SUBMISSION_GLOB))
        return None if finished and self.same_config() else "not finished with this config"

    def done(self) -> bool:
        return self.why_not_done() is None

    def resumable(self) -> bool:
        """The folder holds an interrupted run of this very call, to go on with (a fit or synth; an evaluation or
        submission starts afresh, leaving nothing of an earlier attempt beside its outputs)."""
        if self.cli == "fit":
            return completion.same_run(self.out, completion.fingerprint(self.load()))
        return self.cli == "synth" and self.same_config()

    def prepare(self, from_scratch: bool) -> None:
        """Empty the folder unless it holds a run to go on with or is done; cir.submit's config is written here."""
        if from_scratch or not (self.resumable() or self.done()):
            shutil.rmtree(self.out, ignore_errors=True)
        if self.cli == "submit":
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / CONFIG_FILE, to_yaml(self.load()))

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
    """A named step; `name` is its folder and what a rerun names; `needs` the stages whose output it reads."""

    def __init__(self, name: str, title: str, calls: Sequence[CliCall] = (), needs: Sequence[str] = ()) -> None:
        self.name, self.title = name, title
        self.calls, self.needs = tuple(calls), tuple(needs)

    def validate(self) -> None:
        for call in self.calls:
            try:
                call.resolve()
            except ConfigError as err:
                raise ConfigError(f"grid stage {self.name} ({call.config.name} + the grid's overrides): {err}") from None

    def done(self) -> bool:
        return all(call.done() for call in self.calls)

    def run(self, from_scratch: bool) -> None:
        for call in self.calls:
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
