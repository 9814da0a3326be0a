"""The demo's plan: which stage reads what, where each writes, and the `main` that cir.fit dispatches to."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from cir.config import ConfigError, load_config, require
from cir.data.synth import SynthSizes, shard_urls
from cir.demo.gap import held_out_pairs, measure_gap
from cir.demo.report import ModelRun, write_report
from cir.demo.schema import STAGE_SECTIONS, DemoConfig
from cir.demo.stages import InProcessCall, SynthStage
from cir.grid.stages import Stage, flatten_overrides, run_stages
from cir.io import write_json
from cir.models import create_backbone

EXPORT = "export.pt"
GAP_FILE = "gap.json"
EVAL_SPLITS = ("val", "train")  # report on val; Slerp's alpha is chosen on train, which zero-shot models never see
TAT_LABELS = {"text": "TAT (text anchor)", "image": "image anchor", "none": "no anchor"}
SUPERVISED_STARTS = {"tat_text": "TAT", "pretrain": "pretrained"}


@dataclass(frozen=True)
class Layout:
    """Where every stage of one demo run writes."""

    root: Path

    @property
    def synth(self) -> Path:
        return self.root / "synth"

    @property
    def cirr(self) -> Path:
        return self.synth / "cirr"

    def export(self, stage: str) -> Path:
        return self.root / stage / EXPORT


def pending_shards(synth: Path) -> Callable[[str], str]:
    """Stand-in shard patterns for checking stage configs before the benchmark exists (never read)."""
    return lambda set_name: str(synth.resolve() / "shards" / f"{set_name}-pending.tar")


def build_plan(cfg: DictConfig, config_dir: Path, shards: Callable[[str], str]) -> tuple[list[Stage], list[ModelRun]]:
    """Every stage after the benchmark, in run order, and the models the report compares.

    `shards(set_name)` gives a shard set's brace pattern (cir.data.synth.shard_urls once generated).
    """
    where = Layout(Path(cfg.output_dir))
    seed = cfg.demo.seed
    files = {section: (config_dir / cfg.configs[section]).resolve() for section in STAGE_SECTIONS}
    user = {section: flatten_overrides(cfg[section]) for section in STAGE_SECTIONS}

    def call(cli: str, section: str, out: Path, wiring: dict) -> InProcessCall:
        # the demo's wiring comes last: outputs stay where the next stages look for them
        wiring = {"output_dir": str(out), "seed": seed, **wiring}
        return InProcessCall(cli, section, files[section], (*user[section], *flatten_overrides(wiring)), out)

    def train(section: str, name: str, title: str, needs: str, wiring: dict) -> Stage:
        return Stage(name, title, (call("fit", section, where.root / name, wiring),), (needs,))

    stages: list[Stage] = []
    models: list[ModelRun] = []

    def add_model(stage: Stage, label: str) -> None:
        name = f"eval_{stage.name}"
        folder = where.root / name
        export = where.export(stage.name)
        calls = tuple(
            call("evaluate", "eval", folder / split, {
                "model.pretrained": str(export), "data.root": str(where.cirr), "data.split": split,
                "eval.cache_dir": str(where.root / "cache"),
            })
            for split in EVAL_SPLITS
        )

        def gap() -> None:
            backbone = create_backbone(calls[0].resolve().model.name, str(export))
            write_json(folder / GAP_FILE, measure_gap(backbone, held_out_pairs(where.cirr, cfg.demo.gap_split, seed)))

        evaluated = Stage(name, f"zero-shot evaluation of {label} ({' and '.join(EVAL_SPLITS)}), modality gap",
                          calls, (stage.name,), after=gap, after_output=folder / GAP_FILE)
        stages.extend([stage, evaluated])
        models.append(ModelRun(stage.name, label, folder / "val", folder / "train", folder / GAP_FILE))

    add_model(train("pretrain", "pretrain", "pretrain a tiny CLIP from scratch, both towers", "synth",
                    {"data.train_shards": shards("pretrain")}), "pretrained CLIP")
    for anchor, label in TAT_LABELS.items():
        add_model(train("tat", f"tat_{anchor}", f"LoRA tuning on the tune shards, {label}", "pretrain", {
            "model.anchor": anchor, "model.pretrained": str(where.export("pretrain")),
            "data.train_shards": shards("tune"),
        }), label)
    if cfg.demo.supervised:
        for start, label in SUPERVISED_STARTS.items():
            add_model(train("supervised", f"sup_from_{start}", f"supervised fine-tuning from the {label} weights",
                            start, {"init_from": str(where.export(start)), "supervised.train.root": str(where.cirr)}),
                      f"supervised from {label}")
    return stages, models


def load_demo_config(path: str | Path, overrides: list[str], raw: DictConfig | None = None) -> DictConfig:
    cfg = load_config(DemoConfig, path, overrides, free_form=STAGE_SECTIONS, raw=raw)
    require(cfg.task == "demo", "task", "demo", cfg.task)
    try:
        SynthSizes(**cfg.synth)
    except ValueError as err:
        raise ConfigError(f"config key `synth`: {err}") from None
    return cfg


@contextmanager
def quiet_logs() -> Iterator[None]:
    """cir's own log lines and everyone's warnings: per-Trainer and per-model info lines would drown the stage lines."""
    names = ("", "lightning.pytorch", "lightning.fabric", "cir")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names[:-1]:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("cir").setLevel(logging.INFO)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def main(path: str, overrides: list[str], echo: Callable[[str], None] = print, raw: DictConfig | None = None) -> Path:
    """usage: python -m cir.fit experiments/demo.yaml [key=value ...]"""
    start = time.perf_counter()
    cfg = load_demo_config(path, overrides, raw)
    config_dir = Path(path).resolve().parent
    where = Layout(Path(cfg.output_dir))
    synth = SynthStage(where.synth, cfg.demo.seed, dict(cfg.synth), progress=True)
    stages, _ = build_plan(cfg, config_dir, pending_shards(where.synth))
    names = [synth.name, *(stage.name for stage in stages)]
    unknown = sorted(set(cfg.demo.rerun) - set(names))
    require(not unknown, "demo.rerun", f"stage names from {names}", list(cfg.demo.rerun))
    for stage in stages:  # every stage config is checked before the first stage runs
        stage.validate()
    rerun, total = set(cfg.demo.rerun), len(names)
    with quiet_logs():
        ran = run_stages([synth], rerun, cfg.demo.fresh, echo, total=total)
        stages, models = build_plan(cfg, config_dir, lambda set_name: shard_urls(where.synth, set_name))
        run_stages(stages, rerun, cfg.demo.fresh, echo, ran=ran, first=2, total=total)
    return write_report(where.root, models, time.perf_counter() - start, echo)
