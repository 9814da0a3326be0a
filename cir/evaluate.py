"""`python -m cir.evaluate CONFIG [key=value ...] [--debug]`: zero-shot Slerp evaluation with an alpha sweep.

Writes <output_dir>/metrics.json (keys `<dataset>/<split>/<method>/<metric>`, percent),
alpha_sweep.png, resolved config and a TensorBoard run (with eval.save_features=true also
features/<dataset>-<split>.npz); prints the table and whether each benchmark's reference
image was a candidate. The output_dir is locked for the run (cir.run_lock): a second
evaluation into it stops at once, naming the holder.
"""

from __future__ import annotations

from pathlib import Path

from cir.config import load_config, run_cli
from cir.distributed import is_global_zero
from cir.evaluation.presentation import format_table
from cir.evaluation.run import evaluate, reference_summary, skipped_summary
from cir.run_lock import rank_zero_lock
from cir.schema import EvaluateConfig


def main(path: str | None, overrides: list[str]) -> dict[str, float]:
    """usage: python -m cir.evaluate CONFIG [key=value ...] [--debug]"""
    cfg = load_config(EvaluateConfig, path, overrides)
    with rank_zero_lock(cfg.output_dir, "evaluation"):
        metrics, evaluator = evaluate(cfg)
    if is_global_zero():
        out = Path(cfg.output_dir)
        print(format_table(metrics))
        print(reference_summary(evaluator))
        if skipped_summary(evaluator):
            print(skipped_summary(evaluator))
        print(f"metrics: {out / 'metrics.json'}\nplot: {out / 'alpha_sweep.png'}\ntensorboard: tensorboard --logdir {out}")
        if cfg.eval.save_features:
            print(f"features: {out / 'features'}")
    return metrics


if __name__ == "__main__":
    run_cli(main)
