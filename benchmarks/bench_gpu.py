"""GPU figures (run through benchmarks/gpu.sh): TAT step samples/s and peak memory, and evaluation encoding throughput.

    python benchmarks/bench_gpu.py [--models ViT-B-32 ViT-L-14] [--batch-size 256] [--json OUT]
    python benchmarks/bench_gpu.py --smoke      # tiny CPU run that checks the script itself

TAT (LoRA r16 on the image tower, frozen text tower), random init, bf16-mixed,
in-memory batches of random 224 px images with tokenised captions or with
cached caption embeddings: cir.fit's Trainer vs the bare loop (same step),
alternating, median ratio; samples/s and torch.cuda.max_memory_allocated of the
Trainer runs. Evaluation: cir.eval.run.encode vs a plain inference loop on the
generated CIRR-layout val split with --eval-model (the evaluation CLI's float32).
"""

from __future__ import annotations

import statistics
import time

import common


def tat_figures(model: str, args, accelerator: str, device: str) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from cir.data.shards import ImageTextBatch

    steps = args.steps + args.warmup + 1
    precision = "bf16-mixed" if device == "cuda" else "32-true"
    cfg = common.fit_config(f"model.name={model}", "model.pretrained=none", f"data.batch_size={args.batch_size}",
                            "optim.warmup_steps=10", f"trainer.max_steps={steps}", f"trainer.accelerator={accelerator}",
                            f"trainer.precision={precision}", "trainer.log_every_n_steps=10")
    backbone = common.new_tat_module(cfg).backbone
    size = backbone.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    generator = torch.Generator().manual_seed(0)
    captions = [f"a photo of object {i} next to thing {i % 7}" for i in range(args.batch_size)]
    tokens = backbone.tokenize(captions)
    embeddings = torch.nn.functional.normalize(torch.randn(args.batch_size, backbone.embed_dim, generator=generator), dim=-1)
    skipped = torch.zeros(6, dtype=torch.long)
    figures: dict = {}
    for text_name, texts in (("tokens", tokens), ("cached", embeddings)):
        batches = [ImageTextBatch(torch.randn(args.batch_size, 3, size, size, generator=generator), texts, skipped) for _ in range(4)]
        peaks: list[float] = []

        def lightning(batches=batches, peaks=peaks) -> float:
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            loader = DataLoader(common.Cycle(batches, steps), batch_size=None)
            ends, samples = common.lightning_fit(cfg, common.new_tat_module(cfg), loader, common.BENCH_DIR / "gpu-runs" / f"{time.time_ns()}")
            if device == "cuda":
                peaks.append(torch.cuda.max_memory_allocated() / 2**30)
            return common.steady_rate(ends, samples, args.warmup)

        def bare(batches=batches) -> float:
            loader = DataLoader(common.Cycle(batches, steps), batch_size=None)
            module = common.new_tat_module(cfg)
            ends, samples = common.bare_loop(module, loader, steps, cfg, device=device, autocast="bf16" if device == "cuda" else None)
            del module
            return common.steady_rate(ends, samples, args.warmup)

        results = common.interleaved({"lightning": lightning, "bare": bare}, args.rounds)
        prefix = f"{model} TAT {text_name}, batch {args.batch_size}, {precision}"
        figures[f"{prefix}: samples/s (cir.fit Trainer, median)"] = statistics.median(results["lightning"])
        figures[f"{prefix}: Trainer / bare loop samples/s (median)"] = common.median_ratio(results["lightning"], results["bare"])
        if peaks:
            figures[f"{prefix}: peak GPU memory, GiB"] = max(peaks)
    return figures


def encode_figures(model: str, args, accelerator: str, device: str) -> dict:
    import torch

    from cir.data.benchmarks import load_benchmarks
    from cir.eval import run
    from cir.eval.evaluator import BenchmarkEvaluator
    from cir.models import create_backbone

    root = common.synth_data(4000, queries=args.eval_queries) / "cirr"
    (bench,) = load_benchmarks("cirr", str(root), "val")
    backbone = create_backbone(model, "none").to(device)
    trainer_kwargs = {"accelerator": accelerator, "devices": 1, "enable_progress_bar": False}

    def fresh() -> BenchmarkEvaluator:
        return BenchmarkEvaluator([bench], ["slerp"], [0.9], batch_size=args.eval_batch_size, num_workers=args.workers)

    items = len(fresh().entries[0].index.image_ids) + len(fresh().entries[0].index.texts)

    def ours() -> float:
        evaluator = fresh()
        began = time.perf_counter()
        run.encode(evaluator, backbone, trainer_kwargs)
        return items / (time.perf_counter() - began)

    def plain() -> float:
        evaluator = fresh()
        began = time.perf_counter()
        loaders = evaluator.dataloaders(backbone)
        backbone.eval()
        parts = []
        with torch.inference_mode():
            for loader, encode in zip(loaders, (backbone.encode_image, backbone.encode_text)):
                for rows, inputs in loader:
                    parts.append((rows, encode(inputs.to(device, non_blocking=True)).float().cpu()))
        return items / (time.perf_counter() - began)

    results = common.interleaved({"encode_ours": ours, "encode_plain": plain}, args.rounds)
    prefix = f"{model} evaluation encoding (float32, batch {args.eval_batch_size}, {args.workers} workers)"
    return {f"{prefix}: items/s (cir.eval.run.encode, median)": statistics.median(results["encode_ours"]),
            f"{prefix}: cir.eval.run.encode / plain loop (median)": common.median_ratio(results["encode_ours"], results["encode_plain"])}


def main() -> int:
    parser = common.arguments(__doc__, threads=4)
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-L-14"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eval-model", default="ViT-L-14")
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--eval-queries", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="cir-tiny on CPU with a few steps: checks the script, measures nothing")
    args = parser.parse_args()
    if args.smoke:
        args.models, args.eval_model, args.batch_size, args.eval_batch_size = ["cir-tiny"], "cir-tiny", 16, 64
        args.steps, args.warmup, args.rounds, args.workers, args.threads = 3, 1, 1, 0, 1
    common.pin_threads(args.threads)
    info = common.header("GPU: TAT step and evaluation encoding", args.threads)

    import torch

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --smoke for a CPU check of the script")
    accelerator = "gpu" if device == "cuda" else "cpu"
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        print(f"   gpu: {info['gpu']}", flush=True)
    figures: dict = {}
    for model in args.models:
        figures.update(tat_figures(model, args, accelerator, device))
    figures.update(encode_figures(args.eval_model, args, accelerator, device))
    overheads = [v for k, v in figures.items() if "Trainer / bare loop" in k]
    worst = min(overheads)
    return common.finish("gpu", info, figures, [
        (worst >= 0.97, f"worst Trainer / bare loop ratio {worst:.3f} (target: Lightning overhead <= 3%)")], args.json)


if __name__ == "__main__":
    raise SystemExit(main())
