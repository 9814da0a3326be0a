"""Contrastive pretraining of a whole CLIP, both towers: the demo's stand-in for OpenAI's CLIP.

Same loss, data and logging as TAT, but every weight trains (no LoRA), so a
from-scratch model ends with its own modality gap for TAT to close.
"""

from __future__ import annotations

from omegaconf import DictConfig

from cir.data.image_text import ImageTextDataModule
from cir.models import Backbone, create_backbone
from cir.tasks import tat


class ContrastivePretraining(tat.TextAnchoredTuning):
    def make_backbone(self, cfg: DictConfig) -> Backbone:
        backbone = create_backbone(cfg.model.name, cfg.model.pretrained, cache_dir=cfg.model.cache_dir)
        return tat.prepare_for_tuning(backbone, cfg, lora=False)


def build(cfg: DictConfig) -> tuple[ContrastivePretraining, ImageTextDataModule]:
    return tat.build(cfg, ContrastivePretraining)
