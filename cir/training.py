"""One training run from a validated FitConfig: the Trainer and its callbacks, batch split, resume, run record, export.

`cir.fit` is the command line over `train`; `task:` picks the LightningModule
from cir.schema.TASKS, each task module providing `build(cfg) -> (LightningModule, LightningDataModule)`.
"""

from __future__ import annotations

import functools
import importlib
import logging
from contextlib import nullcontext
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cir import completion
from cir.checkpoint_io import AtomicCheckpointIO
from cir.config import ConfigError, check_kwargs, require, to_yaml
from cir.config_checks import check_fit_config
from cir.data.inputs import watch_inputs
from cir.data.shards import SKIP_REASONS
from cir.data.transforms import PIL_FORMATS
from cir.distributed import end_process_group
from cir.evaluation.run import validation_evaluator
from cir.io import atomic_write_text, write_json
from cir.models import export_backbone
from cir.models.export import export_model_name
from cir.preemption import GracefulInterruption, Interrupted
from cir.progress import display_callbacks
from cir.resume import (
    ResumedOptimizer,
    RunCheckpoints,
    check_extends,
    check_resume,
    newest_checkpoint,
)
from cir.run_lock import RunLock
from cir.schema import TASKS
from cir.tasks.base import ContrastiveTask
from cir.throughput import ThroughputMonitor

log = logging.getLogger(__name__)


def resolve_batch_size(cfg: DictConfig, trainer: L.Trainer) -> None:
    """Split data.global_batch_size (the figure papers give) over processes and accumulated batches, evenly or not at all."""
    total = cfg.data.global_batch_size
    if total is None:
        return
    share = trainer.world_size * trainer.accumulate_grad_batches
    require(total % share == 0, "data.global_batch_size",
            f"a multiple of {trainer.world_size} process(es) x {trainer.accumulate_grad_batches} accumulated batch(es) "
            f"= {share} (trainer.num_nodes x trainer.devices x trainer.accumulate_grad_batches)", total)
    if cfg.data.batch_size is not None and cfg.data.batch_size != total // share:
        raise ConfigError(
            f"config key `data.batch_size`: {cfg.data.batch_size} per device disagrees with data.global_batch_size={total} "
            f"over {share} process(es) x accumulation ({total // share} each); set data.batch_size=null to derive it, "
            f"or data.global_batch_size=null to keep {cfg.data.batch_size} per device"
        )
    cfg.data.batch_size = total // share


def build_task(cfg: DictConfig) -> tuple[ContrastiveTask, L.LightningDataModule]:
    return importlib.import_module(TASKS[cfg.task]).build(cfg)


def callbacks(cfg: DictConfig, out: Path) -> list[L.Callback]:
    return [
        RunCheckpoints(dirpath=out / "checkpoints", every_n_train_steps=cfg.checkpoint.every_n_steps,
                        save_top_k=-1, save_last=True, filename="step{step:07d}", auto_insert_metric_name=False,
                        enable_version_counter=False),  # one last.ckpt, also after a signal wrote it
        LearningRateMonitor(logging_interval="step"),
        ThroughputMonitor(),  # with the model's FLOPs per batch: flops_per_sec and MFU in TensorBoard
        GracefulInterruption(out / "checkpoints" / "last.ckpt"),
        ResumedOptimizer(cfg.optim),
    ]


def train(cfg: DictConfig) -> dict | None:
    """Fit (resuming the run in cfg.output_dir if there is one), then on rank 0 write the export and run.json.

    Rank 0 holds cfg.output_dir locked for the run (cir.run_lock), which also checks it is writable before any
    model is built, and keeps its completion record (cir.completion): "running" from here, "done" once the export,
    run.json and config.yaml are written. Returns the run record on rank 0, None on the other ranks.
    """
    check_fit_config(cfg)
    made_by = completion.fingerprint(cfg)  # of the config as given (resolve_batch_size fills in data.batch_size)
    with RunLock(cfg.output_dir) if rank_zero_only.rank == 0 else nullcontext():
        if rank_zero_only.rank == 0:
            completion.start(cfg.output_dir, made_by)
        with watch_inputs() as inputs:
            try:
                record = fit_and_export(cfg)
            except Interrupted:  # every rank stopped at the same step, past a barrier
                end_process_group()
                raise
        end_process_group()
        if record is not None:
            out = Path(cfg.output_dir)
            completion.finish(out, made_by, [out / "config.yaml", out / "run.json", *completion.files(record["export"])],
                              inputs)
        return record


def skipped_counts(trainer: L.Trainer, module: ContrastiveTask, name: str = "skipped_samples",
                   keys: tuple[str, ...] = SKIP_REASONS) -> dict[str, int]:
    """Samples the loaders skipped, per reason (or with `name` and `keys`, another count the shard loader's batches
    carry: images decoded through PIL, per format), summed over ranks; {} for tasks without shard data."""
    counts = getattr(module, name, None)
    if counts is None:
        return {}
    total = trainer.strategy.reduce(counts.float(), reduce_op="sum")
    return {key: int(n) for key, n in zip(keys, total.tolist())}


