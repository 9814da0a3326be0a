"""GPU figures (run through benchmarks/gpu.sh): TAT step throughput and MFU, largest batch, data path, evaluation.

    python benchmarks/bench_gpu.py [--json OUT.json] [--markdown OUT.md] [--parts step batch loader eval]
    python benchmarks/bench_gpu.py --smoke      # cir-tiny on CPU at tiny sizes: checks the script, measures nothing

step:   TAT (LoRA r16 on the image tower, random init, bf16 autocast) on in-memory device batches of 224 px images,
        ViT-B-32 and ViT-L-14: captions as tokens, cached caption embeddings, cached + gradient checkpointing, cached +
        torch.compile of the image tower, each timed in turns with the same module (bare loop: features, ClipLoss,
        backward, AdamW); cir.fit's Trainer / bare loop on the cached variant; MFU = samples/s x model FLOPs per
        sample (cir.throughput, meta-device count) / the GPU's dense bf16 peak (cir.throughput.PEAK_BF16_FLOPS).
batch:  largest per-GPU ViT-L-14 batch whose step fits, with and without gradient checkpointing (doubling, then
        bisection on torch.OutOfMemoryError, to within 1/16).
loader: webdataset shards of 256 px JPEGs as img2dataset writes them, cir's loader at several worker counts vs the
        ViT-B-32 step on in-memory batches, and the step fed by the loader.
eval:   `cir.evaluate` (ViT-L-14, bf16-mixed, no feature cache) on placeholder CIRR, CIRCO (123,403 gallery images)
        and FashionIQ val splits in their official layouts: encoding images/s and each command's wall time.
Then one TAT epoch projected on LLaVA-Align (ViT-B-32) and LAION 2M (ViT-L-14) for this one GPU.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import statistics
import subprocess
import time
import traceback

import common
import placeholders

LLAVA_ALIGN_PAIRS = 558_128  # LLaVA's LCS-558K pretraining pairs (PAPER.md says 585K: the projection scales linearly)
LAION_PAIRS = 2_000_000
PAPER_EPOCH = "ViT-B-32 on LLaVA-Align in under half an hour on 8 x A100 (paper, /work/shared/PAPER.md)"


def device_info(device: str) -> dict:
    import torch

    from cir.throughput import peak_bf16_flops

    info = {"torch": torch.__version__, "cuda": torch.version.cuda or "none"}
    if device == "cuda":
        name = torch.cuda.get_device_name()
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            driver = "unknown (no nvidia-smi)"
        peak = peak_bf16_flops(name)
        info.update(gpu=name, driver=driver, cudnn=str(torch.backends.cudnn.version()),
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                    peak_bf16_tflops=peak / 1e12 if peak else "not in cir.throughput.PEAK_BF16_FLOPS")
    return info


def guarded(name: str, figures: dict, part, partial: str | None = None) -> None:
    """Run one part; an error is recorded as its figure, so a one-shot GPU run keeps every other part's results.
    With `partial`, the figures so far are saved there after the part (a run cut short by a timeout keeps them)."""
    began = time.perf_counter()
    try:
        part()
    except Exception as err:  # noqa: BLE001 (the run must go on; the error lands in the figures and the log)
        traceback.print_exc()
        figures[f"{name}: ERROR"] = f"{type(err).__name__}: {str(err)[:300]}"
    figures[f"{name}: part wall time, s"] = round(time.perf_counter() - began, 1)
    print(f"-- {name} done in {figures[f'{name}: part wall time, s']} s", flush=True)
    if partial:
        with open(partial, "w") as handle:
            json.dump(figures, handle, indent=2, default=str)


def image_size(backbone) -> int:
    size = backbone.model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else size


def step_part(model: str, args, device: str, figures: dict, rates: dict) -> None:
    import torch
    from torch.utils.data import DataLoader

    from cir.data.shards import SKIP_REASONS
    from cir.throughput import contrastive_flops_per_sample, peak_bf16_flops

    steps = args.steps + args.warmup + 1
    precision = "bf16-mixed" if device == "cuda" else "32-true"
    cfg = common.fit_config(f"model.name={model}", "model.pretrained=none", f"data.batch_size={args.batch_size}",
                            "optim.warmup_steps=10", f"trainer.max_steps={steps}", f"trainer.accelerator={args.accelerator}",
                            f"trainer.precision={precision}", "trainer.log_every_n_steps=10")
    module = common.new_tat_module(cfg).to(device)
    backbone = module.backbone
    size, n = image_size(backbone), args.batch_size
    generator = torch.Generator().manual_seed(0)
    tokens = backbone.tokenize([f"a photo of object {i} next to thing {i % 7}" for i in range(n)])
    embeddings = torch.nn.functional.normalize(torch.randn(n, backbone.embed_dim, generator=generator), dim=-1)
    skipped = torch.zeros(len(SKIP_REASONS), dtype=torch.long)
    images = [torch.randn(n, 3, size, size, generator=generator).to(device) for _ in range(4)]
    texts = {"tokens": tokens.to(device), "cached": embeddings.to(device)}
    eager = backbone.model.visual
    compiled = torch.compile(eager)
    variants = {"tokens": ("tokens", False, False), "cached": ("cached", False, False),
                "cached + grad checkpointing": ("cached", True, False), "cached + torch.compile": ("cached", False, True)}
    autocast = "bf16" if device == "cuda" else None

    def timed(variant: str) -> float:
        text, checkpointing, compile_ = variants[variant]
        backbone.set_grad_checkpointing(checkpointing)
        backbone.model.visual = compiled if compile_ else eager
        try:
            batches = [(x, texts[text], skipped) for x in images] * (steps // len(images) + 1)
            ends, samples = common.bare_loop(module, batches[:steps], steps, cfg, device=device, autocast=autocast)
        finally:
            backbone.set_grad_checkpointing(False)
            backbone.model.visual = eager
        return common.steady_rate(ends, samples, args.warmup)

    def trainer() -> float:
        loader = DataLoader(common.Cycle([(x, texts["cached"], skipped) for x in images], steps), batch_size=None)
        ends, samples = common.lightning_fit(cfg, module, loader, common.BENCH_DIR / "gpu-runs" / f"{time.time_ns()}")
        module.to(device)  # Lightning's teardown moved it to the CPU
        return common.steady_rate(ends, samples, args.warmup)

    print(f"   {model}: warm-up (torch.compile compiles here)", flush=True)
    for variant in list(variants):
        try:
            figures[f"{model} {variant}: first run (warm-up, compile), samples/s"] = timed(variant)
        except Exception as err:  # noqa: BLE001 (e.g. torch.compile failing: the other variants still run)
            traceback.print_exc()
            figures[f"{model} {variant}: ERROR"] = f"{type(err).__name__}: {str(err)[:300]}"
            del variants[variant]
    contenders = {variant: (lambda v=variant: timed(v)) for variant in variants}
    contenders["cached, cir.fit Trainer"] = trainer
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    results = common.interleaved(contenders, args.rounds)
    peak = peak_bf16_flops(torch.cuda.get_device_name()) if device == "cuda" else None
    prefix = f"{model} TAT, batch {n}, {size} px, {precision}"
    for variant in variants:
        rate = statistics.median(results[variant])
        rates[(model, variant)] = rate
        figures[f"{prefix}, {variant}: samples/s (median)"] = rate
        if variant != "cached":
            figures[f"{prefix}, {variant} / cached: samples/s ratio (median)"] = common.median_ratio(results[variant], results["cached"])
        flops = contrastive_flops_per_sample(backbone, images[0][:1], texts[variants[variant][0]][:1])
        figures[f"{model} {variant}: model GFLOPs per sample (forward + backward)"] = flops / 1e9
        if peak:
            figures[f"{prefix}, {variant}: MFU vs dense bf16 peak"] = rate * flops / peak
            rates[(model, variant, "mfu")] = rate * flops / peak
    figures[f"{prefix}: cir.fit Trainer / bare loop, cached (median)"] = common.median_ratio(
        results["cached, cir.fit Trainer"], results["cached"])
    if device == "cuda":
        figures[f"{prefix}: peak GPU memory over the variants, GiB"] = torch.cuda.max_memory_allocated() / 2**30
    if model == args.batch_model and "batch" in args.parts:
        guarded(f"{model} largest batch", figures, lambda: batch_part(module, cfg, device, args, figures))


def batch_part(module, cfg, device: str, args, figures: dict) -> None:
    """The largest batch whose TAT step (cached captions, bf16 autocast, AdamW) fits, with and without checkpointing."""
    import torch

    size, dim = image_size(module.backbone), module.backbone.embed_dim
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def fits(batch: int) -> bool:
        ok = True
        try:
            images = torch.randn(batch, 3, size, size, device=device)
            texts = torch.nn.functional.normalize(torch.randn(batch, dim, device=device), dim=-1)
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=device == "cuda"):
                image, text = module.features(images, texts)
                loss = module.loss_fn(image, text, module.logit_scale())
            loss.backward()
            optimizer.step()
            if device == "cuda":
                torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            ok = False
        optimizer.zero_grad(set_to_none=True)
        images = texts = image = text = loss = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        print(f"   batch {batch}: {'fits' if ok else 'out of memory'}", flush=True)
        return ok

    for checkpointing in (False, True):
        module.backbone.set_grad_checkpointing(checkpointing)
        low, high = 0, args.batch_start
        while high <= args.batch_cap and fits(high):
            low, high = high, high * 2
        if low == args.batch_cap or high > args.batch_cap and low:
            text = f">= {low} (search cap)"
        else:
            while high - low > max(1, low // 16):
                middle = (low + high) // 2
                low, high = (middle, high) if fits(middle) else (low, middle)
            text = f"{low} (fails at {high})"
        figures[f"{module.backbone.name} largest batch per GPU, {size} px, bf16, grad checkpointing {'on' if checkpointing else 'off'}"] = text
    module.backbone.set_grad_checkpointing(False)


def loader_part(args, device: str, figures: dict, rates: dict) -> None:
    """Loader images/s over img2dataset-style shards at several worker counts, and the ViT-B-32 step fed by it."""
    from cir.data.shards import image_text_loader, image_text_pipeline
    from cir.tasks.base import training_transform

    model = args.models[0]
    urls = placeholders.write_img2dataset_shards(common.BENCH_DIR / f"img2dataset-{args.shard_samples}", args.shard_samples,
                                                 args.shard_size, workers=os.cpu_count() or 1)
    cfg = common.fit_config(f"model.name={model}", "model.pretrained=none", f"data.batch_size={args.batch_size}",
                            f"trainer.accelerator={args.accelerator}")
    module = common.new_tat_module(cfg)
    transform = training_transform(cfg, module.backbone)

    def batches(workers: int) -> int:
        """Every worker's first batch arrives in one wave after start-up: skip it, then time 3 batches per worker."""
        return workers + max(3 * workers, args.steps) + 1

    def loader(workers: int):
        pipeline = image_text_pipeline(urls, image_transform=transform, tokenize=module.backbone.tokenize, batch_size=args.batch_size,
                                       resampled=True, samples_per_epoch=batches(workers) * args.batch_size)
        return image_text_loader(pipeline, num_workers=workers, pin_memory=device == "cuda")

    def loader_rate(workers: int) -> float:
        ends, samples = [], []
        for batch in loader(workers):
            ends.append(time.perf_counter())
            samples.append(batch[0].shape[0])
        gc.collect()
        return common.steady_rate(ends, samples, workers)

    best, best_rate = 0, 0.0
    for workers in args.loader_workers:
        rate = loader_rate(workers)
        figures[f"loader (256 px JPEG shards, {model} train transform, tokens, batch {args.batch_size}), {workers} workers: images/s"] = rate
        if rate > best_rate:
            best, best_rate = workers, rate
    step = rates.get((model, "tokens"))
    if step:
        figures[f"loader images/s with {best} workers / {model} tokens step samples/s (in memory)"] = best_rate / step
        rates["loader"] = best_rate

    def transferred():
        for batch in loader(best):
            moved = tuple(t.to(device, non_blocking=True) for t in batch)
            yield module.on_after_batch_transfer(moved, 0)

    ends, samples = common.bare_loop(module, transferred(), batches(best), cfg, device=device,
                                     autocast="bf16" if device == "cuda" else None)
    fed = common.steady_rate(ends, samples, best)
    figures[f"{model} tokens step fed by the loader ({best} workers): samples/s"] = fed
    if step:
        figures[f"{model} tokens step fed by the loader / in memory"] = fed / step
        rates["fed"] = fed


