"""The demo's stages: each is one or more calls of a real CLI's main (cir.fit / cir.evaluate) with a stage
YAML and overrides, or the benchmark generator; a stage whose outputs exist is skipped.

A stage counts as done when every call's completion file exists and the
config.yaml that call wrote equals the config it would run with now. A call
whose folder holds another config starts from an empty folder (so cir.fit
never resumes a checkpoint of another config); one that was interrupted with
the same config resumes. Stages that read the output of a stage that ran
rerun too, from scratch.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from cir import evaluate, fit
from cir.config import ConfigError, check_kwargs, load_config, to_yaml
from cir.data.synth import SynthSizes, generate
from cir.data.synth.writer import FORMAT_VERSION, MARKER
from cir.eval.run import check_eval_config
from cir.schema import EvaluateConfig, FitConfig
from cir.training import check_fit_config

CONFIG_FILE = "config.yaml"  # both CLIs write their resolved config here
STDOUT_LOG = "stdout.log"


@dataclass(frozen=True)
class CliCall:
    """One call of `cir.fit.main` or `cir.evaluate.main`: a stage YAML, overrides and the folder it writes."""

    cli: str  # "fit" | "evaluate"
    section: str  # the demo config section whose overrides it takes
    config: Path
    overrides: tuple[str, ...]
    out: Path

    @property
    def completion_file(self) -> Path:
        return self.out / ("run.json" if self.cli == "fit" else "metrics.json")

    def resolve(self) -> DictConfig:
        """The config the CLI will run with, validated the way the CLI validates it."""
        if self.cli == "fit":
            cfg = load_config(FitConfig, self.config, self.overrides)
            check_fit_config(cfg)
        else:
            cfg = load_config(EvaluateConfig, self.config, self.overrides)
            check_eval_config(cfg)
        check_kwargs(cfg.trainer, L.Trainer, "trainer")
        return cfg

    def same_config(self) -> bool:
        written = self.out / CONFIG_FILE
        return written.is_file() and written.read_text() == to_yaml(self.resolve())

    def done(self) -> bool:
        return self.completion_file.is_file() and self.same_config()

    def run(self, from_scratch: bool) -> None:
        """Training keeps Lightning's progress bar on the terminal; evaluation's printed table goes to stdout.log."""
        if from_scratch or not self.same_config():
            shutil.rmtree(self.out, ignore_errors=True)
        main = fit.main if self.cli == "fit" else evaluate.main
        if self.cli == "fit":
            main(str(self.config), list(self.overrides))
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / STDOUT_LOG, "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
            main(str(self.config), list(self.overrides))


class Stage:
    """A named step of the demo; `name` is its folder under the output dir and what `demo.rerun` lists.

    `after` runs once the calls are through and writes `after_output` (e.g. the modality gap).
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

    def validate(self) -> None:
        for call in self.calls:
            try:
                call.resolve()
            except ConfigError as err:
                raise ConfigError(f"demo stage {self.name} ({call.config.name} + the demo's `{call.section}.` keys): {err}") from None

    def done(self) -> bool:
        return (self.after_output is None or self.after_output.is_file()) and all(call.done() for call in self.calls)

    def run(self, from_scratch: bool) -> None:
        for call in self.calls:
            if from_scratch or not call.done():
                call.run(from_scratch)
        if self.after is not None:
            self.after()


class SynthStage(Stage):
    """The generated benchmark; cir.data.synth keeps its own completion marker, checked here the same way."""

    def __init__(self, out: Path, seed: int, sizes: dict[str, Any], progress: bool) -> None:
        super().__init__("synth", "generate the compositional benchmark")
        self.out, self.seed, self.sizes, self.progress = out, seed, sizes, progress
        self.wanted = {"format": FORMAT_VERSION, "seed": seed, "sizes": asdict(SynthSizes(**sizes))}

    def done(self) -> bool:
        marker = self.out / MARKER
        return marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == self.wanted

    def run(self, from_scratch: bool) -> None:
        (self.out / MARKER).unlink(missing_ok=True)
        generate(self.out, self.seed, progress=self.progress, **self.sizes)


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
) -> list[str]:
    """Run what is not done; `fresh`, `rerun` and stages reading one that ran (in `ran` or now) run from scratch.

    Returns `ran` extended by the stages run here; `first` / `total` number the lines of a plan run in parts.
    """
    ran = list(ran)
    total = total or len(stages)
    width = len(str(total))
    for number, stage in enumerate(stages, first):
        tag = f"[{number:>{width}}/{total}] {stage.name}"
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
