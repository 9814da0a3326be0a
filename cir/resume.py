"""Which checkpoint a rerun resumes from, and whether the new config may continue it.

The newest usable state wins by the global step written inside each checkpoint
(not by name or mtime: after a kill, `last.ckpt` can be older than a periodic
file). A file that does not open (truncated, half-copied) is named in a warning and
skipped. A config change that alters the training trajectory stops the rerun unless
`resume.accept_changes` names it; every change, accepted or harmless, is recorded
with the step it took effect at, so config.yaml and run.json never claim settings
the weights were not trained with.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from cir.checkpoint_io import read_checkpoint
from cir.config import ConfigError

log = logging.getLogger(__name__)

# Keys that only extend the run or change what is observed; the trajectory so far stays valid.
OBSERVING = (
    "output_dir", "eval", "checkpoint", "resume", "model.cache_dir", "trainer.max_steps", "trainer.max_epochs",
    "trainer.log_every_n_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.val_check_interval", "trainer.check_val_every_n_epoch", "trainer.limit_val_batches",
)
# Keys a resumed run cannot take on: the checkpoint's weights were built (and shaped) by the old value.
FIXED = ("task", "model.name", "model.pretrained", "model.anchor", "model.lora.r", "model.lora.target_modules",
         "optim.learn_temperature", "init_from")
# Paths whose change is a move when every file name stays the same.
PATHS = ("data.train_shards", "data.text_embeddings", "init_from", "supervised.train.root", "supervised.train.image_root")


@dataclass
class ResumePoint:
    path: Path
    global_step: int
    record: dict[str, Any] = field(default_factory=dict)  # the run record the task saved in it (cir_run)
    epochs_done: int = 0  # epochs Lightning counts as finished (one that max_steps stopped included)


def candidates(out: Path) -> list[Path]:
    """last.ckpt, the periodic checkpoints, and Lightning's SLURM requeue checkpoints (<out>/hpc_ckpt_N.ckpt)."""
    return [p for p in [*sorted((out / "checkpoints").glob("*.ckpt")), *sorted(out.glob("hpc_ckpt_*.ckpt"))] if p.is_file()]


def newest_checkpoint(out: Path) -> ResumePoint | None:
    """The readable checkpoint with the highest global step (the newest file among equals); None for a fresh run."""
    found, bad = [], []
    for path in candidates(out):
        try:
            ckpt = read_checkpoint(path)
            point = ResumePoint(path, ckpt["global_step"], ckpt.get("cir_run", {}), int(ckpt.get("epoch", 0)))
            found.append((ckpt["global_step"], path.stat().st_mtime_ns, point))
        except Exception as err:  # noqa: BLE001 - whatever a damaged file raises, it is not a state to resume
            bad.append(path)
            log.warning("checkpoint %s is unreadable (%s: %s): skipping it", path, type(err).__name__,
                        str(err).split(". ")[0])
    if not found:
        if bad:
            raise ConfigError(f"config key `output_dir`: no readable checkpoint in {out} to resume from "
                              f"({', '.join(map(str, bad))} damaged); move them away to start afresh")
        return None
    return max(found, key=lambda f: f[:2])[2]


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def _names(value: Any) -> list[str] | None:
    values = value if isinstance(value, list) else [value]
    return [Path(str(v)).name for v in values] if all(isinstance(v, str) for v in values) else None


def _matches(key: str, names: tuple[str, ...] | list[str]) -> bool:
    return any(key == n or key.startswith(f"{n}.") for n in names)


def config_changes(old: dict[str, Any], new: dict[str, Any], accepted: list[str], step: int) -> list[dict[str, Any]]:
    """Each differing key as {step, key, from, to, kind}; kind: observes, moved or accepted. Raises ConfigError
    listing the keys that change the trajectory and were not accepted."""
    before, after = flatten(old), flatten(new)
    changes, refused, fixed = [], [], []
    for key in sorted(set(before) | set(after)):
        was, now = before.get(key), after.get(key)
        if was == now:
            continue
        if _matches(key, OBSERVING):
            kind = "observes"
        elif key in PATHS and _names(was) is not None and _names(was) == _names(now):
            kind = "moved"
        elif _matches(key, FIXED):
            fixed.append(f"{key} {was!r} -> {now!r}")
            continue
        elif _matches(key, accepted):
            kind = "accepted"
        else:
            refused.append(f"{key} {was!r} -> {now!r}")
            continue
        changes.append({"step": step, "key": key, "from": was, "to": now, "kind": kind})
    if fixed:
        raise ConfigError(
            f"config key `{fixed[0].split()[0]}`: differs from the checkpoint at global step {step}, whose weights were "
            f"built with the old value ({'; '.join(fixed)}); a resumed run cannot change it: use a new output_dir"
        )
    if refused:
        keys = ",".join(r.split()[0] for r in refused)
        raise ConfigError(
            f"config key `{refused[0].split()[0]}`: differs from the checkpoint at global step {step}, which would "
            f"change the training trajectory ({'; '.join(refused)}); use a new output_dir, or continue with "
            f"resume.accept_changes=[{keys}] (recorded in run.json)"
        )
    return changes


