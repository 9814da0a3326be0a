"""Text-Anchored Tuning: LoRA on one CLIP tower, contrastive loss against the frozen other tower.

`model.anchor` names the frozen tower: text (the paper), image, or none (LoRA on
both), so the paper's ablation is one config key.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from open_clip.loss import ClipLoss

from cir.data.embed_text import check_backbone_identity, load_text_embedding_meta
from cir.data.image_text import ImageTextDataModule, train_shards
from cir.data.shards import SKIP_REASONS
from cir.data.transforms import PIL_FORMATS
from cir.modality_gap import modality_gap
from cir.models import Backbone, apply_lora, count_parameters, create_backbone
from cir.schema import LORA_TOWERS
from cir.tasks.base import ContrastiveTask, training_transform
from cir.workers import resolve_workers


# Which towers get LoRA for each anchor (the anchor itself stays frozen).
def build_tat_backbone(cfg: DictConfig) -> Backbone:
    """The backbone with LoRA where the anchor says; everything else frozen.

    Cached caption embeddings are checked against the weights as created,
    before LoRA changes the fingerprint.
    """
    backbone = create_backbone(cfg.model.name, cfg.model.pretrained, cache_dir=cfg.model.cache_dir)
    if cfg.data.text_embeddings:
        check_backbone_identity(load_text_embedding_meta(cfg.data.text_embeddings), backbone)
    return prepare_for_tuning(backbone, cfg)


def prepare_for_tuning(backbone: Backbone, cfg: DictConfig, lora: bool = True) -> Backbone:
    """LoRA (model.lora) on the towers model.anchor leaves free, unless `lora` is False, and gradient checkpointing
    as model.grad_checkpointing says: what every task that tunes a backbone sets up the same way."""
    if lora:
        settings = cfg.model.lora
        apply_lora(backbone, LORA_TOWERS[cfg.model.anchor], r=settings.r, alpha=settings.alpha, dropout=settings.dropout,
                   target_modules=tuple(settings.target_modules))
    if cfg.model.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    return backbone


class TextAnchoredTuning(ContrastiveTask):
    """Symmetric contrastive loss over the global batch (features gathered from every rank)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.backbone = self.make_backbone(self.cfg)
        self.initial_fingerprint = self.backbone.fingerprint()
        # Over the global batch: gradients flow through this rank's slice of the gathered features; setup() tells it the rank.
        self.loss_fn = ClipLoss(local_loss=False, gather_with_grad=False)
        # Bad samples the loaders skipped so far on this rank; checkpointed, summed over ranks when logged.
        self.register_buffer("skipped_samples", torch.zeros(len(SKIP_REASONS), dtype=torch.long))
        # Images decoded through PIL instead of TorchCodec per format, likewise (absent from older checkpoints).
        self.register_buffer("pil_decoded", torch.zeros(len(PIL_FORMATS), dtype=torch.long))
        trainable, total = count_parameters(self.backbone)
        self.trainable_fraction = trainable / total

    def make_backbone(self, cfg: DictConfig) -> Backbone:
        return build_tat_backbone(cfg)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written before PIL decodes were counted resumes with none counted so far."""
        super().on_load_checkpoint(checkpoint)
        checkpoint["state_dict"].setdefault("pil_decoded", torch.zeros_like(self.pil_decoded))

    def setup(self, stage: str) -> None:
        self.loss_fn.rank, self.loss_fn.world_size = self.global_rank, self.trainer.world_size

    def features(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.backbone.encode_image(images)
        if texts.is_floating_point():
            return image, F.normalize(texts.to(image.dtype), dim=-1)
        return image, self.backbone.encode_text(texts)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, texts, skipped, *pil_decoded = batch  # ImageTextBatch; a hand-built batch may stop at `skipped`
        image, text = self.features(images, texts)
        losses = self.loss_fn(image, text, self.logit_scale(), output_dict=True)
        loss = sum(losses.values())
        self.check_loss(loss)
        batch_size = images.shape[0]
        self.samples_seen += batch_size
        self.skipped_samples += skipped.to(self.skipped_samples)
        if pil_decoded and pil_decoded[0] is not None:
            self.pil_decoded += pil_decoded[0].to(self.pil_decoded)
        if self.logs_this_step():
            self.log_training(loss, losses, image.detach(), text.detach(), batch_size)
        return loss

    def log_training(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], image: torch.Tensor, text: torch.Tensor,
                     batch_size: int) -> None:
        """Loss and its terms, temperature, modality gap (mean over ranks), skipped samples so far (sum over ranks)."""
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=batch_size)
        self.log("train/temperature", 1.0 / self.logit_scale().detach(), batch_size=batch_size)
        gap = modality_gap(image, text)
        self.log_dict({f"train/modality_{k}": v for k, v in gap.items()}, sync_dist=True, batch_size=batch_size)
        totals = {f"data/skipped_{reason}": c for reason, c in zip(SKIP_REASONS, self.skipped_samples.float())}
        self.log_dict(totals, reduce_fx="sum", sync_dist=True, batch_size=batch_size)


def build(cfg: DictConfig, task: type[TextAnchoredTuning] = TextAnchoredTuning) -> tuple[TextAnchoredTuning, ImageTextDataModule]:
    """The module and its shard DataModule from a validated FitConfig."""
    shards, embedding_key = train_shards(cfg)
    module = task(OmegaConf.to_container(cfg, resolve=True))
    data = ImageTextDataModule(
        shards,
        training_transform(cfg, module.backbone),
        module.backbone.tokenize,
        cfg.data.batch_size,
        resolve_workers(cfg.data.num_workers, "data.num_workers"),
        resampled=cfg.data.resampled,
        exact_epoch=cfg.data.exact_epoch,
        samples_per_epoch=cfg.data.samples_per_epoch,
        shuffle_buffer=cfg.data.shuffle_buffer,
        seed=cfg.seed,
        text_embedding_key=embedding_key,
        decode=cfg.data.decode,
    )
    return module, data
