"""Every rule on a config's values, once, each read from the config alone: a bad value fails in one line naming its
key before any model is built, file read or stage run.

The commands run these first (cir.training.train, cir.evaluation.run.prepare, cir.submit, cir.browse, cir.data.synth)
and cir.grid's Grid.check runs the same `check_config` on every call of every cell before its first stage. What
only a run can know (shards that exist, the process count under `devices: auto`, a GPU for data.decode=cuda) is
checked where it becomes known, by the same rule where there is one (cir.data.epochs.check_epoch_kind).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cir.config import ConfigError, check_names, require
from cir.data.epochs import check_epoch_kind
from cir.data.retrieval_benchmarks import BENCHMARK_NAMES
from cir.data.retrieval_benchmarks.fashioniq import FASHIONIQ_CAPTIONS
from cir.data.retrieval_benchmarks.genecis import GENECIS_TASKS
from cir.data.synth.settings import check_synth_config
from cir.fusion import FUSIONS
from cir.schema import LORA_TOWERS, PAPER_ALPHA, TASKS
from cir.slerp import METHODS
from cir.source_names import dataclass_fields, init_arguments
from cir.workers import resolve_workers

MISSING_POLICIES = ("error", "skip")  # eval.missing_images
TEST_SERVERS = {"cirr": "test1", "circo": "test"}  # benchmarks with an official test server, and its split
_ABSENT = object()


def check_benchmark(bench: DictConfig, key: str) -> None:
    """A benchmark section (data, eval.benchmarks[i], supervised.train): its name and GeneCIS tasks."""
    require(bench.name in BENCHMARK_NAMES, f"{key}.name", f"one of {list(BENCHMARK_NAMES)}", bench.name)
    for i, task in enumerate(bench.genecis.tasks):
        require(task in GENECIS_TASKS, f"{key}.genecis.tasks[{i}]", f"one of {list(GENECIS_TASKS)}", task)


def check_compositions(section: DictConfig, key: str) -> None:
    """What an evaluation scores, the same keys in cir.evaluate's eval and cir.fit's periodic eval."""
    for i, alpha in enumerate(section.alphas):
        require(0.0 <= alpha <= 1.0, f"{key}.alphas[{i}]", "a value in [0, 1]", alpha)
    for i, method in enumerate(section.methods):
        require(method in METHODS, f"{key}.methods[{i}]", f"one of {list(METHODS)}", method)
    require(section.fashioniq_captions in FASHIONIQ_CAPTIONS, f"{key}.fashioniq_captions",
            f"one of {list(FASHIONIQ_CAPTIONS)}", section.fashioniq_captions)


def check_eval_config(cfg: DictConfig) -> None:
    """cir.evaluate's and cir.browse's config (EvaluateConfig)."""
    check_benchmark(cfg.data, "data")
    require(cfg.data.batch_size > 0, "data.batch_size", "a positive integer", cfg.data.batch_size)
    resolve_workers(cfg.data.num_workers, "data.num_workers")
    check_compositions(cfg.eval, "eval")
    paper = cfg.eval.paper_alpha
    require(paper is None or 0.0 <= paper <= 1.0, "eval.paper_alpha", "a value in [0, 1]", paper)
    require(cfg.eval.block_size > 0, "eval.block_size", "a positive integer", cfg.eval.block_size)
    require(cfg.eval.examples >= 0, "eval.examples", "0 or more", cfg.eval.examples)
    require(cfg.eval.missing_images in MISSING_POLICIES, "eval.missing_images", f"one of {list(MISSING_POLICIES)}",
            cfg.eval.missing_images)
    check_trainer(cfg.trainer)


def check_trainer(trainer: DictConfig) -> None:
    """The trainer section: Lightning Trainer's arguments, read from its source (importing Lightning would cost every
    grid start seconds; cir.source_names)."""
    check_names(trainer, init_arguments("lightning.pytorch.trainer.trainer", "Trainer"), "trainer", "Trainer")


def submit_alpha(cfg: DictConfig) -> float:
    """`submit.alpha` where set, else the evaluation's paper alpha for the benchmark."""
    if cfg.submit.alpha is not None:
        return cfg.submit.alpha
    return cfg.eval.paper_alpha if cfg.eval.paper_alpha is not None else PAPER_ALPHA[cfg.data.name]


def check_submit_config(cfg: DictConfig) -> None:
    """cir.submit's config: an evaluation config whose benchmark has a test server."""
    check_eval_config(cfg)
    if cfg.data.name not in TEST_SERVERS:
        raise ConfigError(f"config key `data.name`: {cfg.data.name!r} has no official test server (cirr, circo have)")
    if cfg.data.name == "cirr" and cfg.eval.exclude_reference is False:
        raise ConfigError("config key `eval.exclude_reference`: false would list the reference image on every CIRR "
                          "query, which the server counts as a wrong answer; use null (the official rule) or true")
    require(cfg.submit.method in METHODS, "submit.method", f"one of {list(METHODS)}", cfg.submit.method)
    require(0.0 <= submit_alpha(cfg) <= 1.0, "submit.alpha", "a value in [0, 1]", submit_alpha(cfg))