def eval_part(args, device: str, figures: dict) -> None:
    """`cir.evaluate` on each placeholder benchmark; run.encode is timed from inside for the encoding rate."""
    from cir import evaluate
    from cir.evaluation import run

    roots = placeholders.write_benchmarks(common.BENCH_DIR / ("benchmarks-smoke" if args.smoke else "benchmarks-full"), args.smoke)
    encode, timings = run.encode, []

    def timed_encode(evaluator, backbone, trainer_kwargs) -> None:
        began = time.perf_counter()
        encode(evaluator, backbone, trainer_kwargs)
        timings.append((time.perf_counter() - began, sum(len(e.index.image_ids) for e in evaluator.entries),
                        sum(len(e.index.texts) for e in evaluator.entries)))

    precision = "bf16-mixed" if device == "cuda" else "32-true"
    total = 0.0
    run.encode = timed_encode
    try:
        for name, root in roots.items():
            overrides = [f"data.name={name}", f"data.root={root}", f"model.name={args.eval_model}", "model.pretrained=none",
                         "eval.cache_dir=null", f"data.batch_size={args.eval_batch_size}", f"data.num_workers={args.workers}",
                         f"trainer.accelerator={args.accelerator}", f"trainer.precision={precision}",
                         f"output_dir={common.BENCH_DIR / 'gpu-eval' / name}"]
            began = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                evaluate.main(None, overrides)
            wall = time.perf_counter() - began
            total += wall
            seconds, images, texts = timings[-1]
            prefix = f"cir.evaluate {name} val ({args.eval_model}, {precision}, batch {args.eval_batch_size}, {args.workers} workers)"
            figures[f"{prefix}: images encoded"] = images
            figures[f"{prefix}: captions encoded"] = texts
            figures[f"{prefix}: encoding images/s (the captions' share of the time included)"] = images / seconds
            figures[f"{prefix}: command wall time, s"] = wall
    finally:
        run.encode = encode
    figures[f"three-benchmark evaluation ({args.eval_model}): wall time, s"] = total


