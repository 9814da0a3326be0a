"""The demo's plan: which stage reads what, where each writes, and the `main` that cir.fit dispatches to."""

from __future__ import annotations

import logging
import resource
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
FEATURES = "features/cirr-val.npz"  # eval.save_features=true: what the report recomputes per-query hits from
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


def seeded(name: str, seed: int) -> str:
    """A trained stage's name (and folder) for one training seed: pretrain -> pretrain_s0."""
    return f"{name}_s{seed}"


def pending_shards(synth: Path) -> Callable[[str], str]:
    """Stand-in shard patterns for checking stage configs before the benchmark exists (never read)."""
    return lambda set_name: str(synth.resolve() / "shards" / f"{set_name}-pending.tar")


def build_plan(cfg: DictConfig, config_dir: Path, shards: Callable[[str], str]) -> tuple[list[Stage], list[ModelRun]]:
    """Every stage after the benchmark, in run order (seed by seed), and the models the report compares.

    `shards(set_name)` gives a shard set's brace pattern (cir.data.synth.shard_urls once generated).
    Every training seed of demo.seeds pretrains, tunes and fine-tunes its own models on the one benchmark.
    """
    where = Layout(Path(cfg.output_dir))
    stages: list[Stage] = []
    models: list[ModelRun] = []
    for seed in cfg.demo.seeds:
        plan_seed(cfg, config_dir, shards, where, seed, stages, models)
    return stages, models


def plan_seed(cfg: DictConfig, config_dir: Path, shards: Callable[[str], str], where: Layout, seed: int,
              stages: list[Stage], models: list[ModelRun]) -> None:
    """One training seed's stages and models, appended to `stages` and `models`."""
    files = {section: (config_dir / cfg.configs[section]).resolve() for section in STAGE_SECTIONS}
    user = {section: flatten_overrides(cfg[section]) for section in STAGE_SECTIONS}

    def call(cli: str, section: str, out: Path, wiring: dict) -> InProcessCall:
        # the demo's wiring comes last: outputs stay where the next stages look for them
        wiring = {"output_dir": str(out), "seed": seed, **wiring}
        return InProcessCall(cli, section, files[section], (*user[section], *flatten_overrides(wiring)), out)

    def train(section: str, name: str, title: str, needs: str, wiring: dict) -> Stage:
        name = seeded(name, seed)
        return Stage(name, f"{title}, seed {seed}", (call("fit", section, where.root / name, wiring),), (needs,))

    def export(name: str) -> str:
        return str(where.export(seeded(name, seed)))

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
            pairs = held_out_pairs(where.cirr, cfg.demo.gap_split, cfg.demo.seed)  # one set of pairs for all seeds
            write_json(folder / GAP_FILE, measure_gap(backbone, pairs))

        evaluated = Stage(name, f"zero-shot evaluation of {label} ({' and '.join(EVAL_SPLITS)}), modality gap",
                          calls, (stage.name,), after=gap, after_output=folder / GAP_FILE)
        stages.extend([stage, evaluated])
        models.append(ModelRun(stage.name.removesuffix(f"_s{seed}"), label, folder / "val", folder / "train",
                               folder / GAP_FILE, seed, folder / "val" / FEATURES))

    add_model(train("pretrain", "pretrain", "pretrain a tiny CLIP from scratch, both towers", "synth",
                    {"data.train_shards": shards("pretrain")}), "pretrained CLIP")
    for anchor in cfg.demo.anchors:
        label = TAT_LABELS[anchor]
        add_model(train("tat", f"tat_{anchor}", f"LoRA tuning on the tune shards, {label}", seeded("pretrain", seed), {
            "model.anchor": anchor, "model.pretrained": export("pretrain"), "data.train_shards": shards("tune"),
        }), label)
    if cfg.demo.supervised:
        for start, label in SUPERVISED_STARTS.items():
            add_model(train("supervised", f"sup_from_{start}", f"supervised fine-tuning from the {label} weights",
                            seeded(start, seed), {"init_from": export(start), "supervised.train.root": str(where.cirr)}),
                      f"supervised from {label}")


def load_demo_config(path: str | Path, overrides: list[str], raw: DictConfig | None = None) -> DictConfig:
    cfg = load_config(DemoConfig, path, overrides, free_form=STAGE_SECTIONS, raw=raw)
    require(cfg.task == "demo", "task", "demo", cfg.task)
    require(len(cfg.demo.seeds) > 0 and len(set(cfg.demo.seeds)) == len(cfg.demo.seeds), "demo.seeds",
            "a list of distinct training seeds", list(cfg.demo.seeds))
    unknown = sorted(set(cfg.demo.anchors) - set(TAT_LABELS))
    require(not unknown, "demo.anchors", f"anchors from {list(TAT_LABELS)}", list(cfg.demo.anchors))
    require(not cfg.demo.supervised or "text" in cfg.demo.anchors, "demo.anchors",
            "text among them when demo.supervised is true (one fine-tuning starts from TAT)", list(cfg.demo.anchors))
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
    start, cpu_start = time.perf_counter(), cpu_seconds()
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
    return write_report(where.root, models, time.perf_counter() - start, echo, cpu_seconds() - cpu_start)


def cpu_seconds() -> float:
    """User + sys time of this process and its finished children (data-loader workers), as the report states it."""
    return sum(usage.ru_utime + usage.ru_stime
               for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))
