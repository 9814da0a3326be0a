"""What every contrastive fine-tuning task shares: config in hparams, temperature, AdamW + warmup-cosine,
a non-finite-loss stop, periodic zero-shot evaluation as validation, and the run record in checkpoints."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cir.config import ConfigError
from cir.data.transforms import uint8_version
from cir.evaluation.encoding import EvaluatorEncoding
from cir.evaluation.evaluator import BenchmarkEvaluator
from cir.models import Backbone, train_transform
from cir.provenance import run_record
from cir.resume import random_states, restore_random_state


def training_transform(cfg: DictConfig, backbone: Backbone) -> Callable:
    """The backbone's training transform with `model.aug_cfg` applied (bad settings name the key).

    open_clip's plain augmentation becomes its uint8 version (cir.data.transforms: same crops, a fraction
    of the loader's CPU time), whose batches the DataModule normalises on the device (transforms.NormaliseOnDevice).
    """
    try:
        transform = train_transform(backbone, OmegaConf.to_container(cfg.model.aug_cfg))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key `model.aug_cfg`: {err}") from None
    return uint8_version(transform) or transform


class NonFiniteLossError(RuntimeError):
    """Training diverged; the last good checkpoint stays as it was."""


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class TemperatureMixin(nn.Module):
    """Logit scale 1/T: a fixed buffer (the paper) or a learned log-parameter."""

    def init_temperature(self, temperature: float, learn: bool) -> None:
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=100.0)


class ContrastiveTask(EvaluatorEncoding, L.LightningModule, TemperatureMixin):
    """What TAT and supervised fine-tuning share: config, optimiser, schedule, periodic evaluation."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg = OmegaConf.create(config)
        self.init_temperature(self.cfg.optim.temperature, self.cfg.optim.learn_temperature)
        self.evaluator: BenchmarkEvaluator | None = None
        self.register_buffer("samples_seen", torch.zeros((), dtype=torch.long))
        self.initial_fingerprint = ""
        self.config_changes: list[dict[str, Any]] = []  # set by cir.training on resume (cir.resume.check_resume)
        self.resumed, self.resumed_random_states = False, None  # each rank's random state in the checkpoint

    def record(self) -> dict[str, Any]:
        """Provenance of this run (this rank's count of samples; the CLI sums ranks for run.json)."""
        return run_record(OmegaConf.to_container(self.cfg), self.initial_fingerprint, int(self.samples_seen), self.global_step,
                          self.config_changes)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cir_run"] = self.record()
        checkpoint["cir_random_states"] = random_states(self.trainer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.initial_fingerprint = checkpoint.get("cir_run", {}).get("backbone", {}).get("initial_fingerprint", "")
        self.resumed_random_states = checkpoint.get("cir_random_states")
        self.resumed = True

    def on_train_start(self) -> None:
        """A resumed run draws on from where the checkpoint's run stopped (LoRA dropout): cir.resume."""
        if self.resumed:
            restore_random_state(self.trainer, self.resumed_random_states)

    def attach_evaluator(self, evaluator: BenchmarkEvaluator | None) -> None:
        self.evaluator = evaluator

    def logs_this_step(self) -> bool:
        """Whether Lightning writes this step's logs: its own rule (every trainer.log_every_n_steps steps, as its logger
        connector counts them), or the run's last step. Training logs only then: Lightning would drop the other steps'
        values but still pay for each self.log call (about 1 % of a tiny model's step per key) and each cross-rank
        reduction; the progress bar shows the values of the last logging step."""
        trainer = self.trainer
        last = 0 < trainer.max_steps <= self.global_step + 1 or (trainer.is_last_batch and self._last_epoch())
        # Lightning has no public accessor for its rule (2.6: _LoggerConnector.should_update_logs, which counts the
        # fit loop's private _batches_that_stepped); reading it keeps ours Lightning's rather than a copy that drifts.
        return last or trainer._logger_connector.should_update_logs

    def _last_epoch(self) -> bool:
        return self.trainer.max_epochs is not None and 0 < self.trainer.max_epochs <= self.current_epoch + 1

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """At the last step, say so before Lightning decides whether to write this step's logs (it writes them when
        training stops, but learns of max_steps / max_epochs only after that decision)."""
        trainer = self.trainer
        if 0 < trainer.max_steps <= self.global_step or (trainer.is_last_batch and self._last_epoch()):
            trainer.should_stop = True

    def check_loss(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at global step {self.global_step}: stopping; "
                "the last checkpoint saved before this step is intact"
            )

    def configure_optimizers(self):
        optim = self.cfg.optim
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        decay = [p for n, p in named if p.ndim >= 2]
        no_decay = [p for n, p in named if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("training length unknown: set trainer.max_steps, or data.resampled=true with data.samples_per_epoch")
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, optim.warmup_steps, int(total))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_validation_epoch_end(self) -> None:
        if self.evaluator is None or not self.evaluator.collectors:
            return
        self.evaluator.finish_encoding(self.device)
        metrics = self.evaluator.score(self.device)
        self.log_dict({f"eval/{k}": v for k, v in metrics.items()}, sync_dist=False, rank_zero_only=False)
