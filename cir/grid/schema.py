"""The grid's typed config: stages (one CLI call each per cell), axes that vary across cells, report labels, SLURM.

Stage `overrides` are free-form `key: value` pairs for the stage's own
config (dotted keys, e.g. `model.anchor: image`); their values may read
earlier stages of the same cell: `${stage.tat.export}` (the export a fit
stage writes, or the weights it would start from when it is disabled in
this cell), `${stage.tat.export_model}` (the model name to load it with),
`${stage.tat.out}` (its folder), `${cell}` (the cell's name), and the
grid's `inputs` (`${inputs.cirr}`). A value `???` there or in a stage's
overrides must come from the command line; the error names the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

MANDATORY = "???"


@dataclass
class StageSpec:
    """`python -m cir.<cli> <config> <overrides>` in every cell; `config` is relative to the grid file."""

    cli: str = "fit"  # fit | evaluate | submit
    config: str = MISSING
    needs: list[str] = field(default_factory=list)  # stages whose output it reads: they rerun, it reruns
    enabled: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    sbatch: list[str] = field(default_factory=list)  # extra sbatch options for this stage's jobs


@dataclass
class SlurmOptions:
    """sbatch options: `fit` for training jobs (through `template`), `other` for evaluation and submission jobs."""

    template: str = "slurm/tat.sbatch"
    fit: list[str] = field(default_factory=lambda: ["--nodes=1", "--ntasks-per-node=8", "--gpus-per-node=8",
                                                    "--cpus-per-task=8"])
    other: list[str] = field(default_factory=lambda: ["--ntasks=1", "--gpus=1", "--cpus-per-task=8",
                                                      "--time=04:00:00"])


@dataclass
class GridConfig:
    """`python -m cir.grid CONFIG`: every cell's stages write under <output_dir>/<cell>/<stage>.

    `axes`: `key: [values]` (the key as on the command line: for every stage that has it, or `STAGE.key`), or
    `name: {label: {key: value, ...}}` for named variants; a variant may also set `STAGE.enabled`, `STAGE.config`
    and `labels.<name>` (what cir.report calls the row: `backbone`, `method`).
    """

    task: str = "grid"
    name: str = "grid"
    output_dir: str = "outputs/grid"
    inputs: dict[str, Any] = field(default_factory=dict)  # paths from the user (`???`), read as ${inputs.NAME}
    stages: dict[str, StageSpec] = field(default_factory=dict)
    axes: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
