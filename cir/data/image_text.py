"""The DataModule that owns TAT's training data: image-text WebDataset shards."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from cir.config import ConfigError
from cir.data.embed_text import load_text_embedding_meta
from cir.data.epochs import check_epoch_kind
from cir.data.shards import ResumableLoader, expand_shard_urls, image_text_loader, image_text_pipeline
from cir.data.training_position import TrainingPosition
from cir.data.transforms import NormaliseOnDevice, Uint8RandomResizedCrop
from cir.data.validation import ZeroShotValidationData


class ImageTextDataModule(TrainingPosition, NormaliseOnDevice, ZeroShotValidationData, L.LightningDataModule):
    """Builds the shard loader once the process group exists, so shards split by the real rank.

    Its checkpoint state is where training stands in the data (TrainingPosition); checkpoints written before
    hold it as the loader's own state (ResumableLoader).
    """

    def __init__(
        self,
        train_shards: str | Sequence[str],
        image_transform: Callable,
        tokenize: Callable[[list[str]], torch.Tensor] | None,
        batch_size: int,
        num_workers: int,
        decode: str = "cpu",
        *,
        resampled: bool = False,
        exact_epoch: bool = False,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        text_embedding_key: str | None = None,
    ) -> None:
        """How an epoch is drawn (resampled, exact_epoch, samples_per_epoch, shuffle_buffer, seed) and
        text_embedding_key as image_text_pipeline takes them. decode: where JPEGs are decoded, cropped and resized
        (`data.decode`: cpu in the workers, cuda on the training GPU)."""
        super().__init__()
        self.train_shards = train_shards
        self.image_transform = device_decoding(image_transform) if decode_on(decode) == "cuda" else image_transform
        self.tokenize = tokenize
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.epoch_options = {"resampled": resampled, "exact_epoch": exact_epoch,
                              "samples_per_epoch": samples_per_epoch, "shuffle_buffer": shuffle_buffer, "seed": seed}
        self.text_embedding_key = text_embedding_key
        self.resume_at: dict[str, int] = {}
        self.loader: ResumableLoader | None = None

    def train_dataloader(self):
        world_size = self.trainer.world_size if self.trainer is not None else 1
        options = self.epoch_options
        # devices: auto (or a SLURM job) names the process count only now: the config's rule, with the real count
        check_epoch_kind(options["resampled"], options["exact_epoch"], options["samples_per_epoch"], world_size)
        try:
            pipeline = image_text_pipeline(
                self.train_shards,
                image_transform=self.image_transform,
                tokenize=None if self.text_embedding_key else self.tokenize,
                batch_size=self.batch_size,
                text_embedding_key=self.text_embedding_key,
                **options,
            )
        except ValueError as err:  # no usable shard counts: a data problem the user fixes in the config
            raise ConfigError(f"config key `data.train_shards`: {err}") from None
        if self.resume_at:
            pipeline.resume(self.resume_at["epoch"], self.resume_at["batches"])
        pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        if getattr(self.image_transform, "decode", "cpu") == "cuda" and not pin:
            raise ConfigError("config key `data.decode`: cuda decodes on the training GPU, and this run trains on "
                              f"{self.trainer.strategy.root_device if self.trainer else 'no trainer'}; use data.decode=cpu")
        self.end_workers()
        self.loader = image_text_loader(pipeline, self.num_workers, pin_memory=pin)
        return self.loader

    def end_workers(self) -> None:
        """The training loader's workers end with the fit, finished or not (ResumableLoader.shutdown says why)."""
        if self.loader is not None:
            self.loader.shutdown()

    def teardown(self, stage: str) -> None:
        self.end_workers()

    def on_exception(self, exception: BaseException) -> None:
        self.end_workers()


def decode_on(decode: str) -> str:
    """`data.decode` checked: cpu, or cuda where this machine has a CUDA device."""
    if decode not in ("cpu", "cuda"):
        raise ConfigError(f"config key `data.decode`: cpu or cuda, got {decode!r}")
    if decode == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key `data.decode`: cuda decodes JPEGs on a CUDA GPU and this machine has none "
                          "(torch.cuda.is_available() is False); use data.decode=cpu")
    return decode


def device_decoding(transform: Callable) -> Uint8RandomResizedCrop:
    """The uint8 training transform that hands JPEGs over undecoded, with their crop boxes."""
    if not isinstance(transform, Uint8RandomResizedCrop):
        raise ConfigError("config key `data.decode`: cuda covers open_clip's plain random resized crop only, and "
                          "model.aug_cfg asks for more (colour jitter, grayscale, timm); use data.decode=cpu")
    return dataclasses.replace(transform, decode="cuda")


def train_shards(cfg: DictConfig, *, expand: bool = True) -> tuple[str | list[str], str | None]:
    """Shard URLs a TAT or pretraining run reads and the cached-embedding key: embed_text's output when
    data.text_embeddings is set. `expand=False` leaves absent shards for cir.data.check to report one by one."""
    if cfg.data.text_embeddings:
        meta = load_text_embedding_meta(cfg.data.text_embeddings)
        return list(meta.urls), meta.key
    shards = cfg.data.train_shards
    if shards is None or shards == "" or (OmegaConf.is_list(shards) and len(shards) == 0):
        raise ConfigError("config key `data.train_shards`: expected shard URLs (a brace pattern or a list), got nothing")
    shards = list(shards) if OmegaConf.is_list(shards) else str(shards)
    if expand:
        try:
            expand_shard_urls(shards)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"config key `data.train_shards`: {err}") from None
    return shards, None
