"""When a run's folder counts as done: one completion record, written last, naming the outputs and what made them.

`cir.fit`, `cir.evaluate`, `cir.submit` and a `task: synth` config (cir.data.synth.settings) write
`<output_dir>/completion.json` twice: at the
start `{"state": "running", "fingerprint": ...}` (which replaces the record of
an earlier run, so a folder being rewritten is never done), and after every
output is written `{"state": "done", ...}` with the outputs (path and size) and
the inputs the run read. Every write is atomic (cir.io), so a kill anywhere
leaves either the old record, the running one, or the done one, and "done"
always means every output named in it was there first.

The fingerprint is what decides the result, computed from the config before
anything runs (so a grid can compare it with what it would run now):
  config   the resolved config (the launch shape aside: LAUNCH_KEYS), as text;
  model    the model config JSON's contents (`model.name=PATH.json`, or a config
           shipped in cir/models/configs such as cir-demo), by content;
  weights  the files the run starts from (`model.pretrained`, `init_from`; a
           folder: every file in it), by size and modification time;
  data     the training shards and cached text embeddings (local files), by size
           and modification time.
The record adds `inputs`: the annotation files the run read (cir.data.inputs),
by content, and for an evaluation `images`: every benchmark image it encoded,
by size and mtime (one stat each, no read: CIRCO's 123,403 in about a second),
the same stamp the feature cache keys on. Weights and shards are identified by size and mtime, not by a hash,
because they are large (a ViT-L export is 1.7 GB, shards hundreds of GB) and a
grid checks every call on every run; every writer (cir's atomic writes, cp, a
download) gives a rewritten file a new mtime. Small text files are hashed, so
a copy with new dates but the same contents stays the same input.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from cir.config import to_yaml
from cir.io import write_json

RECORD = "completion.json"
RUNNING, DONE = "running", "done"
PARTS = ("config", "model", "weights", "data")  # of a fingerprint
# Where a run ran, not what it computed: slurm/tat.sbatch sets them from the job's allocation.
LAUNCH_KEYS = ("trainer.num_nodes", "trainer.devices")


def config_text(cfg: DictConfig) -> str:
    """The resolved config as YAML, without the launch shape (the same run on other devices is the same run)."""
    plain = OmegaConf.create(to_yaml(cfg))
    for key in LAUNCH_KEYS:
        section, _, name = key.partition(".")
        if isinstance(plain.get(section), DictConfig):
            plain[section].pop(name, None)
    return to_yaml(plain)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_id(path: str | Path) -> str:
    """A small file by its contents ("missing" when there is none)."""
    return sha256(Path(path)) if Path(path).is_file() else "missing"


def stamp(path: str | Path) -> str:
    """`size:mtime_ns` of a file (`missing` if absent): one stat, no read."""
    try:
        info = os.stat(path)
    except OSError:
        return "missing"
    return f"{info.st_size}:{info.st_mtime_ns}"


def image_stamps(paths: Iterable[Path]) -> dict[str, dict[str, str]]:
    """{folder: {file name: stamp}} of images, grouped by folder so the record of 123,403 images stays small."""
    folders: dict[str, dict[str, str]] = {}
    for path in paths:
        path = Path(path).absolute()
        folders.setdefault(str(path.parent), {})[path.name] = stamp(path)
    return folders


def stat_ids(path: str | Path) -> dict[str, Any]:
    """A large file (or every file of a folder) by size and mtime: {absolute path: [size, mtime_ns] or "missing"}."""
    path = Path(path).resolve()
    ids: dict[str, Any] = {}
    for file in files(path) or [path]:
        try:
            info = file.stat()
            ids[str(file)] = [info.st_size, info.st_mtime_ns]
        except FileNotFoundError:
            ids[str(file)] = "missing"
    return ids


def local_paths(value: Any) -> list[str]:
    """The local files a data setting names (a brace pattern or a list of shards, a file, a folder); none for
    `pipe:` or URL shards, which are taken on trust."""
    from webdataset.shardlists import expand_urls  # as the shard loader expands them (an import of seconds, paid
    # only by a fingerprint: cir.grid imports this module to start)

    if value is None:
        return []
    urls = expand_urls(value) if isinstance(value, str) else [str(v) for v in value]
    return [u for u in urls if not urlparse(u).scheme]


def shipped_configs() -> Path:
    """cir.models.CONFIG_DIR, found without importing cir.models (open_clip, transformers: seconds a grid would pay
    at every start to fingerprint its calls)."""
    models = importlib.util.find_spec("cir.models")
    assert models is not None and models.submodule_search_locations
    return Path(models.submodule_search_locations[0], "configs")


def model_config_file(name: str) -> Path | None:
    """The JSON a model name builds from: a path given as the name, or a config shipped with cir."""
    if name.endswith(".json"):
        return Path(name)
    shipped = shipped_configs() / f"{name}.json"
    return shipped if shipped.is_file() else None


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """What determines a run's result, from its config (see the module docstring); a config without a model
    (the generated benchmark's) is its config alone."""
    name = OmegaConf.select(cfg, "model.name")
    model = model_config_file(str(name)) if name is not None else None
    weights: dict[str, Any] = {}
    for value in (OmegaConf.select(cfg, "model.pretrained"), OmegaConf.select(cfg, "init_from"), name):
        if value is not None and Path(str(value)).exists() and not str(value).endswith(".json"):
            weights |= stat_ids(str(value))  # a checkpoint file, or a save_pretrained folder (BLIP)
    data: dict[str, Any] = {}
    for key in ("data.train_shards", "data.text_embeddings", "eval.gap_pairs"):
        for path in local_paths(OmegaConf.select(cfg, key)):
            data |= stat_ids(path)
    return {"config": hashlib.sha256(config_text(cfg).encode()).hexdigest(),
            "model": content_id(model) if model is not None else None, "weights": weights, "data": data}


def start(out: str | Path, made_by: dict[str, Any]) -> None:
    """The run begins: its folder is no longer done (an earlier run's record is replaced)."""
    write_json(Path(out) / RECORD, {"state": RUNNING, "fingerprint": made_by})


def finish(out: str | Path, made_by: dict[str, Any], outputs: Iterable[str | Path],
           inputs: Iterable[Path] = (), images: Iterable[Path] = ()) -> None:
    """Every output is written: the done record, last, naming them (relative path and size), the inputs read and
    the images encoded."""
    out = Path(out)
    named = {str(Path(p).resolve().relative_to(out.resolve())): Path(p).stat().st_size for p in outputs}
    write_json(out / RECORD, {"state": DONE, "fingerprint": made_by, "outputs": dict(sorted(named.items())),
                              "inputs": {str(p): content_id(p) for p in sorted(inputs)},
                              "images": image_stamps(images)})


def read(out: str | Path) -> dict[str, Any] | None:
    try:
        record = json.loads((Path(out) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def changed(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first part of a fingerprint that differs, in words, naming the first file that differs (None: the same)."""
    for part in PARTS:
        was, now = old.get(part), new.get(part)
        if was == now:
            continue
        if isinstance(was, dict) and isinstance(now, dict):
            path = next(p for p in sorted(set(was) | set(now)) if was.get(p) != now.get(p))
            return f"{part} changed ({path})"
        return f"{part} changed"
    return None


def why_not_done(out: str | Path, made_by: dict[str, Any]) -> str | None:
    """None when `out` holds a finished run with this fingerprint whose outputs and inputs are as recorded;
    otherwise the reason, in a few words."""
    out = Path(out)
    record = read(out)
    if record is None:
        return "no completion record"
    if record.get("state") != DONE:
        return "interrupted"
    reason = changed(record.get("fingerprint") or {}, made_by)
    if reason is not None:
        return reason
    for name, size in (record.get("outputs") or {}).items():
        path = out / name
        if not path.is_file() or path.stat().st_size != size:
            return f"output {name} missing or changed"
    for name, digest in (record.get("inputs") or {}).items():
        if content_id(name) != digest:
            return f"input {name} changed"
    for folder, names in (record.get("images") or {}).items():
        for name, was in names.items():
            if stamp(Path(folder) / name) != was:
                return f"image {Path(folder) / name} changed"
    return None


def same_run(out: str | Path, made_by: dict[str, Any]) -> bool:
    """The folder holds a run (finished or interrupted) of this very fingerprint: one that may resume there."""
    record = read(out)
    return record is not None and record.get("fingerprint") == made_by


def files(path: str | Path) -> list[Path]:
    """A file, or every file under a folder (none when there is nothing there)."""
    path = Path(path)
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
