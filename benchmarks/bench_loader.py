"""Shard loader images/s with 2 workers vs what the TAT training step consumes (target: the loader is not the bottleneck).

    python benchmarks/bench_loader.py [--rounds 4] [--batches 30] [--baseline REV] [--compare-float]

Per round, side by side, for captions as tokens and as cached embeddings:
  loader_*   image_text_loader over the generated shards (resampled, 2 workers), no training
  step_*     cir.fit's Trainer running the TAT step on in-memory batches (what the step consumes)
  fit_*      cir.fit's Trainer fed by the real DataModule with 2 workers (what training gets)
With --baseline REV, loader_*_REV runs cir/data/shards.py as it is at git revision
REV, so a change to the loader is measured against its predecessor in the same run.
With --compare-float, loader_*_float runs the loader with open_clip's float transform
(what training used before cir.data.transforms) beside the uint8 one.
First, each loading stage's share of a sample's cost (single process, embedded shards),
to show where a worker's time goes, and the tar parsing cost of embedded shards against their source.
"""

from __future__ import annotations

import gc
import time

import common


def loader_rate(shards_module, urls: list[str], backbone, batch_size: int, batches: int, warmup: int, key: str | None,
                transform=None) -> float:
    pipeline = shards_module.image_text_pipeline(
        urls, image_transform=transform or common.training_images(backbone), tokenize=None if key else backbone.tokenize, batch_size=batch_size,
        resampled=True, samples_per_epoch=(batches + warmup + 1) * batch_size, text_embedding_key=key)
    loader = shards_module.image_text_loader(pipeline, num_workers=2)
    ends, samples = [], []
    for batch in loader:
        ends.append(time.perf_counter())
        samples.append(batch.images.shape[0])
    del loader
    gc.collect()  # shut the persistent workers down here, not in a later fork of this process
    return common.steady_rate(ends, samples, warmup)


def tar_parse_ratio(a: list[str], b: list[str], repeats: int = 3) -> float:
    """Tar parsing time per sample of shards `a` over shards `b` (webdataset's tarfile_to_samples, one shard each)."""
    import webdataset as wds

    def per_sample(urls: list[str]) -> float:
        runs = []
        for _ in range(repeats):
            began = time.perf_counter()
            count = sum(1 for _ in wds.DataPipeline(wds.SimpleShardList(urls[:1]), wds.tarfile_to_samples()))
            runs.append((time.perf_counter() - began) / count)
        return min(runs)

    return per_sample(a) / per_sample(b)


def stage_shares(urls: list[str], key: str, backbone, repeats: int = 3) -> dict[str, float]:
    """Share of one sample's loading cost per stage, single process: where a loader worker's time goes."""

    import webdataset as wds

    from cir.data.samples import NpyReader
    from cir.data.transforms import decode_rgb

    samples = list(wds.DataPipeline(wds.SimpleShardList(urls[:1]), wds.tarfile_to_samples()))
    images = [decode_rgb(s["png"]) for s in samples]
    transform = common.training_images(backbone)
    captions = [s["txt"].decode() for s in samples]
    reader = NpyReader()
    stages = {
        "tar parsing (webdataset)": lambda: list(wds.DataPipeline(wds.SimpleShardList(urls[:1]), wds.tarfile_to_samples())),
        "image decode (decode_rgb)": lambda: [decode_rgb(s["png"]) for s in samples],
        "image transform (open_clip's crop in uint8, cir.data.transforms)": lambda: [transform.resized_crop(i) for i in images],
        "caption tokenisation (per batch of 128)": lambda: [backbone.tokenize(captions[i : i + 128]) for i in range(0, len(captions), 128)],
        "cached embedding read (NpyReader)": lambda: [reader.load(s[key]) for s in samples],
    }
    best = {}
    for name, fn in stages.items():
        runs = []
        for _ in range(repeats):
            began = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - began)
        best[name] = min(runs)
    total = sum(best.values())
    return {f"share of per-sample loading cost: {name}, %": 100 * t / total for name, t in best.items()}


