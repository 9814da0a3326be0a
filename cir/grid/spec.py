"""The grid's typed config: stages (one CLI call each per cell), axes that vary across cells, report labels, SLURM.

Stage `overrides` are free-form `key: value` pairs for the stage's own
config (dotted keys, e.g. `model.anchor: image`); their values may read
earlier stages of the same cell: `${stage.tat.export}` (the export a fit
stage writes, or the weights it would start from when it is disabled in
this cell), `${stage.tat.export_model}` (the model name to load it with),
`${stage.tat.out}` (its folder), `${needs.0.export}` (the same of the first
stage in the stage's `needs`), what a synth stage generated
(`${stage.synth.cirr}`, `${stage.synth.gap_pairs}`, `${stage.synth.shards.tune}`),
`${cell}` (the cell's name), `${root}` (the grid's folder), and the grid's
`inputs` (`${inputs.cirr}`). A value `???` there or in a stage's overrides
must come from the command line; the error names the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

MANDATORY = "???"


@dataclass
class StageSpec:
    """`python -m cir.<cli> <config> <overrides>` in every cell; `config` is relative to the grid file.

    `shared`: run once for the whole grid, before the cells, in <output_dir>/<stage> (e.g. a generated benchmark
    every cell reads). Axes pass it by: an axis key reaches the per-cell stages that have it (the demo's `seed`
    varies TAT, not its shared pretraining), and one that reaches only shared stages, or names one, is refused.
    """

    cli: str = "fit"  # fit | evaluate | submit | synth (cir.data.synth)
    config: str = MISSING
    title: str = ""  # what the progress line says the stage does (default: the CLI and its config file)
    needs: list[str] = field(default_factory=list)  # stages whose output it reads: they rerun, it reruns
    enabled: bool = True
    shared: bool = False
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

    `overrides` reach the stages as the command line's `key=value` do (every stage with the key, or `STAGE.key`),
    the command line coming after them. `fresh` reruns every call; `rerun` names calls to run again (`STAGE` in every cell, `CELL/STAGE` in one; the
    stages reading their output run again too). `in_process` runs the local calls in this process instead of one
    process each. `report` names a report written across the cells once all are done (`demo`: cir.demo.results).
    """

    task: str = "grid"
    name: str = "grid"
    output_dir: str = "outputs/grid"
    inputs: dict[str, Any] = field(default_factory=dict)  # paths from the user (`???`), read as ${inputs.NAME}
    stages: dict[str, StageSpec] = field(default_factory=dict)
    axes: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # `key: value` as on the command line, before it
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    fresh: bool = False
    rerun: list[str] = field(default_factory=list)
    in_process: bool = False
    report: str | None = None
