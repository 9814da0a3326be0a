"""Command line: `python -m cir.data.synth --out DIR --seed N [size flags]`, or with a config as a grid stage runs it:
`python -m cir.data.synth CONFIG [key=value ...]` (`task: synth`, cir.data.synth.settings)."""

from __future__ import annotations

import json
import sys
from dataclasses import fields

from cir.commands import parser_for
from cir.config import load_config, run_cli
from cir.data.synth import settings
from cir.data.synth.writer import SynthSizes, generate

_HELP = {
    "image_size": "side of the square images in pixels (drawn at twice this, then downscaled)",
    "pretrain_samples": "images in the pretraining shards",
    "tune_samples": "image-text pairs in the tuning (TAT) shards",
    "train_queries": "queries of the CIRR train split (supervised fine-tuning)",
    "val_queries": "queries of the CIRR val split",
    "test_queries": "queries of the CIRR test1 split (targets hidden)",
    "shard_size": "samples per tar shard",
    "multi_object_rate": "share of CIR queries that add or remove an object",
    "pretrain_captions": "captions per pretraining image (each image written that many times)",
}


def from_config(path: str | None, overrides: list[str]) -> None:
    """Generates the benchmark a config describes and prints its manifest."""
    cfg = load_config(settings.SynthRunConfig, path, overrides)
    print(json.dumps(settings.run(cfg), indent=1))


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        run_cli(from_config, args, "synth", prog)
        return
    parser = parser_for("synth", prog, __doc__)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    defaults = SynthSizes()
    for item in fields(SynthSizes):
        default = getattr(defaults, item.name)
        parser.add_argument(
            f"--{item.name.replace('_', '-')}", type=type(default), default=default,
            help=f"{_HELP[item.name]} (default {default})",
        )
    args = parser.parse_args(args)
    sizes = {item.name: getattr(args, item.name) for item in fields(SynthSizes)}
    try:
        manifest = generate(args.out, args.seed, progress=not args.quiet, **sizes)
    except ValueError as error:
        if args.debug:
            raise
        parser.error(str(error))
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
