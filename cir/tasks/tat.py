"""Text-Anchored Tuning: LoRA on one CLIP tower, contrastive loss against the frozen other tower.

`model.anchor` names the frozen tower: text (the paper), image, or none (LoRA on
both), so the paper's ablation is one config key.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from open_clip.loss import ClipLoss
from torch import nn

from cir.data.shards import SKIP_REASONS
from cir.evaluation import BenchmarkEvaluator
from cir.modality_gap import modality_gap
from cir.provenance import run_record
from cir.models import Backbone, apply_lora, count_parameters, create_backbone

# Which towers get LoRA for each anchor (the anchor itself stays frozen).
LORA_TOWERS = {"text": ("image",), "image": ("text",), "none": ("image", "text")}


class NonFiniteLossError(RuntimeError):
    """Training diverged; the last good checkpoint stays as it was."""


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_tat_backbone(cfg: DictConfig) -> Backbone:
    """The backbone with LoRA where the anchor says; everything else frozen."""
    backbone = create_backbone(cfg.model.name, cfg.model.pretrained, cache_dir=cfg.model.cache_dir)
    lora = cfg.model.lora
    apply_lora(backbone, LORA_TOWERS[cfg.model.anchor], r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
               target_modules=tuple(lora.target_modules))
    if cfg.model.grad_checkpointing:
        backbone.model.set_grad_checkpointing(True)
    return backbone


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


class ContrastiveTask(L.LightningModule, TemperatureMixin):
    """What TAT and supervised fine-tuning share: config, optimiser, schedule, periodic evaluation."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg = OmegaConf.create(config)
        self.init_temperature(self.cfg.optim.temperature, self.cfg.optim.learn_temperature)
        self.evaluator: BenchmarkEvaluator | None = None
        self.register_buffer("samples_seen", torch.zeros((), dtype=torch.long))
        self.initial_fingerprint = ""

    def record(self) -> dict[str, Any]:
        """Provenance of this run (this rank's count of samples; the CLI sums ranks for run.json)."""
        return run_record(OmegaConf.to_container(self.cfg), self.initial_fingerprint, int(self.samples_seen), self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cir_run"] = self.record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.initial_fingerprint = checkpoint.get("cir_run", {}).get("backbone", {}).get("initial_fingerprint", "")

    def attach_evaluator(self, evaluator: BenchmarkEvaluator | None) -> None:
        self.evaluator = evaluator

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

    def val_dataloader(self):
        return self.evaluator.dataloaders(self.backbone) if self.evaluator else []

    @torch.no_grad()
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluator.encode_batch(self.backbone, batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        if self.evaluator is None or not self.evaluator.collectors:
            return
        self.evaluator.finish_encoding(self.device)
        metrics = self.evaluator.score(self.device)
        self.log_dict({f"eval/{k}": v for k, v in metrics.items()}, sync_dist=False, rank_zero_only=False)


class TextAnchoredTuning(ContrastiveTask):
    """Symmetric contrastive loss over the global batch (features gathered from every rank)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.backbone = build_tat_backbone(self.cfg)
        self.initial_fingerprint = self.backbone.fingerprint()
        self.loss_fn = ClipLoss()
        # Bad samples the loaders skipped so far on this rank; checkpointed, summed over ranks when logged.
        self.register_buffer("skipped_samples", torch.zeros(len(SKIP_REASONS), dtype=torch.long))
        trainable, total = count_parameters(self.backbone)
        self.trainable_fraction = trainable / total

    def setup(self, stage: str) -> None:
        # Gradients flow through this rank's slice of the gathered features (open_clip's ClipLoss).
        self.loss_fn = ClipLoss(local_loss=False, gather_with_grad=False, rank=self.global_rank,
                                world_size=self.trainer.world_size)

    def features(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.backbone.encode_image(images)
        if texts.is_floating_point():
            return image, F.normalize(texts.to(image.dtype), dim=-1)
        return image, self.backbone.encode_text(texts)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, texts, skipped = batch
        image, text = self.features(images, texts)
        losses = self.loss_fn(image, text, self.logit_scale(), output_dict=True)
        loss = sum(losses.values())
        self.check_loss(loss)
        gap = modality_gap(image.detach(), text.detach())
        batch_size = images.shape[0]
        self.samples_seen += batch_size
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=batch_size)
        self.log("train/loss", loss, batch_size=batch_size)
        self.log("train/temperature", 1.0 / self.logit_scale().detach(), batch_size=batch_size)
        self.log_dict({f"train/modality_{k}": v for k, v in gap.items()}, sync_dist=True, batch_size=batch_size)
        self.skipped_samples += skipped.to(self.skipped_samples)
        totals = {f"data/skipped_{reason}": c for reason, c in zip(SKIP_REASONS, self.skipped_samples.float())}
        self.log_dict(totals, reduce_fx="sum", sync_dist=True, batch_size=batch_size)
        return loss
