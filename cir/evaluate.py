"""`python -m cir.evaluate CONFIG [key=value ...] [--debug]`: zero-shot Slerp evaluation with an alpha sweep.

Writes <output_dir>/metrics.json (keys `<dataset>/<split>/<method>/<metric>`, percent),
alpha_sweep.png, resolved config and a TensorBoard run; prints the table.
"""

from __future__ import annotations

from pathlib import Path

from cir.config import load_config, run_cli
from cir.distributed import is_global_zero
from cir.eval.report import format_table
from cir.eval.run import evaluate
from cir.schema import EvaluateConfig


def main(path: str | None, overrides: list[str]) -> dict[str, float]:
    """usage: python -m cir.evaluate CONFIG [key=value ...] [--debug]"""
    cfg = load_config(EvaluateConfig, path, overrides)
    metrics = evaluate(cfg)
    if is_global_zero():
        out = Path(cfg.output_dir)
        print(format_table(metrics))
        print(f"metrics: {out / 'metrics.json'}\nplot: {out / 'alpha_sweep.png'}\ntensorboard: tensorboard --logdir {out}")
    return metrics


if __name__ == "__main__":
    run_cli(main)
