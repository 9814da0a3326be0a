"""The generated benchmark as a config (`task: synth`), so that a grid can run it as one of its stages.

`python -m cir.data.synth CONFIG [key=value ...]` writes the config it ran with
to <output_dir>/config.yaml and keeps a completion record (cir.completion), as
cir.fit and cir.evaluate do: a grid skips the stage when the record says done
with this config's fingerprint and every file it names is there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cir import completion
from cir.config import ConfigError, require, to_yaml
from cir.data.synth.writer import (
    SHARD_SETS,
    SynthSizes,
    generate,
    shard_pattern,
)
from cir.io import atomic_write_text

CONFIG_FILE = "config.yaml"

# The generator's seed and sizes with the generator's defaults, so the config can never drift from them.
SynthSettings = make_dataclass(
    "SynthSettings",
    [("seed", int, field(default=0)), *((f.name, type(f.default), field(default=f.default)) for f in fields(SynthSizes))],
)
SynthSettings.__doc__ = "The benchmark's seed and sizes (cir.data.synth.SynthSizes)."


@dataclass
class SynthRunConfig:
    """`task: synth`: the benchmark under output_dir (shards/, cirr/, cirr/gap_pairs/)."""

    task: str = "synth"
    output_dir: str = "outputs/synth"
    synth: SynthSettings = field(default_factory=SynthSettings)  # type: ignore[valid-type]


def sizes(cfg: DictConfig) -> dict[str, Any]:
    """The generator's size arguments of a loaded config (its seed left out)."""
    settings = OmegaConf.to_container(cfg.synth, resolve=True)
    settings.pop("seed")
    return settings


def check_synth_config(cfg: DictConfig) -> None:
    require(cfg.task == "synth", "task", "synth", cfg.task)
    require(cfg.synth.seed >= 0, "synth.seed", "a non-negative integer", cfg.synth.seed)
    try:
        SynthSizes(**sizes(cfg))
    except ValueError as err:
        raise ConfigError(f"config key `synth`: {err}") from None


def outputs(cfg: DictConfig) -> dict[str, Any]:
    """What later stages read from the benchmark: its folder, the CIRR-layout root, the gap pairs folder and each
    shard set's brace pattern (known from the sizes before the shards exist)."""
    out = Path(cfg.output_dir).resolve()
    settings = SynthSizes(**sizes(cfg))
    return {"out": str(out), "cirr": str(out / "cirr"), "gap_pairs": str(out / "cirr" / "gap_pairs"),
            "shards": {s.name: str(out / "shards" / shard_pattern(s.name, settings)) for s in SHARD_SETS}}


def run(cfg: DictConfig, progress: bool = True) -> dict[str, Any]:
    """Generate (or find complete) the benchmark: the completion record says running first and, once every file
    is written, done, naming them all."""
    check_synth_config(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    made_by = completion.fingerprint(cfg)
    completion.start(out, made_by)
    atomic_write_text(out / CONFIG_FILE, to_yaml(cfg))
    manifest = generate(out, cfg.synth.seed, progress=progress, **sizes(cfg))
    completion.finish(out, made_by, [p for p in completion.files(out) if p.name != completion.RECORD])
    return manifest
