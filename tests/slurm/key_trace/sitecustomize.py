"""Started with PYTHONPATH=tests/slurm/key_trace: every process of a test job writes the key of each training sample
it takes, in order, to $CIR_KEY_TRACE/rank<SLURM_PROCID>.attempt<SLURM_RESTART_COUNT + 1>.

The tap sits where a raw tar sample becomes a training pair (cir.data.samples.ToImageText): a sample counts when
that stage hands it on, so samples a resumed epoch passes over, or that are skipped as unusable, do not. It is put
in when the job imports cir.data.samples (at startup cir may not be importable yet: `python -m` adds the working
folder to the path later).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

MODULE = "cir.data.samples"


def trace_file() -> Path:
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0")) + 1
    return Path(os.environ["CIR_KEY_TRACE"]) / f"rank{os.environ.get('SLURM_PROCID', '0')}.attempt{attempt}"


def tap(stage: type) -> None:
    """Wrap stage.run so that each pair it hands on writes the key of the sample it came from."""
    run = stage.run

    def traced_run(self, src):
        pulled: list[str] = []

        def pull(samples):
            for sample in samples:
                pulled.append(sample["__key__"])
                yield sample

        with open(trace_file(), "a") as keys:
            for pair in run(self, pull(src)):  # the stage takes one sample at a time: the last pulled is handed on
                keys.write(pulled[-1] + "\n")
                keys.flush()
                yield pair

    stage.run = traced_run


class TapOnImport(importlib.abc.MetaPathFinder):
    """Finds MODULE as the other finders do, and taps its ToImageText once the module has run."""

    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module) -> None:
            load(module)
            tap(module.ToImageText)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("CIR_KEY_TRACE"):
    sys.meta_path.insert(0, TapOnImport())