def check_resume(point: ResumePoint | None, config: dict[str, Any], accepted: list[str]) -> list[dict[str, Any]]:
    """The run's config change history: the checkpoint's plus this rerun's (empty for a fresh run)."""
    if point is None:
        return []
    history = list(point.record.get("config_changes", []))
    old = point.record.get("config")
    if old is None:
        log.warning("%s holds no run config: the new config cannot be compared with it", point.path)
        return history
    changes = config_changes(old, config, accepted, point.global_step)
    for change in changes:
        log.info("config change at global step %d (%s): %s %r -> %r", change["step"], change["kind"], change["key"],
                 change["from"], change["to"])
    return history + changes


def check_extends(point: ResumePoint | None, max_epochs: int, max_steps: int) -> None:
    """Refuse a rerun that asks for more steps but would train none.

    Lightning counts the epoch that trainer.max_steps stopped as finished (its
    checkpoint says so), so raising max_steps alone, with the epoch limit
    already reached, would resume, train nothing and exit as if done.
    """
    if point is None or max_epochs == -1 or point.epochs_done < max_epochs:
        return
    if max_steps == -1 or max_steps <= point.global_step:
        return  # as long as asked: a rerun of a finished run
    raise ConfigError(
        f"config key `trainer.max_steps`: the checkpoint at global step {point.global_step} has finished "
        f"{point.epochs_done} epoch(s) of trainer.max_epochs={max_epochs} (Lightning counts the epoch max_steps "
        f"stopped as finished), so max_steps={max_steps} alone trains nothing; raise trainer.max_epochs too, or set "
        "trainer.max_epochs=-1: training goes on with the next epoch (the rest of the stopped one is not seen)"
    )


class RunCheckpoints(ModelCheckpoint):
    """ModelCheckpoint in a run's own checkpoints/ folder, which a resumed run writes to on purpose.

    Lightning warns at setup that the folder "exists and is not empty" (ModelCheckpoint.setup), a note on every
    resume that reads like a fault; the warning is ignored there only, so a --debug run or the Python API stays quiet.
    """

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's own key (Lightning prefixes the class name), so checkpoints written before this class
        existed resume with their callback state (the last and best checkpoint paths and scores)."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)


class ResumedOptimizer(L.Callback):
    """A resumed run trains with the config's optimiser settings, not the checkpoint's.

    Lightning restores the optimizer's param groups and the scheduler's base LRs from the
    checkpoint, which would silently keep the old optim.lr / weight_decay / betas / eps
    after `resume.accept_changes` let new ones into config.yaml; a fixed temperature is a
    restored buffer too. The warmup-cosine schedule is rebuilt from the config anyway.
    """

    def __init__(self, optim: DictConfig) -> None:
        self.optim = optim

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [self.optim.lr] * len(scheduler.base_lrs)
            for group, factor in zip(scheduler.optimizer.param_groups, (f(scheduler.last_epoch) for f in scheduler.lr_lambdas)):
                decays = group["params"][0].ndim >= 2  # ContrastiveTask.configure_optimizers' split
                group.update(lr=self.optim.lr * factor, initial_lr=self.optim.lr, betas=tuple(self.optim.betas),
                             eps=self.optim.eps, weight_decay=self.optim.weight_decay if decays else 0.0)
        if not self.optim.learn_temperature:
            with torch.no_grad():
                pl_module.log_logit_scale.fill_(math.log(1.0 / self.optim.temperature))


def random_states(trainer: L.Trainer) -> list[dict[str, Any]]:
    """Every rank's torch generator states (CPU, and each CUDA device's: what dropout draws from), in rank order.

    A checkpoint saves them so a resumed run draws the dropout masks the uninterrupted run drew; every rank calls
    this while saving (Lightning's checkpoint dump runs on all ranks), so the gather is collective. Tensors only:
    the checkpoint stays loadable with torch.load(weights_only=True).
    """
    state = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}
    if trainer.world_size == 1:
        return [state]
    states: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def restore_random_state(trainer: L.Trainer, states: list[dict[str, Any]] | None) -> None:
    """Put back this rank's generator states from a checkpoint (where training starts, after everything that draws
    while a run is set up). A checkpoint from another number of ranks, or from before states were saved, has none
    that fit: named in a warning, and training goes on from the seeded state."""
    if states is None or len(states) != trainer.world_size:
        log.warning("the checkpoint holds %s random state(s) for %d rank(s): dropout will not draw what an "
                    "uninterrupted run would", "no" if states is None else len(states), trainer.world_size)
        return
    state = states[trainer.global_rank]
    torch.set_rng_state(state["cpu"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
