"""Stages of CLI calls that skip on rerun: the runner behind the embedded demo and `python -m cir.grid`.

A call is one `python -m cir.fit | cir.evaluate | cir.submit` with a stage YAML
and overrides. It counts as done when its completion file exists and the
config.yaml in its folder equals the config it would run with now. A call
whose folder holds another config starts from an empty folder (so cir.fit
never resumes a checkpoint of another config); one that was interrupted with
the same config resumes. Stages that read the output of a stage that ran
rerun too, from scratch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cir.config import ConfigError, check_kwargs, load_config, to_yaml
from cir.io import atomic_write_text
from cir.schema import EvaluateConfig, FitConfig

CONFIG_FILE = "config.yaml"  # cir.fit and cir.evaluate write their resolved config here; for cir.submit the runner does
CLIS = ("fit", "evaluate", "submit")
SUBMISSION_GLOB = "*_submission.json"
# Where a run ran, not what it computed: slurm/tat.sbatch sets them from the job's allocation.
LAUNCH_KEYS = ("trainer.num_nodes", "trainer.devices")


def _without_launch(cfg: DictConfig) -> str:
    plain = OmegaConf.create(to_yaml(cfg))
    for key in LAUNCH_KEYS:
        section, _, name = key.partition(".")
        if isinstance(plain.get(section), DictConfig):
            plain[section].pop(name, None)
    return to_yaml(plain)


@dataclass(frozen=True)
class CliCall:
    """One call of `python -m cir.<cli>`: a stage YAML, overrides and the folder it writes (its output_dir)."""

    cli: str  # "fit" | "evaluate" | "submit"
    section: str  # where its overrides come from (the demo's config section, the grid's stage)
    config: Path
    overrides: tuple[str, ...]
    out: Path

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", f"cir.{self.cli}", str(self.config), *self.overrides]

    def load(self) -> DictConfig:
        """The config the CLI will run with (light: what a SLURM job decides its call by before it starts the CLI)."""
        return load_config(FitConfig if self.cli == "fit" else EvaluateConfig, self.config, self.overrides)

    def resolve(self) -> DictConfig:
        """The config the CLI will run with, validated the way the CLI validates it."""
        import lightning as L  # the checks need the training and evaluation code; loading a config does not

        from cir.eval.run import check_eval_config
        from cir.training import check_fit_config

        cfg = self.load()
        if self.cli == "fit":
            check_fit_config(cfg)
        else:
            check_eval_config(cfg)
        check_kwargs(cfg.trainer, L.Trainer, "trainer")
        return cfg

    def completed(self) -> bool:
        if self.cli == "submit":
            return any(self.out.glob(SUBMISSION_GLOB))
        return (self.out / ("run.json" if self.cli == "fit" else "metrics.json")).is_file()

    def same_config(self) -> bool:
        """The folder's config.yaml is the one this call would run with (the launch shape aside, see LAUNCH_KEYS)."""
        written = self.out / CONFIG_FILE
        if not written.is_file():
            return False
        return _without_launch(OmegaConf.create(written.read_text())) == _without_launch(self.load())

    def done(self) -> bool:
        return self.completed() and self.same_config()

    def prepare(self, from_scratch: bool) -> None:
        """Empty the folder unless it holds an interrupted run of this very config; cir.submit's config is written here."""
        if from_scratch or not self.same_config():
            shutil.rmtree(self.out, ignore_errors=True)
        if self.cli == "submit":
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / CONFIG_FILE, to_yaml(self.load()))

    def run(self, from_scratch: bool) -> None:
        """In a process of its own (failures stay in it); its output goes to the terminal."""
        self.prepare(from_scratch)
        subprocess.run(self.command, check=True)


class Stage:
    """A named step; `name` is its folder and what a rerun names; `needs` the stages whose output it reads.

    `after` runs once the calls are through and writes `after_output` (e.g. the demo's modality gap).
    """

    def __init__(
        self,
        name: str,
        title: str,
        calls: Sequence[CliCall] = (),
        needs: Sequence[str] = (),
        after: Callable[[], None] | None = None,
        after_output: Path | None = None,
    ) -> None:
        self.name, self.title = name, title
        self.calls, self.needs = tuple(calls), tuple(needs)
        self.after, self.after_output = after, after_output

    def validate(self, owner: str = "demo") -> None:
        for call in self.calls:
            try:
                call.resolve()
            except ConfigError as err:
                raise ConfigError(f"{owner} stage {self.name} ({call.config.name} + the {owner}'s `{call.section}.` keys): "
                                  f"{err}") from None

    def done(self) -> bool:
        return (self.after_output is None or self.after_output.is_file()) and all(call.done() for call in self.calls)

    def run(self, from_scratch: bool) -> None:
        for call in self.calls:
            if from_scratch or not call.done():
                call.run(from_scratch)
        if self.after is not None:
            self.after()


def flatten_overrides(tree: dict[str, Any] | DictConfig, prefix: str = "") -> list[str]:
    """{'optim': {'lr': 0.001}} -> ['optim.lr=0.001']; values as JSON, which the YAML override parser reads back."""
    if isinstance(tree, DictConfig):
        tree = OmegaConf.to_container(tree, resolve=True)
    items: list[str] = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            items += flatten_overrides(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}={json.dumps(value)}")
    return items


def run_stages(
    stages: Sequence[Stage],
    rerun: set[str],
    fresh: bool,
    echo: Callable[[str], None] = print,
    ran: Sequence[str] = (),
    first: int = 1,
    total: int | None = None,
    prefix: str = "",
) -> list[str]:
    """Run what is not done; `fresh`, `rerun` and stages reading one that ran (in `ran` or now) run from scratch.

    Returns `ran` extended by the stages run here; `first` / `total` number the lines of a plan run in parts,
    `prefix` (a grid cell) leads each stage name. An exception from a stage propagates after its `...` line.
    """
    ran = list(ran)
    total = total or len(stages)
    width = len(str(total))
    for number, stage in enumerate(stages, first):
        tag = f"[{number:>{width}}/{total}] {prefix}{stage.name}"
        forced = fresh or stage.name in rerun or any(need in ran for need in stage.needs)
        if not forced and stage.done():
            echo(f"{tag}: {stage.title}: done before, skipped")
            continue
        echo(f"{tag}: {stage.title} ...")
        start = time.perf_counter()
        stage.run(from_scratch=forced)
        ran.append(stage.name)
        echo(f"{tag}: done in {time.perf_counter() - start:.0f} s")
    return ran
