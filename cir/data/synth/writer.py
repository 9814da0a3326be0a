"""Write the generated benchmark: WebDataset shards for pretraining / TAT and a CIRR-layout CIR benchmark.

    <out>/shards/{pretrain,tune}-NNNNNN.tar   keys: png, txt (caption), json (scene attributes)
    <out>/shards/manifest.json                sample counts and brace patterns of the shard URLs
    <out>/cirr/cirr/captions/cap.rc2.{train,val,test1}.json
    <out>/cirr/cirr/image_splits/split.rc2.{train,val,test1}.json
    <out>/cirr/{train/<n>,dev,test1}/<name>.png
    <out>/cirr/attributes.json                image name -> scene attributes
    <out>/cirr/gap_pairs/{train,val,test1}.jsonl  per gallery image {"image": path relative to gap_pairs/,
                                              "caption": pretraining-style caption}: eval.gap_pairs
    <out>/synth-complete.json                 completion marker, written last

Every image draws its jitter and noise from its own random stream keyed by
(seed, stage, index), so the output depends only on the seed and the sizes.
A rerun with the marker's seed and sizes returns at once; any other run
deletes shards/, cirr/ and the marker first, so a half-written dataset never
looks complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import webdataset as wds
from tqdm import tqdm

from cir.data.retrieval_benchmarks import load_benchmarks
from cir.data.retrieval_benchmarks.cirr import CIRR_VERSION
from cir.data.synth.captions import pretrain_caption, tune_caption
from cir.data.synth.queries import SceneSplit, build_split
from cir.data.synth.scenes import RenderStyle, Scene, encode_png, random_scene, render
from cir.io import atomic_write_text, write_json

FORMAT_VERSION = 2  # 2: cirr/gap_pairs/
MARKER = "synth-complete.json"
# (split, image folder / name prefix, stream id): CIRR names its val images "dev-...".
CIRR_SPLITS = (("train", "train", 3), ("val", "dev", 4), ("test1", "test1", 5))
_FIRST_PAIRID = 1
_TRAIN_FOLDER_SIZE = 1000  # CIRR spreads train images over numbered subfolders


@dataclass(frozen=True)
class ShardSet:
    """How one image-text set is sampled, captioned and drawn; the two sets differ on purpose (see captions)."""

    name: str
    stream: int
    two_object_rate: float
    caption: Callable[[Scene, np.random.Generator], str]
    style: RenderStyle


SHARD_SETS = (
    ShardSet("pretrain", 1, 0.2, pretrain_caption, RenderStyle()),
    ShardSet("tune", 2, 0.4, tune_caption, RenderStyle(shade=24.0, noise=10.0)),
)
BENCHMARK_STYLE = RenderStyle()


@dataclass(frozen=True)
class SynthSizes:
    image_size: int = 32
    pretrain_samples: int = 4000
    tune_samples: int = 2000
    train_queries: int = 500
    val_queries: int = 1000
    test_queries: int = 300
    shard_size: int = 1000
    multi_object_rate: float = 0.2
    pretrain_captions: int = 1  # captions per pretraining image: the text tower sees that many more texts than images

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "multi_object_rate":
                if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                    raise ValueError(f"multi_object_rate must be a number in [0, 1], got {value!r}")
                continue
            smallest = 8 if item.name == "image_size" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < smallest:
                raise ValueError(f"{item.name} must be an integer >= {smallest}, got {value!r}")


def generate(out: str | Path, seed: int = 0, *, progress: bool = True, **sizes: Any) -> dict[str, Any]:
    """Write (or find complete) the benchmark under `out`; returns the shard manifest.

    `sizes` are the fields of SynthSizes (image_size, pretrain_samples,
    tune_samples, train_queries, val_queries, test_queries, shard_size,
    multi_object_rate, pretrain_captions). Manifest patterns are relative to <out>/shards
    (`shard_urls` makes them absolute).
    """
    valid = [item.name for item in fields(SynthSizes)]
    unknown = sorted(set(sizes) - set(valid))
    if unknown:
        raise TypeError(f"unknown size argument(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    settings = SynthSizes(**sizes)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out).expanduser()
    marker = out / MARKER
    manifest_path = out / "shards" / "manifest.json"
    wanted = {"format": FORMAT_VERSION, "seed": seed, "sizes": asdict(settings)}
    if marker.is_file() and manifest_path.is_file() and json.loads(marker.read_text(encoding="utf-8")) == wanted:
        return json.loads(manifest_path.read_text(encoding="utf-8"))

    marker.unlink(missing_ok=True)
    for folder in ("shards", "cirr"):
        shutil.rmtree(out / folder, ignore_errors=True)
    shards = out / "shards"
    shards.mkdir(parents=True)
    manifest: dict[str, Any] = {**wanted, "shards": {}, "cirr": {}}
    for shard_set in SHARD_SETS:
        count, captions = set_sizes(settings)[shard_set.name]
        manifest["shards"][shard_set.name] = _write_shards(shards, shard_set, count, captions, seed, settings, progress)
    queries = {"train": settings.train_queries, "val": settings.val_queries, "test1": settings.test_queries}
    manifest["cirr"] = _write_cirr(out / "cirr", queries, seed, settings, progress)
    write_json(manifest_path, manifest)
    write_json(marker, wanted)
    return manifest


def shard_urls(out: str | Path, set_name: str) -> str:
    """Absolute brace pattern of one set's shards, for webdataset.WebDataset."""
    manifest = json.loads((Path(out) / "shards" / "manifest.json").read_text(encoding="utf-8"))
    if set_name not in manifest["shards"]:
        raise KeyError(f"no shard set {set_name!r} in {out}; sets: {', '.join(manifest['shards'])}")
    return str(Path(out).expanduser().resolve() / "shards" / manifest["shards"][set_name]["pattern"])


