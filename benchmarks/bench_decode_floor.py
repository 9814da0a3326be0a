"""The training loader's CPU time per sample against its floor (decode + crop + resize), on 256 px JPEG photos.

    python benchmarks/bench_decode_floor.py [--rounds 3] [--samples 1000] [--before c0420ee]

Data: benchmarks/photos.py, 4 img2dataset-layout shards of 1,000 distinct 256 px
JPEGs (quality 95) made from scikit-image's photos (`pip install -e .[bench]`),
and their copy with cached caption embeddings (cir.data.embed_text, cir-tiny).
Transform: open_clip's training transform for ViT-B-32 at 224 px (PreprocessCfg
from its model config: OpenAI mean / std, bicubic; AugmentationCfg defaults:
RandomResizedCrop scale 0.9-1), as open_clip (`old`), and its uint8 version that
cir now trains with (`new`, cir.data.transforms; normalised per batch on the device).
Tokens: the tokenizer a ViT-B/32 backbone of the measured cir uses (open_clip's
SimpleTokenizer up to 472df7a, then cir.models.clip_tokenizer: the same ids).

Every figure is CPU time (time.process_time, one thread; workers through
/proc) divided by the CPU time of the floor: reading the same JPEGs' headers
(PIL), decoding them (TorchCodec) and making their random crop at 224 px
(torchvision's draw, torch's uint8 antialiased resize), what no loader can skip;
median over rounds:
  stages   single process, per sample: tar parsing, decode, transform, collate
           (batches of 128, tokens or cached embeddings), transfer (the batch's
           trip from a worker to the main process through shared memory), and
           for `new` the per-batch normalisation (on the GPU in training; here
           on the CPU, listed apart)
  loader   the real loader (image_text_loader, 2 workers, resampled), all CPU
           of the workers and the main process (/proc) per sample delivered, in
           the steady state (worker start and epoch end left out); without the
           shuffle buffer, whose fill (up to 1,000 samples parsed ahead per worker
           and epoch) is nothing in a real epoch but a large share of a short run.
           Its floor is measured over the very same window, by a process that
           runs the floor over the shard's JPEGs in a loop beside the loader: this
           machine's speed drifts by 20-40 % within seconds, so a floor measured
           before or after the loader's window (the stages) does not divide it
  before   the same loader at git revision --before (default c0420ee: torchvision's
           decode, crops from the workers' global RNG), imported from a worktree of
           that revision; both loaders run in child processes, in the same rounds
Target: the loader's CPU per sample at most 1.25x the floor (decode + crop + resize).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import itertools
import multiprocessing
import os
import pickle
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import common

TARGET = 1.25
BATCH = 128


def floor_sample(jpeg: bytes, crop):
    """The floor for one sample: PIL's header read (every loader checks the size before decoding), TorchCodec's
    decode, the random crop's draw (torchvision's get_params) and torch's uint8 antialiased resize (channels-last,
    its vectorised kernel). Written here, not taken from cir, so that every revision measured has the same floor."""
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torchcodec.decoders import decode_jpeg
    from torchvision.transforms import RandomResizedCrop

    with Image.open(io.BytesIO(jpeg)) as header:
        header.size  # noqa: B018 - the read is the point
    pixels = decode_jpeg(jpeg)
    top, left, height, width = RandomResizedCrop.get_params(pixels, list(crop.scale), list(crop.ratio))
    patch = pixels[None, :, top : top + height, left : left + width].contiguous(memory_format=torch.channels_last)
    return F.interpolate(patch, size=list(crop.size), mode="bicubic", antialias=True)


def _floor_loop(jpegs: list[bytes], crop, counters) -> None:
    """Run the floor over `jpegs` forever, publishing (samples, CPU seconds) after each sample, the count last."""
    for count, jpeg in enumerate(itertools.cycle(jpegs), 1):
        floor_sample(jpeg, crop)
        counters[1] = time.process_time()
        counters[0] = count


class ConcurrentFloor:
    """The floor's CPU per sample over a window of the loader's run, measured beside it by a forked process."""

    def __init__(self, jpegs: list[bytes], crop) -> None:
        context = multiprocessing.get_context("fork")
        self.counters = context.Array("d", 2, lock=False)  # samples, CPU seconds (the sample count is written last)
        self.process = context.Process(target=_floor_loop, args=(jpegs, crop, self.counters), daemon=True)
        self.process.start()

    def read(self) -> tuple[float, float]:
        return self.counters[0], self.counters[1]

    def close(self) -> None:
        self.process.terminate()
        self.process.join()


def cpu(fn: Callable[[], object], repeats: int) -> float:
    """Least CPU seconds of `repeats` calls (the least disturbed by other jobs on the core)."""
    best = float("inf")
    for _ in range(repeats):
        began = time.process_time()
        fn()
        best = min(best, time.process_time() - began)
    return best


def tree_cpu(leave_out: int | None = None) -> float:
    """CPU seconds of this process and its live children (DataLoader workers) but `leave_out`, from /proc."""
    pid = os.getpid()
    total = time.process_time()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if int(child) == leave_out:
            continue
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def transfer(batch) -> None:
    """A batch's trip from a DataLoader worker to the main process: storage into shared memory, pickled, rebuilt."""
    pickle.loads(bytes(ForkingPickler.dumps(batch)))