def _processes(trainer: DictConfig) -> int | None:
    """The process count the trainer config names, None where only the run knows it (devices: auto, a list)."""
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    return devices * nodes if isinstance(devices, int) and isinstance(nodes, int) and devices > 0 else None


def check_training_data(cfg: DictConfig) -> None:
    """cir.fit's data section: batch sizes, workers, how an epoch is drawn, cached captions."""
    data = cfg.data
    require(data.batch_size is None or data.batch_size > 0, "data.batch_size", "a positive per-device batch",
            data.batch_size)
    require(data.batch_size is not None or data.global_batch_size is not None, "data.batch_size",
            "a per-device batch, or data.global_batch_size to derive it from", None)
    require(data.global_batch_size is None or data.global_batch_size > 0, "data.global_batch_size",
            "a positive batch over all devices", data.global_batch_size)
    resolve_workers(data.num_workers, "data.num_workers")
    require(data.shuffle_buffer >= 0, "data.shuffle_buffer", "0 or more samples", data.shuffle_buffer)
    processes = None if cfg.task == "supervised" else _processes(cfg.trainer)  # triplets: a sampler per rank
    check_epoch_kind(data.resampled, data.exact_epoch, data.samples_per_epoch, processes)
    if data.text_embeddings:
        require(cfg.task == "tat" and cfg.model.anchor == "text", "data.text_embeddings",
                "unset unless task=tat with model.anchor=text (cached captions need a frozen text tower)",
                data.text_embeddings)


def check_supervised(sup: DictConfig) -> None:
    require(sup.fusion in FUSIONS, "supervised.fusion", f"one of {list(FUSIONS)}", sup.fusion)
    if sup.fusion == "combiner" or sup.learn_alpha:
        require(0.0 < sup.alpha < 1.0, "supervised.alpha", "a value strictly inside (0, 1) when it is learned", sup.alpha)
    require(0.0 <= sup.alpha <= 1.0, "supervised.alpha", "a value in [0, 1]", sup.alpha)
    require(sup.combiner_hidden > 0, "supervised.combiner_hidden", "a positive width", sup.combiner_hidden)
    require(0.0 <= sup.combiner_dropout < 1.0, "supervised.combiner_dropout", "a value in [0, 1)", sup.combiner_dropout)
    check_benchmark(sup.train, "supervised.train")


def check_fit_config(cfg: DictConfig) -> None:
    """cir.fit's config (FitConfig), every section."""
    require(cfg.task in TASKS, "task", f"one of {sorted(TASKS)}", cfg.task)
    for i, key in enumerate(cfg.resume.accept_changes):  # a typo would accept nothing and say nothing
        require(OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT, f"resume.accept_changes[{i}]",
                "a config key or section of this run", key)
    require(cfg.model.anchor in LORA_TOWERS, "model.anchor", f"one of {sorted(LORA_TOWERS)}", cfg.model.anchor)
    lora = cfg.model.lora
    require(lora.r > 0, "model.lora.r", "a positive rank", lora.r)
    require(lora.alpha > 0, "model.lora.alpha", "a positive number", lora.alpha)
    require(0.0 <= lora.dropout < 1.0, "model.lora.dropout", "a value in [0, 1)", lora.dropout)
    augmentation = dataclass_fields("open_clip.transform", "AugmentationCfg")  # as cir.models.backbone's, unimported
    require(set(cfg.model.aug_cfg) <= augmentation, "model.aug_cfg",
            f"open_clip AugmentationCfg fields, some of {sorted(augmentation)}", dict(cfg.model.aug_cfg))
    check_training_data(cfg)
    require(cfg.optim.lr > 0, "optim.lr", "a positive learning rate", cfg.optim.lr)
    require(cfg.optim.temperature > 0, "optim.temperature", "a positive temperature", cfg.optim.temperature)
    require(cfg.optim.warmup_steps >= 0, "optim.warmup_steps", "0 or more", cfg.optim.warmup_steps)
    require(cfg.checkpoint.every_n_steps > 0, "checkpoint.every_n_steps", "a positive step count",
            cfg.checkpoint.every_n_steps)
    for i, bench in enumerate(cfg.eval.benchmarks):
        check_benchmark(bench, f"eval.benchmarks[{i}]")
    check_compositions(cfg.eval, "eval")
    require(cfg.eval.batch_size > 0, "eval.batch_size", "a positive integer", cfg.eval.batch_size)
    require(cfg.eval.num_workers >= 0, "eval.num_workers", "0 or more", cfg.eval.num_workers)
    check_supervised(cfg.supervised)
    check_trainer(cfg.trainer)


# What each command checks, by its grid `cli:` name.
CHECKS = {"fit": check_fit_config, "evaluate": check_eval_config, "submit": check_submit_config,
          "synth": check_synth_config}


def check_config(cli: str, cfg: DictConfig) -> None:
    """The checks of the command `cli` (fit, evaluate, submit, synth) on its config."""
    CHECKS[cli](cfg)