def set_sizes(settings: SynthSizes) -> dict[str, tuple[int, int]]:
    """Each shard set's images and captions per image (each image is written once per caption)."""
    return {"pretrain": (settings.pretrain_samples, settings.pretrain_captions), "tune": (settings.tune_samples, 1)}


def shard_count(set_name: str, settings: SynthSizes) -> int:
    count, captions = set_sizes(settings)[set_name]
    return math.ceil(count * captions / settings.shard_size)


def shard_pattern(set_name: str, settings: SynthSizes) -> str:
    """One set's brace pattern relative to <out>/shards, known from the sizes alone (before the shards exist)."""
    return f"{set_name}-{{000000..{shard_count(set_name, settings) - 1:06d}}}.tar"


def _write_shards(
    folder: Path, shard_set: ShardSet, count: int, captions: int, seed: int, settings: SynthSizes, progress: bool
) -> dict[str, Any]:
    """`count` images, each written `captions` times with its own caption: all images once, then again, so that
    copies of one image sit `count` samples apart in the stream (not in one shuffled batch, as false negatives)."""
    pattern = str(folder / f"{shard_set.name}-%06d.tar")
    total = count * captions
    with wds.ShardWriter(pattern, maxcount=settings.shard_size, verbose=0, mtime=0) as sink:
        for sample in tqdm(range(total), desc=f"{shard_set.name} shards", unit="img", disable=not progress):
            copy, index = divmod(sample, count)
            rng = np.random.default_rng([seed, shard_set.stream, index])
            scene = random_scene(rng, shard_set.two_object_rate)
            pixels = render(scene, rng, settings.image_size, shard_set.style)
            text_rng = rng if copy == 0 else np.random.default_rng([seed, shard_set.stream, index, copy])
            sink.write(
                {
                    "__key__": f"{shard_set.name}-{sample:07d}",
                    "png": encode_png(pixels),
                    "txt": shard_set.caption(scene, text_rng),
                    "json": _dumps(scene.to_dict()).encode("utf-8"),
                }
            )
    return {
        "samples": total,
        "shards": shard_count(shard_set.name, settings),
        "pattern": shard_pattern(shard_set.name, settings),
        "two_object_rate": shard_set.two_object_rate,
    }