@contextlib.contextmanager
def as_worker():
    """Make this process look like a DataLoader worker to torch's default_collate (which cir's collate uses), so
    batches are stacked into shared memory as in the real loader and `transfer` costs what a worker's batch costs."""
    from torch.utils.data._utils import worker

    worker._worker_info = worker.WorkerInfo(id=0, num_workers=1, seed=0, dataset=None)
    try:
        yield
    finally:
        worker._worker_info = None


def vit_b32_transform():
    """ViT-B/32's training transform (open_clip's) and the tokenizer a ViT-B/32 backbone of the imported cir uses."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from cir.models.factory import _tokenizer

    config = open_clip.get_model_config("ViT-B-32")
    preprocess = PreprocessCfg(size=config["vision_cfg"]["image_size"], **(config.get("preprocess_cfg") or {}))
    return image_transform_v2(preprocess, is_train=True), _tokenizer("ViT-B-32", None)


def stage_costs(samples: list[dict], old, new, tokenize, key: str, url: str, repeats: int) -> dict[str, float]:
    """CPU seconds per sample of each loading stage, single process."""


    with as_worker():
        return _stage_costs(samples, old, new, tokenize, key, url, repeats)


def _stage_costs(samples: list[dict], old, new, tokenize, key: str, url: str, repeats: int) -> dict[str, float]:
    import torch
    import webdataset as wds
    from PIL import Image

    from cir.data.images import load_rgb
    from cir.data.samples import NpyReader, collate
    from cir.data.transforms import decode_rgb

    jpegs = [s["jpg"] for s in samples]
    n = len(jpegs)
    pil = [load_rgb(io.BytesIO(j)) for j in jpegs]
    pixels = [decode_rgb(j) for j in jpegs]
    captions = [s["txt"].decode() for s in samples]
    reader = NpyReader()
    embeddings = [torch.from_numpy(reader.load(s[key]).astype("float32")) for s in samples]
    old_images = [old(p) for p in pil]
    new_images = [new.resized_crop(p) for p in pixels]
    zero = torch.zeros(6, dtype=torch.long)

    def batches(images, texts, tokens: bool):
        return [collate([(i, t, zero) for i, t in zip(images[k : k + BATCH], texts[k : k + BATCH])], tokenize if tokens else None)
                for k in range(0, n, BATCH)]

    made = {(kind, text): batches(images, texts, text == "tokens")
            for kind, images in (("old", old_images), ("new", new_images))
            for text, texts in (("tokens", captions), ("cached", embeddings))}
    in_shard = sum(1 for _ in wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples()))
    stages = {
        "PIL decode (reference)": lambda: [Image.open(io.BytesIO(j)).convert("RGB") for j in jpegs],
        "tar parsing (webdataset)": lambda: list(wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples())),
        "old decode (load_rgb, PIL)": lambda: [load_rgb(io.BytesIO(j)) for j in jpegs],
        "old transform (open_clip, float)": lambda: [old(p) for p in pil],
        "floor: decode + crop + resize": lambda: [floor_sample(j, old.transforms[0]) for j in jpegs],
        "new decode (decode_rgb, TorchCodec)": lambda: [decode_rgb(j) for j in jpegs],
        "new transform (uint8 crop + resize)": lambda: [new.resized_crop(p) for p in pixels],
        "cached embedding read (NpyReader)": lambda: [reader.load(s[key]) for s in samples],
    }
    for (kind, text), made_batches in made.items():
        texts = captions if text == "tokens" else embeddings
        images = old_images if kind == "old" else new_images
        stages[f"{kind} collate, {text}"] = lambda i=images, t=texts, tok=text == "tokens": batches(i, t, tok)
        stages[f"{kind} transfer, {text}"] = lambda b=made_batches: [transfer(x) for x in b]
    stages["new normalisation per batch (on the device in training)"] = lambda: [new.to_float(b.images) for b in made["new", "cached"]]
    costs = {name: cpu(fn, repeats) / n for name, fn in stages.items()}
    costs["tar parsing (webdataset)"] *= n / in_shard  # it parses the whole shard
    return costs


def loader_cost(urls: list[str], transform, tokenize, key: str | None, samples: int, floor: ConcurrentFloor,
                warmup: int = 3) -> tuple[float, float]:
    """Steady-state CPU seconds (2 workers + main process) per sample delivered by image_text_loader, and the
    floor's per sample over the same window (measured beside it by `floor`).

    Counted from the delivery of batch `warmup` to that of the last but one: worker start and the end of the
    epoch are left out, and the workers are as busy at both ends of the window (they are the bottleneck).
    """
    from cir.data.shards import image_text_loader, image_text_pipeline

    pipeline = image_text_pipeline(urls, image_transform=transform, tokenize=None if key else tokenize, batch_size=BATCH,
                                   resampled=True, samples_per_epoch=samples, text_embedding_key=key, shuffle_buffer=0)
    loader = image_text_loader(pipeline, num_workers=2)
    last = len(loader) - 2
    if last <= warmup:
        raise ValueError(f"--loader-samples {samples} gives {len(loader)} batches; need more than {warmup + 2}")
    delivered, began, ended = 0, 0.0, 0.0
    floor_began = floor_ended = (0.0, 0.0)
    for i, batch in enumerate(loader):
        if i == warmup:
            began, floor_began = tree_cpu(leave_out=floor.process.pid), floor.read()
        elif warmup < i <= last:
            delivered += batch.images.shape[0]
            if i == last:
                ended, floor_ended = tree_cpu(leave_out=floor.process.pid), floor.read()
    del loader
    gc.collect()  # shut the persistent workers down here, not in a later fork of this process
    floor_samples = floor_ended[0] - floor_began[0]
    if floor_samples < 100:
        raise RuntimeError(f"the floor beside the loader ran only {floor_samples:.0f} samples in its window")
    return (ended - began) / delivered, (floor_ended[1] - floor_began[1]) / floor_samples


def before_tree(rev: str) -> Path:
    """A worktree of `rev` under the benchmark folder (made once), whose cir a child process imports."""
    tree = common.BENCH_DIR / "baseline" / f"tree-{rev}"
    if not (tree / "cir").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tree), rev], cwd=common.REPO, check=True, capture_output=True)
    return tree


def loader_in(tree: Path, text: str, loader_samples: int, threads: int) -> tuple[float, float]:
    """us per sample of the loader as `tree` has it (this file's loader_cost, that tree's cir) and of the floor beside
    it, in a child process: before and after alike, so neither forks its workers from this process (large after the
    stage runs)."""
    env = {**common.child_env(threads), "PYTHONPATH": f"{tree}:{Path(__file__).parent}"}
    proc = subprocess.run([sys.executable, __file__, "--loader-child", text, "--loader-samples", str(loader_samples)],
                          check=True, capture_output=True, text=True, env=env, cwd=tree)
    loader, floor = proc.stdout.strip().splitlines()[-1].split()
    return float(loader), float(floor)


def loader_child(text: str, loader_samples: int) -> int:
    """--loader-child: print the loader's us per sample with whatever cir this process imports, and the floor's."""
    import photos
    import webdataset as wds

    from cir.data.embed_text import load_text_embedding_meta
    from cir.data.transforms import uint8_version

    shards = photos.photo_shards(4000, 1000)
    meta = load_text_embedding_meta(common.embedded_shards(shards, common.saved_backbone("cir-tiny")))
    old, tokenize = vit_b32_transform()
    urls, key = (shards, None) if text == "tokens" else (meta.urls, meta.key)
    jpegs = [s["jpg"] for s in wds.DataPipeline(wds.SimpleShardList(shards[:1]), wds.tarfile_to_samples())]
    floor = ConcurrentFloor(jpegs, old.transforms[0])
    try:
        loader, floor_cost = loader_cost(urls, uint8_version(old), tokenize, key, loader_samples, floor)
    finally:
        floor.close()
    print(loader * 1e6, floor_cost * 1e6)
    return 0


def main() -> int:
    parser = common.arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000, help="samples per stage measurement (one shard's worth)")
    parser.add_argument("--loader-samples", type=int, default=6144, help="samples per run of the real loader")
    parser.add_argument("--repeats", type=int, default=2, help="repeats per stage measurement (least CPU kept)")
    parser.add_argument("--before", default="c0420ee", help="git revision whose loader is measured side by side")
    parser.add_argument("--loader-child", choices=["tokens", "cached"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.pin_threads(args.threads)
    if args.loader_child:
        return loader_child(args.loader_child, args.loader_samples)
    info = common.header("Training loader vs its floor: decode + crop + resize (256 px photos, 224 px input)", args.threads)

    import photos
    import webdataset as wds

    from cir.data.embed_text import load_text_embedding_meta
    from cir.data.transforms import uint8_version

    shards = photos.photo_shards(4000, 1000)
    meta = load_text_embedding_meta(common.embedded_shards(shards, common.saved_backbone("cir-tiny")))
    old, tokenize = vit_b32_transform()
    new = uint8_version(old)
    samples = list(wds.DataPipeline(wds.SimpleShardList(meta.urls[:1]), wds.tarfile_to_samples()))[: args.samples]
    jpeg_bytes, width, height = photos.jpeg_sizes(shards[:1])
    tree = before_tree(args.before)
    print(f"   data: {len(shards)} shards, mean JPEG {jpeg_bytes / 1000:.1f} kB, {width:.0f} x {height:.0f} px; "
          f"before: {args.before} ({tree}); transform {old}", flush=True)

    stage_rounds: list[dict[str, float]] = []

    def stages() -> float:
        stage_rounds.append(stage_costs(samples, old, new, tokenize, meta.key, meta.urls[0], args.repeats))
        return stage_rounds[-1]["floor: decode + crop + resize"] * 1e6

    loader_runs: dict[str, list[tuple[float, float]]] = {}

    def loader_ratio(name: str, where: Path, text: str) -> float:
        loader, floor = loader_in(where, text, args.loader_samples, args.threads)
        loader_runs.setdefault(name, []).append((loader, floor))
        print(f"  {name}: loader {loader:.0f} us/sample, the floor beside it {floor:.0f}", flush=True)
        return loader / floor

    contenders: dict[str, Callable[[], float]] = {"stages (floor, us/sample)": stages}
    for text in ("tokens", "cached"):
        for when, where in (("after", common.REPO), ("before", tree)):
            name = f"loader {when} {text}"
            contenders[f"{name} / its floor"] = lambda n=name, w=where, t=text: loader_ratio(n, w, t)
    results = common.interleaved(contenders, args.rounds)

    figures: dict = {}
    for name in stage_rounds[0]:
        figures[f"stage / floor: {name}"] = statistics.median(r[name] / r["floor: decode + crop + resize"] for r in stage_rounds)
    verdicts = []
    for text in ("tokens", "cached"):
        for when in ("before", "after"):
            figures[f"loader (2 workers, all CPU) / floor beside it: {when}, {text}"] = statistics.median(
                results[f"loader {when} {text} / its floor"])
        ratio = figures[f"loader (2 workers, all CPU) / floor beside it: after, {text}"]
        verdict = (f"{text}: the loader costs {ratio:.2f}x its floor (decode + crop + resize) per sample in CPU, "
                   f"the floor measured beside it (target <= {TARGET}x)")
        verdicts.append((ratio <= TARGET, verdict))
    figures["floor, us per sample (median of the stage runs)"] = statistics.median(results["stages (floor, us/sample)"])
    figures["floor beside the loaders, us per sample (median)"] = statistics.median(f for runs in loader_runs.values() for _, f in runs)
    figures.update({"rounds": args.rounds, "stage samples": len(samples), "loader samples per run": args.loader_samples,
                    "mean JPEG kB": jpeg_bytes / 1000, "mean width": width, "mean height": height})
    return common.finish("decode_floor", info, figures, verdicts, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