def main() -> int:
    parser = common.arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per run (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--baseline", help="git revision whose cir/data/shards.py to measure side by side")
    parser.add_argument("--compare-float", action="store_true",
                        help="also run the loader with open_clip's float transform (before cir.data.transforms)")
    args = parser.parse_args()
    common.pin_threads(args.threads)
    info = common.header("Shard loader (2 workers) vs TAT step consumption", args.threads)

    import lightning as L
    from torch.utils.data import DataLoader

    import cir.data.shards as current
    from cir.data.embed_text import load_text_embedding_meta
    from cir.tasks.tat import build

    weights = common.saved_backbone("cir-tiny")
    shards = common.tune_shards(common.synth_data(4000))
    meta = load_text_embedding_meta(common.embedded_shards(shards, weights))
    steps = args.batches + args.warmup + 1
    base = ["model.name=cir-tiny", f"model.pretrained={weights}", f"data.batch_size={args.batch_size}", "data.num_workers=2",
            "optim.warmup_steps=10", f"trainer.max_steps={steps}"]
    sources = {"tokens": (shards, None, [f"data.train_shards={'::'.join(shards)}"]),
               "cached": (meta.urls, meta.key, [f"data.text_embeddings={meta.directory}"])}
    scratch = common.BENCH_DIR / "loader-runs"
    backbone = common.new_tat_module(common.fit_config(*base)).backbone
    modules = {"": current}
    if args.baseline:
        modules[f"_{args.baseline}"] = common.module_at(args.baseline, "cir/data/shards.py", "baseline_shards")

    contenders = {}
    for text, (urls, key, data_keys) in sources.items():
        for suffix, module in modules.items():
            contenders[f"loader_{text}{suffix}"] = (
                lambda m=module, u=urls, k=key: loader_rate(m, u, backbone, args.batch_size, args.batches, args.warmup, k))
        if args.compare_float:
            contenders[f"loader_{text}_float"] = (lambda u=urls, k=key: loader_rate(
                current, u, backbone, args.batch_size, args.batches, args.warmup, k, backbone.preprocess_train))
        cfg = common.fit_config(*base, *data_keys)
        memory = common.memory_batches(urls, backbone, args.batch_size, 8, key, common.training_images(backbone))

        def step(cfg=cfg, memory=memory) -> float:
            loader = DataLoader(common.Cycle(memory, steps), batch_size=None, num_workers=0)
            ends, samples = common.lightning_fit(cfg, common.new_tat_module(cfg), loader, scratch / f"step-{time.time_ns()}")
            return common.steady_rate(ends, samples, args.warmup)

        def fit(text=text) -> float:
            cfg = common.fit_config(*base, *sources[text][2], "data.resampled=true", f"data.samples_per_epoch={steps * args.batch_size}")
            L.seed_everything(0, workers=True, verbose=False)
            module, data = build(cfg)
            ends, samples = common.lightning_fit(cfg, module, data, scratch / f"fit-{time.time_ns()}")
            return common.steady_rate(ends, samples, args.warmup)

        contenders[f"step_{text}"] = step
        contenders[f"fit_{text}"] = fit

    figures: dict = stage_shares(meta.urls, meta.key, backbone)
    figures["tar parsing per sample, embed_text's shards / their source shards"] = tar_parse_ratio(meta.urls, shards)
    results = common.interleaved(contenders, args.rounds)
    verdicts = []
    for text in sources:
        ratio = common.median_ratio(results[f"loader_{text}"], results[f"step_{text}"])
        fed = common.median_ratio(results[f"fit_{text}"], results[f"step_{text}"])
        figures[f"{text}: loader images/s / step samples/s (median)"] = ratio
        figures[f"{text}: training fed by the loader / on in-memory batches (median)"] = fed
        if args.compare_float:
            figures[f"{text}: loader images/s, uint8 / float transform (median)"] = common.median_ratio(
                results[f"loader_{text}"], results[f"loader_{text}_float"])
        for suffix in list(modules)[1:]:
            figures[f"{text}: loader images/s, this tree / {suffix[1:]} (median)"] = common.median_ratio(
                results[f"loader_{text}"], results[f"loader_{text}{suffix}"])
        verdicts.append((ratio >= 1.0, f"{text}: the loader delivers {ratio:.2f}x what the step consumes (target >= 1x)"))
    figures["loader images/s, cached / tokens (median)"] = common.median_ratio(results["loader_cached"], results["loader_tokens"])
    figures["in-memory step samples/s, cached / tokens (median)"] = common.median_ratio(results["step_cached"], results["step_tokens"])
    figures.update({"rounds": args.rounds, "timed batches per run": args.batches, "batch size": args.batch_size})
    return common.finish("loader", info, figures, verdicts, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
