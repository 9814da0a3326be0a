"""TAT step throughput under Lightning vs a bare PyTorch loop doing the same step (target: overhead <= 3 %).

    python benchmarks/bench_step.py [--rounds 7] [--steps 40] [--batch-size 128]

Same module (cir-tiny, LoRA r16 on the image tower, frozen text tower, saved
random-init weights), same in-memory batches read once from the generated
shards, same AdamW + warmup-cosine schedule. Each contender's samples/s is
counted from the end of step `--warmup` to the end of the last step, so Trainer
setup is excluded but everything between steps (data fetch, hooks, logging) is in.
The probe contender makes self.log act on the Trainer's logging steps only (every
trainer.log_every_n_steps). It found the per-step logging cost that TAT now avoids the same way,
so today it is a null comparison: the same work under another name, which shows the noise.
"""

from __future__ import annotations

import time

import common


def gated_logging_module(cfg):
    """TAT whose step calls self.log only on the Trainer's logging steps: a probe of what per-step logging costs."""
    import torch
    from omegaconf import OmegaConf

    from cir.tasks.tat import TextAnchoredTuning

    class GatedLogging(TextAnchoredTuning):
        def log(self, *args, **kwargs) -> None:
            if self.trainer._logger_connector.should_update_logs:
                super().log(*args, **kwargs)

    torch.manual_seed(0)
    return GatedLogging(OmegaConf.to_container(cfg, resolve=True))


def main() -> int:
    parser = common.arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    common.pin_threads(args.threads)
    info = common.header("TAT step: Lightning vs bare PyTorch loop", args.threads)

    from torch.utils.data import DataLoader

    weights = common.saved_backbone("cir-tiny")
    cfg = common.fit_config("model.name=cir-tiny", f"model.pretrained={weights}", f"data.batch_size={args.batch_size}",
                            "optim.warmup_steps=10", f"trainer.max_steps={args.steps}")
    shards = common.tune_shards(common.synth_data(4000))
    data = common.memory_batches(shards, common.new_tat_module(cfg).backbone, args.batch_size, 8)
    loader = DataLoader(common.Cycle(data, args.steps), batch_size=None, num_workers=0)
    scratch = common.BENCH_DIR / "step-runs"

    def lightning(minimal: bool, build=common.new_tat_module):
        def run() -> float:
            ends, samples = common.lightning_fit(cfg, build(cfg), loader, scratch / f"run-{time.time_ns()}", minimal=minimal)
            return common.steady_rate(ends, samples, args.warmup)
        return run

    def bare() -> float:
        return common.steady_rate(*common.bare_loop(common.new_tat_module(cfg), loader, args.steps, cfg), args.warmup)

    results = common.interleaved({"lightning_cli": lightning(False), "lightning_minimal": lightning(True),
                                  "lightning_cli_gated_logging": lightning(False, gated_logging_module), "bare": bare},
                                 args.rounds)
    cli = common.median_ratio(results["lightning_cli"], results["bare"])
    minimal = common.median_ratio(results["lightning_minimal"], results["bare"])
    figures = {
        "throughput ratio, Lightning as cir.fit sets it up / bare loop (median)": cli,
        "throughput ratio, minimal Lightning Trainer / bare loop (median)": minimal,
        "overhead of cir.fit's Trainer vs bare loop, %": 100 * (1 / cli - 1),
        "probe: cir.fit's Trainer, TAT logging only on logging steps / bare loop (median)":
            common.median_ratio(results["lightning_cli_gated_logging"], results["bare"]),
        "rounds": args.rounds, "steps per run (warm-up skipped)": f"{args.steps} ({args.warmup})",
        "batch size": args.batch_size,
    }
    overhead = 100 * (1 / cli - 1)
    return common.finish("step", info, figures, [(overhead <= 3.0, f"Lightning overhead {overhead:.1f}% (target <= 3%)")], args.json)


if __name__ == "__main__":
    raise SystemExit(main())
