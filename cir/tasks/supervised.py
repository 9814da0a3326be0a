"""Supervised CIR fine-tuning on (reference, caption, target) triplets, starting from a TAT checkpoint.

`init_from` is the one handoff key: a TAT (or pretraining) Lightning checkpoint
written by cir.fit, whose LoRA is merged into the weights; an export written by
cir.fit (export.pt / .safetensors, loaded as model.name); or null for
model.name + model.pretrained. Fresh LoRA then goes where model.anchor says, and
the query is composed by a learned fusion (cir.fusion): Slerp with a trained
alpha or a CLIP4Cir-style combiner. The loss is cross-entropy of each composed
query against every target image of the global batch.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from open_clip.loss import gather_features
from torch import Tensor

from cir.config import ConfigError
from cir.data.triplets import TripletDataModule, TripletDataset, load_triplets
from cir.fusion import SlerpFusion, build_fusion
from cir.models import TOWERS, Backbone, create_backbone, merge_lora
from cir.tasks.base import ContrastiveTask, training_transform
from cir.tasks.pretrain import ContrastivePretraining
from cir.tasks.tat import TextAnchoredTuning, prepare_for_tuning
from cir.workers import resolve_workers

LIGHTNING_SUFFIX = ".ckpt"
# The tasks whose checkpoints fine-tuning can start from, and the LightningModule that rebuilds each backbone:
# TAT (LoRA, merged on load) and full pretraining.
INIT_TASKS = {"tat": TextAnchoredTuning, "pretrain": ContrastivePretraining}


def composed_contrastive_loss(
    queries: Tensor, targets: Tensor, logit_scale: Tensor, rank: int = 0, world_size: int = 1
) -> Tensor:
    """Cross-entropy of each query over all targets of the global batch; query i's positive is target i.

    Under DDP both sides are gathered from every rank (open_clip's gather_features,
    gradient through this rank's slice), so each rank computes the full global loss
    and the gradient of its own samples is exact.
    """
    if world_size > 1:
        queries, targets = gather_features(queries, targets, rank=rank, world_size=world_size)
    logits = logit_scale * queries @ targets.T
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def _load_lightning_checkpoint(path: Path, cfg: DictConfig) -> Backbone:
    """Rebuild the checkpoint's module with Lightning's load_from_checkpoint and return its backbone, LoRA merged.

    The config is read first (memory-mapped, so the weights are not read twice) to name the task and check the model.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as err:
        raise ConfigError(f"config key `init_from`: {path} does not read as a torch checkpoint: {err}") from None
    config = (ckpt.get("hyper_parameters") or {}).get("config") if isinstance(ckpt, dict) else None
    if config is None or "state_dict" not in ckpt:
        raise ConfigError(f"config key `init_from`: {path} is not a checkpoint written by cir.fit (no config in its hyper_parameters)")
    source = OmegaConf.create(config)
    if source.task not in INIT_TASKS:
        raise ConfigError(
            f"config key `init_from`: {path} is a `{source.task}` checkpoint; expected one of {list(INIT_TASKS)} "
            "(or an export .pt / .safetensors)"
        )
    if source.model.name != cfg.model.name:
        raise ConfigError(
            f"config key `init_from`: {path} holds model.name={source.model.name!r} but this run has "
            f"model.name={cfg.model.name!r}: set model.name={source.model.name}"
        )
    # Cached caption embeddings only mattered to that run's data; the weights file builds the same architecture.
    source.data.text_embeddings = None
    try:
        module = INIT_TASKS[source.task].load_from_checkpoint(path, map_location="cpu", config=OmegaConf.to_container(source))
    except RuntimeError as err:
        raise ConfigError(f"config key `init_from`: {path} does not fit its own model config: {str(err).splitlines()[0]}") from None
    merge_lora(module.backbone)
    return module.backbone


def initial_backbone(cfg: DictConfig) -> Backbone:
    """The weights fine-tuning starts from, without LoRA, as `init_from` says."""
    if cfg.init_from is None:
        return create_backbone(cfg.model.name, cfg.model.pretrained, cache_dir=cfg.model.cache_dir)
    path = Path(cfg.init_from).expanduser()
    if not path.exists():
        raise ConfigError(
            f"config key `init_from`: not found: {cfg.init_from} "
            "(expected a TAT checkpoint .ckpt, or an export written by cir.fit: export.pt or a BLIP export/ folder; or null)"
        )
    if path.suffix == LIGHTNING_SUFFIX:
        return _load_lightning_checkpoint(path, cfg)
    try:
        return create_backbone(cfg.model.name, str(path), cache_dir=cfg.model.cache_dir)
    except RuntimeError as err:
        raise ConfigError(
            f"config key `init_from`: {path} does not load as model.name={cfg.model.name}: {str(err).splitlines()[0]}"
        ) from None


class SupervisedTuning(ContrastiveTask):
    """Fresh LoRA on the starting weights plus a learned fusion, trained on composed-query -> target retrieval."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        cfg = self.cfg
        backbone = initial_backbone(cfg)
        self.initial_fingerprint = backbone.fingerprint()
        self.backbone = prepare_for_tuning(backbone, cfg)
        sup = cfg.supervised
        self.fusion = build_fusion(sup.fusion, backbone.embed_dim, alpha=sup.alpha, learn_alpha=sup.learn_alpha,
                                   hidden=sup.combiner_hidden, dropout=sup.combiner_dropout)
        # A frozen tower is encoded without autograd: no activations kept for a backward it never gets.
        self.tower_trains = {t: any(p.requires_grad for _, p in backbone.tower_parameters(t)) for t in TOWERS}
        self.rank, self.world_size = 0, 1

    def setup(self, stage: str) -> None:
        self.rank, self.world_size = self.global_rank, self.trainer.world_size

    def _encode(self, tower: str, inputs: Tensor) -> Tensor:
        encode = self.backbone.encode_image if tower == "image" else self.backbone.encode_text
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.tower_trains[tower]):
            return encode(inputs)

    def queries_and_targets(self, references: Tensor, tokens: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Composed query and target features of a batch (references and targets in one image-tower pass)."""
        images = self._encode("image", torch.cat([references, targets]))
        reference, target = images.split([len(references), len(targets)])
        return self.fusion(reference, self._encode("text", tokens)), target

    def batch_loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        queries, targets = self.queries_and_targets(*batch)
        return composed_contrastive_loss(queries, targets, self.logit_scale(), self.rank, self.world_size)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self.batch_loss(batch)
        self.check_loss(loss)
        batch_size = batch[0].shape[0]
        self.samples_seen += batch_size
        if self.logs_this_step():
            self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
            self.log("train/temperature", 1.0 / self.logit_scale().detach(), batch_size=batch_size)
            if isinstance(self.fusion, SlerpFusion):
                self.log("train/alpha", self.fusion.alpha.detach(), prog_bar=True, batch_size=batch_size)
        return loss

    def on_validation_epoch_end(self) -> None:
        """Zero-shot metrics of the tuned backbone (base class), then the learned fusion's own."""
        super().on_validation_epoch_end()
        if self.evaluator is None or not self.evaluator.entries:
            return
        metrics = self.evaluator.score_fusion(self.fusion.key, self.fusion, self.device)
        self.log_dict({f"eval/{k}": v for k, v in metrics.items()}, sync_dist=False, rank_zero_only=False)
        if isinstance(self.fusion, SlerpFusion):
            self.log("eval/alpha", self.fusion.alpha.detach(), sync_dist=False, rank_zero_only=False)

    def record(self) -> dict[str, Any]:
        record = super().record()
        record["train_data"] = {
            "triplets": OmegaConf.to_container(self.cfg.supervised.train),
            "batch_size": self.cfg.data.batch_size,
        }
        return record


def build(cfg: DictConfig) -> tuple[SupervisedTuning, TripletDataModule]:
    """The module and its triplet DataModule from a FitConfig that cir.config_checks passed (training images
    checked first)."""
    train = cfg.supervised.train
    try:
        triplets = load_triplets(train.name, train.root, train.split, image_root=train.image_root,
                                 categories=list(train.categories), caption_mode=train.caption_mode)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"config key `supervised.train`: {err}") from None
    module = SupervisedTuning(OmegaConf.to_container(cfg, resolve=True))
    dataset = TripletDataset(triplets, training_transform(cfg, module.backbone), module.backbone.tokenize)
    workers = resolve_workers(cfg.data.num_workers, "data.num_workers")
    return module, TripletDataModule(dataset, cfg.data.batch_size, workers, seed=cfg.seed)
