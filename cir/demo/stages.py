"""The demo's own stages: CLI calls run in this process (as a user's shell would run them, one after the other),
and the benchmark generator. The bookkeeping (what is done, what reruns) is cir.grid.stages'.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cir import evaluate, fit
from cir.data.synth import SynthSizes, generate
from cir.data.synth.writer import FORMAT_VERSION, MARKER
from cir.grid.stages import CliCall, Stage

STDOUT_LOG = "stdout.log"


class InProcessCall(CliCall):
    """The CLI's main in this process: training keeps Lightning's progress bar on the terminal; evaluation's printed
    table goes to stdout.log."""

    def run(self, from_scratch: bool) -> None:
        self.prepare(from_scratch)
        if self.cli == "fit":
            fit.main(str(self.config), list(self.overrides))
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / STDOUT_LOG, "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
            evaluate.main(str(self.config), list(self.overrides))


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
