"""The demo's typed config: its own options, the generated benchmark's sizes, the stage files and their overrides.

Stage sections (`pretrain`, `tat`, `eval`, `supervised`) are free-form
override trees for that stage's own config (e.g. `tat.trainer.max_steps=400`
on the command line); each is validated against the stage's schema before
any stage runs, so a typo there fails at once as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any

from cir.data.synth import SynthSizes

STAGE_SECTIONS = ("pretrain", "tat", "eval", "supervised")

# Same fields and defaults as the generator's sizes, so the demo config can never drift from them.
SynthConfig = make_dataclass(
    "SynthConfig",
    [(f.name, type(f.default), field(default=f.default)) for f in fields(SynthSizes)],
)
SynthConfig.__doc__ = "Sizes of the generated benchmark (cir.data.synth.SynthSizes)."


@dataclass
class DemoOptions:
    """`fresh` reruns every stage; `rerun` names single stages (those reading their output rerun too).

    `seed`: the benchmark's and the gap pairs'; `seeds`: one full set of trained models each (pretraining, TAT,
    supervised), whose spread is the training noise every finding about training is judged against.
    """

    fresh: bool = False
    rerun: list[str] = field(default_factory=list)
    seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    anchors: list[str] = field(default_factory=lambda: ["text", "image", "none"])
    supervised: bool = True
    gap_split: str = "val"


@dataclass
class StageFiles:
    """Stage configs, relative to the demo YAML's folder."""

    pretrain: str = "demo_pretrain.yaml"
    tat: str = "demo_tat.yaml"
    eval: str = "demo_eval.yaml"
    supervised: str = "demo_sup.yaml"


@dataclass
class DemoConfig:
    """`python -m cir.fit experiments/demo.yaml`: every stage's output lives under output_dir."""

    task: str = "demo"
    output_dir: str = "outputs/demo"
    demo: DemoOptions = field(default_factory=DemoOptions)
    synth: SynthConfig = field(default_factory=SynthConfig)  # type: ignore[valid-type]
    configs: StageFiles = field(default_factory=StageFiles)
    pretrain: dict[str, Any] = field(default_factory=dict)
    tat: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    supervised: dict[str, Any] = field(default_factory=dict)
