"""Evaluation: an 11-alpha Slerp sweep vs a single alpha (target <= 1.2x), and encoding throughput vs a plain loop.

    python benchmarks/bench_eval.py [--rounds 5]

Generated CIRR-layout val split (1,000 queries, ~1,070 gallery images, 32 px),
cir-tiny with saved random-init weights, 2 loader workers, no feature cache.
  sweep / single   cir.evaluate's prepare + encode + score, with eval.alphas = 0.0..1.0 (11) vs [0.9];
                   also the whole `cir.evaluate` command (files, plot, TensorBoard) and
                   the scoring alone on fixed features (11 alphas vs 1)
  encode / plain   cir.evaluation.run.encode (Lightning validate over the evaluator's loaders) vs a
                   plain inference loop over the same loaders and model filling the same tables
"""

from __future__ import annotations

import time

import common

SWEEP = [round(0.1 * i, 1) for i in range(11)]


def main() -> int:
    parser = common.arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    common.pin_threads(args.threads)
    info = common.header("Evaluation: alpha sweep vs single alpha; encoding vs a plain loop", args.threads)

    import torch

    from cir import evaluate
    from cir.config import load_config
    from cir.evaluation import run
    from cir.evaluation.evaluator import BenchmarkEvaluator
    from cir.evaluation.features import Features
    from cir.schema import EvaluateConfig

    weights = common.saved_backbone("cir-tiny")
    root = common.synth_data(4000, queries=1000) / "cirr"
    scratch = common.BENCH_DIR / "eval-runs"

    def overrides(alphas: list[float]) -> list[str]:
        return ["model.name=cir-tiny", f"model.pretrained={weights}", "data.name=cirr", f"data.root={root}", "data.split=val",
                "data.num_workers=2", "eval.cache_dir=null", "eval.examples=0", "eval.methods=[slerp]", "eval.paper_alpha=0.9",
                f"eval.alphas={alphas}", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
                f"output_dir={scratch / str(time.time_ns())}"]

    def evaluation(alphas: list[float]):
        def run() -> float:
            began = time.perf_counter()
            backbone, evaluator, trainer_kwargs, _ = run.prepare(load_config(EvaluateConfig, None, overrides(alphas)))
            run.encode(evaluator, backbone, trainer_kwargs)
            evaluator.score(backbone.device)
            return time.perf_counter() - began
        return run

    def command(alphas: list[float]):
        def run() -> float:
            began = time.perf_counter()
            evaluate.main(None, overrides(alphas))
            return time.perf_counter() - began
        return run

    backbone, evaluator, trainer_kwargs, _ = run.prepare(load_config(EvaluateConfig, None, overrides(SWEEP)))
    run.encode(evaluator, backbone, trainer_kwargs)
    bench, index, feats = evaluator.features()[0]
    items = len(index.image_ids) + len(index.texts)

    def scoring(alphas: list[float]):
        def run() -> float:
            scorer = BenchmarkEvaluator([bench], ["slerp"], alphas)
            scorer.entries[0].feats = feats
            began = time.perf_counter()
            scorer.score()
            return time.perf_counter() - began
        return run

    def ours_encode() -> float:
        fresh = BenchmarkEvaluator([bench], ["slerp"], [0.9], batch_size=64, num_workers=2)
        began = time.perf_counter()
        run.encode(fresh, backbone, trainer_kwargs)
        return items / (time.perf_counter() - began)

    def plain_encode() -> float:
        fresh = BenchmarkEvaluator([bench], ["slerp"], [0.9], batch_size=64, num_workers=2)
        began = time.perf_counter()
        loaders = fresh.dataloaders(backbone)
        tables = {"image": torch.empty(len(index.image_ids), backbone.embed_dim), "text": torch.empty(len(index.texts), backbone.embed_dim)}
        backbone.eval()
        with torch.inference_mode():
            for loader, kind in zip(loaders, ("image", "text")):
                encode = backbone.encode_image if kind == "image" else backbone.encode_text
                for rows, inputs in loader:
                    tables[kind][rows] = encode(inputs)
        Features(tables["image"], tables["text"])
        return items / (time.perf_counter() - began)

    results = common.interleaved({
        "evaluation_sweep": evaluation(SWEEP), "evaluation_single": evaluation([0.9]),
        "command_sweep": command(SWEEP), "command_single": command([0.9]),
        "scoring_sweep": scoring(SWEEP), "scoring_single": scoring([0.9]),
        "encode_ours": ours_encode, "encode_plain": plain_encode,
    }, args.rounds)
    sweep = common.median_ratio(results["evaluation_sweep"], results["evaluation_single"])
    encode_ratio = common.median_ratio(results["encode_ours"], results["encode_plain"])
    figures = {
        "evaluation time, 11 alphas / 1 alpha (median)": sweep,
        "whole cir.evaluate command, 11 alphas / 1 alpha (median)": common.median_ratio(results["command_sweep"], results["command_single"]),
        "scoring alone on fixed features, 11 alphas / 1 alpha (median)": common.median_ratio(results["scoring_sweep"], results["scoring_single"]),
        "scoring of one alpha / whole single-alpha evaluation (median)": common.median_ratio(results["scoring_single"], results["evaluation_single"]),
        "encoding items/s, cir.evaluation.run.encode / plain loop (median)": encode_ratio,
        "queries, gallery images, distinct captions": f"{len(bench.queries)}, {index.n_gallery}, {len(index.texts)}",
        "rounds": args.rounds,
    }
    return common.finish("eval", info, figures, [
        (sweep <= 1.2, f"an 11-alpha sweep costs {sweep:.2f}x a single alpha (target <= 1.2x)"),
        (encode_ratio >= 0.97, f"encoding runs at {encode_ratio:.2f}x a plain loop's throughput (no target given; 0.97 used)"),
    ], args.json)


if __name__ == "__main__":
    raise SystemExit(main())
