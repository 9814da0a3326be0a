"""cir.config_checks: a bad value in every key group of every command's config stops Grid.check before any stage
runs, in one line naming the key; the walk covers each group of each schema, so a new group needs its case here."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from cir.config import ConfigError
from cir.config_checks import CHECKS
from cir.data.epochs import check_epoch_kind
from cir.data.synth.settings import SynthRunConfig
from cir.grid.plan import Grid
from cir.schema import EvaluateConfig, FitConfig

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
STAGES = {"gen": ("synth", "demo_synth.yaml"), "tat": ("fit", "demo_tat.yaml"), "val": ("evaluate", "demo_eval.yaml"),
          "server": ("submit", "demo_eval.yaml")}
# Groups whose values no check can judge from the config alone: where output goes, a seed, weights to start from
# (read when the run starts), the model to load (its name and weights are read when it is built); an evaluation's
# `task` and `submit` keys, which cir.evaluate does not read; submit's groups that are evaluate's, checked alike.
NO_RULE = {"output_dir", "seed", "init_from", "model@evaluate", "model@submit", "task@evaluate", "task@submit",
           "submit@evaluate", "data@submit", "eval@submit", "trainer@submit"}
# (stage, override, the key the one-line error names): one bad value per key group and command
BAD = [
    ("tat", "task=nope", "task"),
    ("tat", "model.lora.r=0", "model.lora.r"),
    ("tat", "data.batch_size=0", "data.batch_size"),
    ("tat", "optim.lr=0", "optim.lr"),
    ("tat", "eval.alphas=[1.5]", "eval.alphas[0]"),
    ("tat", "checkpoint.every_n_steps=0", "checkpoint.every_n_steps"),
    ("tat", "resume.accept_changes=[optim.no_such_key]", "resume.accept_changes[0]"),
    ("tat", "supervised.fusion=concat", "supervised.fusion"),
    ("tat", "trainer.no_such_argument=1", "trainer.no_such_argument"),
    ("val", "data.name=coco", "data.name"),
    ("val", "eval.block_size=0", "eval.block_size"),
    ("val", "trainer.no_such_argument=1", "trainer.no_such_argument"),
    ("server", "submit.method=concat", "submit.method"),
    ("gen", "synth.seed=-1", "synth.seed"),
    ("gen", "task=fit", "task"),
]
SCHEMAS = {"fit": FitConfig, "evaluate": EvaluateConfig, "submit": EvaluateConfig, "synth": SynthRunConfig}


def write_grid(root: Path) -> Path:
    stages = {name: {"cli": cli, "config": str(EXPERIMENTS / config)} for name, (cli, config) in STAGES.items()}
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump({"task": "grid", "name": "checks", "output_dir": str(root / "out"),
                                    "stages": stages}))
    return path


def test_every_key_group_of_every_command_has_a_bad_value_here() -> None:
    covered = {f"{override.split('=')[0].split('.')[0]}@{STAGES[stage][0]}" for stage, override, _ in BAD}
    groups = {f"{f.name}@{cli}" for cli, schema in SCHEMAS.items() for f in fields(schema)}
    assert set(CHECKS) == set(SCHEMAS)
    missing = {g for g in groups - covered if g not in NO_RULE and g.split("@")[0] not in NO_RULE}
    assert missing == set()


def test_the_grid_as_written_passes(tmp_path) -> None:
    assert Grid(write_grid(tmp_path), [f"data.root={tmp_path}"]).check() == ([], [])


@pytest.mark.parametrize("stage, override, key", BAD, ids=[f"{s}:{o}" for s, o, _ in BAD])
def test_a_bad_value_stops_grid_check_naming_its_key(tmp_path, stage, override, key) -> None:
    lines, failed = Grid(write_grid(tmp_path), [f"data.root={tmp_path}", f"{stage}.{override}"]).check()
    assert len(failed) == len(lines) == 1, lines
    assert f"config key `{key}`" in lines[0] and "\n" not in lines[0]


@pytest.mark.parametrize("resampled, exact, samples, processes, key", [
    (False, False, 10, None, "data.samples_per_epoch"),
    (True, False, None, None, "data.samples_per_epoch"),
    (True, True, 10, None, "data.exact_epoch"),
    (False, False, None, 2, "data.exact_epoch"),
])
def test_how_an_epoch_is_drawn_is_one_rule(resampled, exact, samples, processes, key) -> None:
    with pytest.raises(ConfigError, match=f"config key `{key}`"):
        check_epoch_kind(resampled, exact, samples, processes)


@pytest.mark.parametrize("resampled, exact, samples, processes", [
    (False, False, None, 1), (False, False, None, None), (False, True, None, 8), (True, False, 10, 8)])
def test_a_plain_pass_an_exact_pass_and_draws_pass(resampled, exact, samples, processes) -> None:
    check_epoch_kind(resampled, exact, samples, processes)