def check_finished(cfg: DictConfig, trainer: L.Trainer, skipped: dict[str, int]) -> None:
    """A run the data cut short stops with an error, so it never writes run.json and the export of a finished one.

    trainer.max_steps > 0 asks for that many steps (with trainer.max_epochs=-1 the data is passed over again
    until then); trainer.max_steps=-1 asks for trainer.max_epochs passes. A callback that stops training before
    the loader is exhausted ends a run on purpose.
    """
    key = "supervised.train" if cfg.task == "supervised" else "data.text_embeddings" if cfg.data.text_embeddings else "data.train_shards"
    source = OmegaConf.select(cfg, key)
    if trainer.global_step == 0 and trainer.max_steps != 0:
        if trainer.is_global_zero:  # Lightning saved last.ckpt at the empty epoch's end: a rerun would "resume" past it
            for path in (Path(cfg.output_dir) / "checkpoints").glob("*.ckpt"):
                path.unlink()
        # skips travel to the trainer with the batches: a loader that yields none cannot report its own
        reasons = (", ".join(f"{reason} {n}" for reason, n in skipped.items() if n)
                   or "uncounted, as no batch came to carry the counts")
        raise ConfigError(f"config key `{key}`: no training step: no usable sample in {source} (skipped: {reasons}; "
                          "see the warnings above)")
    if 0 < trainer.global_step < trainer.max_steps and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
        raise ConfigError(
            f"config key `trainer.max_steps`: the training data ran out after {trainer.global_step} of {trainer.max_steps} "
            f"steps ({trainer.current_epoch} epoch(s), trainer.max_epochs={trainer.max_epochs}); set "
            "trainer.max_epochs=-1 to pass over the data again until max_steps, or trainer.max_steps=-1 to train by epochs"
        )


def fit_and_export(cfg: DictConfig) -> dict | None:
    """The run itself: resume from the newest good checkpoint if its config allows (cir.resume), fit, export."""
    trainer_kwargs = check_kwargs(cfg.trainer, L.Trainer, "trainer")
    evaluator = validation_evaluator(cfg)
    if evaluator is None:  # no validation loaders to ask for (Lightning would warn that they are empty)
        trainer_kwargs.setdefault("limit_val_batches", 0)
    out = Path(cfg.output_dir)
    logger = TensorBoardLogger(str(out), name="tensorboard", version="", default_hp_metric=False)
    trainer = L.Trainer(default_root_dir=str(out), logger=logger, callbacks=[*callbacks(cfg, out), *display_callbacks(trainer_kwargs)],
                        num_sanity_val_steps=0, plugins=[AtomicCheckpointIO()], **trainer_kwargs)
    resolve_batch_size(cfg, trainer)
    newest = newest_checkpoint(out)
    changes = check_resume(newest, OmegaConf.to_container(cfg, resolve=True), list(cfg.resume.accept_changes))
    check_extends(newest, trainer.max_epochs, trainer.max_steps)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module, data = build_task(cfg)
    module.config_changes = changes
    module.attach_evaluator(evaluator)
    if evaluator is not None:
        data.attach_validation(functools.partial(evaluator.dataloaders, module.backbone))
    if trainer.is_global_zero:
        atomic_write_text(out / "config.yaml", to_yaml(cfg))
    if newest is not None:
        log.info("resuming from %s (global step %d)", newest.path, newest.global_step)
    trainer.fit(module, datamodule=data, ckpt_path=str(newest.path) if newest is not None else None)
    samples = int(trainer.strategy.reduce(module.samples_seen.float(), reduce_op="sum").item())
    skipped = skipped_counts(trainer, module)
    pil_decoded = skipped_counts(trainer, module, "pil_decoded", PIL_FORMATS)  # a collective: every rank, not rank 0
    check_finished(cfg, trainer, skipped)
    if trainer.is_global_zero:
        export = export_backbone(module.backbone, out)
        record = module.record()
        record["samples_seen"] = samples
        record["skipped_samples"] = skipped
        record["pil_decoded"] = pil_decoded
        log.info("trained to global step %d (%d steps in this run), %d samples seen, %d skipped (%s)",
                 trainer.global_step, trainer.global_step - (newest.global_step if newest else 0), samples,
                 sum(skipped.values()), ", ".join(f"{reason} {n}" for reason, n in skipped.items() if n) or "none")
        record["export"] = str(export)
        # The name to load the export with: OpenAI weights resolve e.g. ViT-L-14 to ViT-L-14-quickgelu; a config
        # JSON's copy beside the export.
        record["export_model_name"] = export_model_name(module.backbone, cfg.model.name, out)
        write_json(out / "run.json", record)
        logger.log_hyperparams(run_hparams(cfg), final_metrics(trainer))
        logger.finalize("success")  # fit closed the writer already: flush what the line above wrote
        return record
    return None


# The settings TensorBoard's hparams view shows per run, so runs can be sorted and compared there.
HPARAM_KEYS = ("task", "seed", "init_from", "model.name", "model.pretrained", "model.anchor", "model.lora.r",
               "optim.lr", "optim.weight_decay", "optim.warmup_steps", "data.batch_size", "data.global_batch_size")


def run_hparams(cfg: DictConfig) -> dict[str, object]:
    return {key: OmegaConf.select(cfg, key) for key in HPARAM_KEYS}


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The last logged value of every scalar, under `final/` so the step-0 copy Lightning writes of them
    does not join the training curves."""
    return {f"final/{name}": float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