def projections(args, figures: dict, rates: dict) -> None:
    for model, pairs, data in ((args.models[0], LLAVA_ALIGN_PAIRS, "LLaVA-Align"), (args.models[-1], LAION_PAIRS, "LAION 2M")):
        for variant in ("tokens", "cached"):
            rate = rates.get((model, variant))
            if rate:
                figures[f"projected TAT epoch, {data} ({pairs:,} pairs), {model}, {variant}, in-memory step, one GPU: minutes"] = (
                    pairs / rate / 60)
        if model == args.models[0] and "fed" in rates:
            figures[f"projected TAT epoch, {data} ({pairs:,} pairs), {model}, tokens, fed by the loader, one GPU: minutes"] = (
                pairs / rates["fed"] / 60)
    figures["paper"] = PAPER_EPOCH


def main() -> int:
    parser = common.arguments(__doc__, threads=4)
    parser.add_argument("--markdown", help="also write the figures as a markdown table to this file")
    parser.add_argument("--parts", nargs="+", default=["step", "batch", "loader", "eval"])
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-L-14"])
    parser.add_argument("--batch-model", default="ViT-L-14")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batch-start", type=int, default=512)
    parser.add_argument("--batch-cap", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shard-samples", type=int, default=8192)
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--loader-workers", type=int, nargs="+", default=None, help="default: cores/4, cores/2, cores-2")
    parser.add_argument("--eval-model", default="ViT-L-14")
    parser.add_argument("--eval-batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=None, help="evaluation loader workers (default: cores - 2)")
    parser.add_argument("--smoke", action="store_true", help="cir-tiny on CPU at tiny sizes: checks the script, measures nothing")
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    args.workers = args.workers if args.workers is not None else max(1, cores - 2)
    args.loader_workers = args.loader_workers or sorted({max(1, cores // 4), max(1, cores // 2), max(1, cores - 2)})
    if args.smoke:
        args.models, args.eval_model, args.batch_model = ["cir-tiny"], "cir-tiny", "cir-tiny"
        args.batch_size, args.eval_batch_size, args.batch_start, args.batch_cap = 16, 64, 16, 64
        args.steps, args.warmup, args.rounds, args.threads, args.workers = 3, 1, 1, 1, 1
        args.shard_samples, args.shard_size, args.loader_workers = 256, 64, [1, 2]
    common.pin_threads(args.threads)
    info = common.header("GPU: TAT step, MFU, largest batch, data path, evaluation", args.threads)

    import torch

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --smoke for a CPU check of the script")
    args.accelerator = "gpu" if device == "cuda" else "cpu"
    info.update(device_info(device))
    print("   " + ", ".join(f"{k}: {v}" for k, v in device_info(device).items()), flush=True)
    figures: dict = {}
    rates: dict = {}
    partial = f"{args.json}.partial" if args.json else None
    if "step" in args.parts:
        for model in args.models:
            guarded(f"{model} step", figures, lambda m=model: step_part(m, args, device, figures, rates), partial)
    if "loader" in args.parts:
        guarded("loader", figures, lambda: loader_part(args, device, figures, rates), partial)
    if "eval" in args.parts:
        guarded("evaluation", figures, lambda: eval_part(args, device, figures), partial)
    projections(args, figures, rates)
    large = args.models[-1]
    mfu = rates.get((large, "cached", "mfu"))
    loader_share = rates["loader"] / rates[(args.models[0], "tokens")] if "loader" in rates else None
    epoch = figures.get(f"projected TAT epoch, LLaVA-Align ({LLAVA_ALIGN_PAIRS:,} pairs), {args.models[0]}, tokens, fed by the loader, "
                        "one GPU: minutes")
    verdicts = [(mfu is not None and mfu >= 0.35, f"{large} TAT step (cached captions) MFU {shown(mfu, '.1%')} (target >= 35 %)"),
                (loader_share is not None and loader_share >= 1,
                 f"loader images/s / {args.models[0]} tokens step samples/s {shown(loader_share, '.2f')} (target >= 1)"),
                (epoch is not None and epoch < 10, f"LLaVA-Align {args.models[0]} epoch on one GPU {shown(epoch, '.1f')} min (target < 10)")]
    if args.smoke:
        verdicts = [(ok, f"[smoke run: cir-tiny on CPU, measures nothing] {text}") for ok, text in verdicts]
    if args.markdown:
        write_markdown(args.markdown, info, figures, verdicts)
    return common.finish("gpu", info, figures, verdicts, args.json)


def shown(value: float | None, spec: str) -> str:
    return "not measured" if value is None else format(value, spec)


def write_markdown(path: str, info: dict, figures: dict, verdicts: list[tuple[bool, str]]) -> None:
    """The figures as a table ready to paste into benchmarks/README.md."""
    lines = ["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in info.items()), "", "| figure | value |", "| --- | --- |"]
    lines += [f"| {k} | {f'{v:.4g}' if isinstance(v, float) else v} |" for k, v in figures.items()]
    lines += ["", *(f"- VERDICT {'MET' if ok else 'MISSED'}: {text}" for ok, text in verdicts), ""]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        handle.write("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