def _write_cirr(
    root: Path, queries: dict[str, int], seed: int, settings: SynthSizes, progress: bool
) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    pairid = _FIRST_PAIRID
    for split, prefix, stream in CIRR_SPLITS:
        rng = np.random.default_rng([seed, 100 + stream])
        scenes = build_split(rng, queries[split], settings.multi_object_rate)
        names = _write_split_images(root, split, prefix, stream, scenes, seed, settings, progress)
        attributes.update({name: scene.to_dict() for scene, name in names.items()})
        entries = _caption_entries(scenes, names, rng, pairid, labelled=split != "test1")
        pairid += len(entries)
        captions = root / "cirr" / "captions"
        captions.mkdir(parents=True, exist_ok=True)
        write_json(captions / f"cap.{CIRR_VERSION}.{split}.json", entries)
        summary[split] = {
            "queries": len(entries),
            "images": len(names),
            "two_object_images": sum(scene.count == 2 for scene in names),
        }
    write_json(root / "attributes.json", attributes)
    _write_gap_pairs(root, attributes, seed)
    return {"root": "cirr", "splits": summary, "images": "disjoint per split, scenes shared"}


def _write_split_images(
    root: Path, split: str, prefix: str, stream: int, scenes: SceneSplit, seed: int,
    settings: SynthSizes, progress: bool,
) -> dict[Scene, str]:
    """Render each gallery scene once, in a shuffled order so names say nothing about attributes."""
    order = np.random.default_rng([seed, 200 + stream]).permutation(len(scenes.gallery))
    names: dict[Scene, str] = {}
    paths: dict[str, str] = {}
    for rank in tqdm(range(len(order)), desc=f"cirr {split} images", unit="img", disable=not progress):
        scene = scenes.gallery[order[rank]]
        name = f"{prefix}-{rank:05d}"
        folder = f"{prefix}/{rank // _TRAIN_FOLDER_SIZE}" if split == "train" else prefix
        (root / folder).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, stream, rank])
        (root / folder / f"{name}.png").write_bytes(encode_png(render(scene, rng, settings.image_size, BENCHMARK_STYLE)))
        names[scene] = name
        paths[name] = f"./{folder}/{name}.png"
    splits = root / "cirr" / "image_splits"
    splits.mkdir(parents=True, exist_ok=True)
    write_json(splits / f"split.{CIRR_VERSION}.{split}.json", paths)
    return names


def _write_gap_pairs(root: Path, attributes: dict[str, Any], seed: int) -> None:
    """Held-out image-caption pairs for cir.evaluate's modality gap: every gallery image of a split, in gallery
    order, with a pretraining-style caption from a fresh generator per split seeded with `seed` (the pairs the
    demo measured before the gap moved into cir.evaluate, so its numbers stay comparable)."""
    folder = root / "gap_pairs"
    for split, _, _ in CIRR_SPLITS:
        (bench,) = load_benchmarks("cirr", root, split)
        rng = np.random.default_rng(seed)
        lines = [
            json.dumps({
                "image": Path(os.path.relpath(bench.image_path(name), folder)).as_posix(),
                "caption": pretrain_caption(Scene.from_dict(attributes[name]), rng),
            })
            + "\n"
            for name in bench.gallery
        ]
        atomic_write_text(folder / f"{split}.jsonl", "".join(lines))


def _caption_entries(
    scenes: SceneSplit, names: dict[Scene, str], rng: np.random.Generator, first_pairid: int, labelled: bool
) -> list[dict[str, Any]]:
    """CIRR rc2 entries; test1 hides target_hard, target_soft and target_rank as the official file does."""
    entries = []
    for offset, query in enumerate(scenes.queries):
        members = [names[s] for s in (query.reference, query.target, *query.distractors)]
        if len(set(members)) != len(members):
            raise RuntimeError(f"img_set of pair {first_pairid + offset} repeats a member: {members}")
        members = [members[i] for i in rng.permutation(len(members))]
        reference, target = names[query.reference], names[query.target]
        entry: dict[str, Any] = {"pairid": first_pairid + offset, "reference": reference}
        if labelled:
            entry["target_hard"] = target
            entry["target_soft"] = {target: 1.0}
        entry["caption"] = query.caption
        img_set: dict[str, Any] = {"id": first_pairid + offset, "members": members}
        img_set["reference_rank"] = members.index(reference)
        if labelled:
            img_set["target_rank"] = members.index(target)
        entry["img_set"] = img_set
        entries.append(entry)
    return entries


def _dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True)
