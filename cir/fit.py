"""`python -m cir.fit CONFIG [key=value ...] [--debug]`: TAT or supervised CIR fine-tuning with Lightning.

`task:` in the config picks the LightningModule. Rerunning the same command
resumes from <output_dir>/checkpoints/last.ckpt. The run folder gets the
resolved config, TensorBoard logs, checkpoints, run.json (what made the run)
and the merged export: export.pt (a plain open_clip checkpoint) or, for a BLIP
backbone, an export/ folder that transformers' from_pretrained loads.
A grid of runs (`task: grid`, e.g. the embedded demo) runs its stages
instead, as `python -m cir.grid CONFIG` would.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cir.config import load_config, read_yaml, run_cli
from cir.grid.__main__ import main as run_grid
from cir.schema import FitConfig
from cir.training import train


def main(path: str | None, overrides: list[str]) -> Path | None:
    """usage: python -m cir.fit CONFIG [key=value ...] [--debug]"""
    raw = read_yaml(Path(path)) if path is not None else None
    if raw is not None and raw.get("task") == "grid":
        if run_grid(path, overrides):
            raise SystemExit(1)
        return None
    cfg = load_config(FitConfig, path, overrides, raw=raw)
    record = train(cfg)
    out = Path(cfg.output_dir)
    if record is not None:
        export, name = record["export"], record["export_model_name"]
        print(f"export: {export} (load with model.name={name} model.pretrained={export})")
        print(f"run record: {out / 'run.json'}\ntensorboard: tensorboard --logdir {out}")
    return out


def cli(argv: list[str] | None = None, prog: str | None = None) -> None:
    torch.set_float32_matmul_precision("high")
    run_cli(main, argv, "fit", prog)


if __name__ == "__main__":
    cli()
