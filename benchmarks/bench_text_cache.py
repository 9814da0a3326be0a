"""TAT training throughput with cached caption embeddings vs open_clip's own trainer (text tower locked), and vs TAT without the cache.

    python benchmarks/bench_text_cache.py [--rounds 3] [--steps 60] [--batch-size 128]

Same tiny model config (cir-tiny) and random-init weights, the same generated
shards (resampled), 2 loader workers, float32, CPU, one intra-op thread each.
Contenders, each a fresh subprocess so none inherits another's warm state:
  ours_cached  cir.fit's Trainer + TAT (LoRA r16 on q/v of the image tower), captions read as
               embeddings written by cir.data.embed_text (no text tower in the step)
  ours_tokens  the same, captions tokenised in the loader and encoded by the frozen text tower
  open_clip    `python -m open_clip_train.main --lock-text --lock-text-freeze-layer-norm`
               (full image tower trained), in its own venv: open_clip's `[training]` extra
               needs webdataset <= 0.2.86 and pandas, which must not enter the project's environment
samples/s counts each step from the end of the previous one (data wait included), skipping --warmup steps.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

import common

OPENCLIP_PINS = ("webdataset==0.2.86", "pandas")
_RATE = re.compile(r"Batch \(t\): [0-9.]+, ([0-9.]+)/s,")


def openclip_python() -> Path:
    """A venv for open_clip_train: its `[training]` extra (webdataset <= 0.2.86, pandas) over this interpreter's packages."""
    return common.bench_venv("openclip", OPENCLIP_PINS, "import webdataset, pandas, open_clip_train.main; assert webdataset.__version__ == '0.2.86'")


def openclip_model_dir(weights: Path) -> Path:
    """The `local-dir:` folder open_clip loads: open_clip_config.json (model_cfg) + the same weights."""
    import cir.models

    folder = common.BENCH_DIR / "openclip-local" / weights.stem
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((Path(cir.models.__file__).parent / "configs" / "cir-tiny.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}, indent=1))
    shutil.copyfile(weights, folder / "open_clip_pytorch_model.bin")
    return folder


def child_ours(args) -> None:
    import lightning as L

    from cir.tasks.tat import build

    common.quiet()
    data_keys = [f"data.text_embeddings={args.embedded}"] if args.cached else [f"data.train_shards={args.shards}"]
    cfg = common.fit_config("model.name=cir-tiny", f"model.pretrained={args.weights}", *data_keys,
                            f"data.batch_size={args.batch_size}", "data.num_workers=2", "data.resampled=true",
                            f"data.samples_per_epoch={args.steps * args.batch_size}", "optim.warmup_steps=10",
                            f"trainer.max_steps={args.steps}")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module, data = build(cfg)
    ends, samples = common.lightning_fit(cfg, module, data, Path(args.out))
    print(json.dumps({"rate": common.steady_rate(ends, samples, args.warmup)}))


def run_openclip(python: Path, model_dir: Path, shards: str, args, out: Path) -> float:
    command = [
        str(python), "-m", "open_clip_train.main", "--model", f"local-dir:{model_dir}", "--train-data", shards,
        "--dataset-type", "webdataset", "--dataset-resampled", "--train-num-samples", str(args.steps * args.batch_size),
        "--batch-size", str(args.batch_size), "--epochs", "1", "--workers", "2", "--lock-text",
        "--lock-text-freeze-layer-norm", "--precision", "fp32", "--log-every-n-steps", "1", "--logs", str(out.parent),
        "--name", out.name, "--save-frequency", "0", "--warmup", "10", "--lr", "1e-4", "--wd", "0.01",
        "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--seed", "0",
    ]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, env=common.child_env(args.threads), cwd=common.BENCH_DIR)
    rates = [float(m.group(1)) for m in _RATE.finditer(proc.stdout + proc.stderr)]
    if proc.returncode != 0 or len(rates) < args.steps:
        raise RuntimeError(f"open_clip_train failed (rc {proc.returncode}, {len(rates)} steps logged):\n{proc.stderr[-4000:]}")
    # open_clip rounds the epoch up to whole batches per worker, so it may log a step or two more: count `steps`.
    times = [args.batch_size / r for r in rates[args.warmup + 1 : args.steps]]
    return args.batch_size * len(times) / sum(times)


def main() -> int:
    parser = common.arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--child", choices=["ours"], help=argparse.SUPPRESS)
    parser.add_argument("--cached", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--shards", "--embedded", "--weights", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.pin_threads(args.threads)
    if args.child:
        child_ours(args)
        return 0
    info = common.header("TAT with cached caption embeddings vs open_clip_train (--lock-text) and vs TAT without the cache", args.threads)
    weights = common.saved_backbone("cir-tiny")
    shard_list = common.tune_shards(common.synth_data(4000))
    shards = "::".join(shard_list)
    embedded = common.embedded_shards(shard_list, weights)
    python = openclip_python()
    model_dir = openclip_model_dir(weights)
    runs = common.BENCH_DIR / "text-cache-runs"
    shutil.rmtree(runs, ignore_errors=True)
    counter = iter(range(10**6))

    def ours(cached: bool):
        def run() -> float:
            extra = ["--cached"] if cached else []
            child = ["benchmarks/bench_text_cache.py", "--child", "ours", *extra, "--shards", shards, "--embedded", str(embedded),
                     "--weights", str(weights), "--out", str(runs / f"ours-{next(counter)}"), "--steps", str(args.steps),
                     "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            return common.run_child(child, args.threads)["rate"]
        return run

    def openclip() -> float:
        return run_openclip(python, model_dir, shards, args, runs / f"openclip-{next(counter)}")

    results = common.interleaved({"ours_cached": ours(True), "open_clip": openclip, "ours_tokens": ours(False)}, args.rounds)
    vs_openclip = common.median_ratio(results["ours_cached"], results["open_clip"])
    vs_tokens = common.median_ratio(results["ours_cached"], results["ours_tokens"])
    tokens_vs_openclip = common.median_ratio(results["ours_tokens"], results["open_clip"])
    figures = {
        "samples/s ratio, TAT cached / open_clip_train --lock-text (median)": vs_openclip,
        "samples/s ratio, TAT cached / TAT tokens (median)": vs_tokens,
        "samples/s ratio, TAT tokens / open_clip_train --lock-text (median)": tokens_vs_openclip,
        "rounds": args.rounds, "steps per run (warm-up skipped)": f"{args.steps} ({args.warmup})",
        "batch size": args.batch_size, "open_clip venv": f"{openclip_python().parent.parent} ({', '.join(OPENCLIP_PINS)})",
    }
    return common.finish("text_cache", info, figures,
                         [(vs_openclip >= 1.25, f"TAT with cached captions is {vs_openclip:.2f}x open_clip_train --lock-text (target >= 1.25x)")],
                         args.json)


if __name__ == "__main__":
    raise SystemExit(main())
