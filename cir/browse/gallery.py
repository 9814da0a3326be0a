"""A gallery for the page: a benchmark split or a folder of images, encoded once through the evaluation's cache.

Encoding runs the same Lightning loop as `cir.evaluate` (cir.evaluation.run.encode,
with its progress bar) into the same FeatureCache, so a split evaluated once
opens at once, and features are never computed a second way.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from cir.browse.session import Gallery
from cir.config import ConfigError, check_kwargs
from cir.config_checks import check_eval_config
from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark
from cir.evaluation.evaluator import BenchmarkEvaluator
from cir.evaluation.features import FeatureCache, Features
from cir.evaluation.run import encode
from cir.evaluation.splits import benchmark_splits
from cir.models import Backbone, create_backbone
from cir.workers import resolve_workers

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
FOLDER = "folder"  # the benchmark name a folder gallery is cached under


class GalleryError(ValueError):
    """A gallery that cannot be shown (no images, an unreadable file, too large for memory): a message for the page."""


def folder_benchmark(folder: str | Path) -> CIRBenchmark:
    """Every image file under `folder` (recursively) as a gallery without queries.

    The cache key covers each file's path, size and modification time, so an
    edited folder is encoded again instead of answering from stale features.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise GalleryError(f"gallery folder {root}: not a folder")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise GalleryError(f"gallery folder {root}: no images in it (looked for {' '.join(IMAGE_SUFFIXES)})")
    ids = [p.relative_to(root).as_posix() for p in paths]
    stamp = hashlib.sha256()
    for image_id, path in zip(ids, paths):
        stat = path.stat()
        stamp.update(f"{image_id}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    info = {"root": str(root.resolve()), "files": stamp.hexdigest()[:16]}
    return CIRBenchmark(FOLDER, root.resolve().name or "root", [], ids, dict(zip(ids, paths)), info)


def benchmark_split(cfg: DictConfig) -> CIRBenchmark:
    """The configured split; the page shows one at a time (one FashionIQ category)."""
    benches = benchmark_splits(cfg.data, None, cfg.eval.fashioniq_captions)
    if len(benches) != 1:
        names = [b.name for b in benches]
        key = "data.genecis.tasks" if cfg.data.name == "genecis" else "data.categories"
        raise ConfigError(f"config key `{key}`: the page shows one split at a time, got {names}")
    return benches[0]


def available_memory() -> int:
    """Bytes the kernel could give this process now (MemAvailable), so a huge gallery is refused before encoding."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(num_images: int, dim: int, available: int) -> None:
    """Refuse a gallery whose float32 features (plus the encoding's gathered copy) would not fit in memory."""
    need = 2 * num_images * dim * 4
    if need > available:
        raise GalleryError(
            f"a gallery of {num_images} images needs about {need / 2**30:.1f} GiB of memory for its {dim}-d"
            f" features, but only {available / 2**30:.1f} GiB is free: use a smaller folder or split"
        )


def load_backbone(model_cfg: DictConfig) -> Backbone:
    backbone = create_backbone(model_cfg.name, model_cfg.pretrained, cache_dir=model_cfg.cache_dir)
    return backbone.eval()


def encode_gallery(cfg: DictConfig, backbone: Backbone, bench: CIRBenchmark, label: str) -> Gallery:
    """Features of `bench` under `backbone`, from the evaluation cache or encoded now (and cached)."""
    check_eval_config(cfg)
    trainer_kwargs = check_kwargs(cfg.trainer, L.Trainer, "trainer")
    evaluator = BenchmarkEvaluator(
        [bench],
        methods=["slerp"],
        alphas=[],
        cache=FeatureCache(cfg.eval.cache_dir),
        batch_size=cfg.data.batch_size,
        num_workers=resolve_workers(cfg.data.num_workers, "data.num_workers"),
        exclude_reference=False if bench.name == FOLDER else cfg.eval.exclude_reference,
    )
    check_fits(len(evaluator.entries[0].index.image_ids), backbone.embed_dim, available_memory())
    try:
        with warnings.catch_warnings():
            # A folder has no captions to encode: Lightning's notice about that empty loader is expected.
            warnings.filterwarnings("ignore", message="Total length of `DataLoader` across ranks is zero")
            encode(evaluator, backbone, trainer_kwargs)
    except OSError as err:  # PIL's UnidentifiedImageError and missing files: name the file, keep the server up
        raise GalleryError(f"could not encode the gallery: {err}") from err
    ((bench, index, feats),) = evaluator.features()
    # Fresh features sit where Lightning encoded them (a GPU), cached ones on the CPU: the page ranks on the CPU.
    return Gallery(label, bench, index, Features(feats.image.cpu(), feats.text.cpu()), backbone)
