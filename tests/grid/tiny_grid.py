"""A tiny grid for the tests of what "done" means: TAT of the demo's model on the generated benchmark's tune
shards, then a zero-shot evaluation of its export with features exported; `cells` seeds, one cell each."""

from __future__ import annotations

from pathlib import Path

import yaml

from cir.data.synth import generate, shard_urls

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
SYNTH = {"pretrain_samples": 16, "tune_samples": 64, "train_queries": 8, "val_queries": 24, "test_queries": 4,
         "shard_size": 32}
TAT = {"trainer.max_steps": 4, "checkpoint.every_n_steps": 1, "data.batch_size": 16,
       "optim.warmup_steps": 1, "trainer.accelerator": "cpu", "trainer.enable_progress_bar": False}
EVAL = {"model.name": "${stage.tat.export_model}", "model.pretrained": "${stage.tat.export}", "eval.cache_dir": None,
        "eval.alphas": [0.5, 0.9], "eval.examples": 2, "eval.save_features": True, "trainer.accelerator": "cpu"}


def make_benchmark(out: Path) -> Path:
    generate(out, 0, progress=False, **SYNTH)
    return out


def write_grid(path: Path, benchmark: Path, out: Path, cells: int = 1, workers: int = 0,
               in_process: bool = True) -> Path:
    """The grid YAML at `path`, writing under `out`; the calls run in the grid's process (or, `in_process=False`,
    each in a child process), the fits with `workers` DataLoader workers."""
    grid = {
        "task": "grid", "name": "tiny", "output_dir": str(out), "in_process": in_process,
        "axes": {"seed": list(range(cells))},
        "stages": {
            "tat": {"cli": "fit", "config": str(EXPERIMENTS / "demo_tat.yaml"),
                    "overrides": {**TAT, "data.num_workers": workers,
                                  "data.train_shards": shard_urls(benchmark, "tune")}},
            "cirr_val": {"cli": "evaluate", "config": str(EXPERIMENTS / "demo_eval.yaml"), "needs": ["tat"],
                         "overrides": {**EVAL, "data.root": str(benchmark / "cirr")}},
        },
    }
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path
