"""`python -m cir.data.check CONFIG [key=value ...] [--json] [--quick]`, or `BENCHMARK ROOT [key=value ...]`: is the
data of a run there, before any GPU time is spent?

For every benchmark split the config names (an evaluation's `data`, a training run's
`eval.benchmarks` and `supervised.train`): the annotation files read, the images
present / missing / empty (0 bytes) / unreadable (PIL cannot decode them; `--quick`
skips the decoding), the first few names of each, and the expected layout where
something is missing. For a training run's shards: shards, samples, and the bad
samples by the reasons training counts, found by training's own pipeline
(cir.data.shards) over every sample. One screen of text, or `--json` for scripts;
exit status 0 only when the run would start. `run(argv)` is the whole command, for a
`cir data check` subcommand to call.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from webdataset.shardlists import expand_urls

from cir.config import ConfigError, load_config, read_yaml, run_cli
from cir.data.image_text import train_shards
from cir.data.inputs import watch_inputs
from cir.data.retrieval_benchmarks import BENCHMARK_NAMES, AnnotationError, BenchmarkLayoutError, CIRBenchmark
from cir.data.retrieval_benchmarks.circo import CIRCO_LAYOUT
from cir.data.retrieval_benchmarks.cirr import CIRR_LAYOUT
from cir.data.retrieval_benchmarks.configured import load_configured
from cir.data.retrieval_benchmarks.fashioniq import FASHIONIQ_LAYOUT
from cir.data.retrieval_benchmarks.genecis import GENECIS_LAYOUT
from cir.data.samples import SKIP_REASONS
from cir.data.shard_sizes import count_samples, local_path
from cir.data.shards import image_text_pipeline
from cir.data.transforms import decode_rgb
from cir.schema import EvaluateConfig, FitConfig

LAYOUTS = {"cirr": CIRR_LAYOUT, "circo": CIRCO_LAYOUT, "fashioniq": FASHIONIQ_LAYOUT, "genecis": GENECIS_LAYOUT}
SHOWN = 3  # names listed per kind of problem
TRAINING_TASKS = ("tat", "pretrain", "supervised")
CHECK_BATCH = 256
QUIET_LOGGERS = ("cir.data.samples", "cir.data.shard_sizes")


@dataclass
class SplitReport:
    """One benchmark split: its annotation files, or the error that stopped loading it, and its images."""

    benchmark: str
    split: str
    root: str
    annotations: list[str] = field(default_factory=list)
    error: str | None = None
    images: int = 0
    present: int = 0
    missing: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    layout: str | None = None

    def blocking(self, skip_missing: bool) -> bool:
        """Whether this split stops the run (eval.missing_images=skip lets missing and empty images through)."""
        return bool(self.error or self.unreadable or (not skip_missing and (self.missing or self.empty)))


@dataclass
class ShardReport:
    """Training shards: how many, which are absent, their samples, and the samples training would skip, by reason."""

    pattern: str
    shards: int = 0
    absent: list[str] = field(default_factory=list)
    samples: int = 0
    usable: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def blocking(self) -> bool:
        return bool(self.absent) or self.usable == 0


class DecodeCheck:
    """Training's image decode (cir.data.transforms.decode_rgb, what the uint8 training path runs) without the crop:
    a sample that fails here is one training counts as bad_image."""

    takes_encoded = True

    def __call__(self, data: bytes) -> torch.Tensor:
        decode_rgb(data)
        return torch.empty(0, dtype=torch.uint8)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _image_state(bench: CIRBenchmark, image_id: str, decode: bool) -> str:
    """present | missing | empty | unreadable, as evaluation would find the image (read by the benchmark's own
    load_image: the file as RGB, cropped where the benchmark crops)."""
    path = bench.image_paths.get(image_id)
    if path is None or not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    if decode:
        try:
            bench.load_image(image_id)
        except Exception:  # whatever PIL raises on a file it cannot decode, the run would stop on it
            return "unreadable"
    return "present"


def check_images(bench: CIRBenchmark, report: SplitReport, decode: bool) -> None:
    """Every image the split needs (gallery, references, ground truths, ranked sets), by state, in split order."""
    needed = dict.fromkeys(bench.gallery)
    for query in bench.queries:
        needed.update(dict.fromkeys((query.reference, *query.targets, *query.subset)))
    paths = [bench.image_paths.get(image_id) for image_id in needed]
    with ThreadPoolExecutor(max_workers=8) as pool:  # PIL decodes with the GIL released
        states = list(pool.map(lambda image_id: _image_state(bench, image_id, decode), needed))
    report.images = len(paths)
    for image_id, path, state in zip(needed, paths, states):
        name = _relative(path, Path(report.root)) if path is not None else image_id
        if state == "present":
            report.present += 1
        else:
            getattr(report, state).append(name)
    if report.missing or report.empty:
        report.layout = LAYOUTS.get(bench.name.split("_")[0])


def check_benchmark(bench_cfg: Any, fashioniq_captions: str, decode: bool) -> list[SplitReport]:
    """The splits a benchmark config names (one per FashionIQ category / GeneCIS task), or the error loading them."""
    root = Path(bench_cfg.root).expanduser()
    try:
        with watch_inputs() as read:
            benches = load_configured(bench_cfg, None, fashioniq_captions)
    except (BenchmarkLayoutError, AnnotationError, ValueError) as err:
        message = str(err)
        layout = message.split("\n", 1)[1] if isinstance(err, BenchmarkLayoutError) and "\n" in message else None
        return [SplitReport(bench_cfg.name, bench_cfg.split, str(root), error=message.split("\n")[0], layout=layout)]
    files = sorted(_relative(p, root.resolve()) for p in read)
    reports = []
    for bench in benches:
        report = SplitReport(bench.name, bench.split, str(root), annotations=files)
        check_images(bench, report, decode)
        reports.append(report)
    return reports


def check_shards(shards: Any, embedding_key: str | None) -> ShardReport:
    """Shards and samples as training reads them: its pipeline, in order, over every sample once."""
    quiet = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # the report counts what training warns about sample by sample
        logger.setLevel(logging.ERROR)
    try:
        return _check_shards(shards, embedding_key)
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def _check_shards(shards: Any, embedding_key: str | None) -> ShardReport:
    report = ShardReport(str(shards))
    urls = expand_urls(shards) if isinstance(shards, str) else list(shards)
    report.shards = len(urls)
    report.absent = [u for u in urls if (p := local_path(u)) is not None and not p.is_file()]
    present = [u for u in urls if u not in report.absent]
    report.samples = sum(count_samples(path) for u in present if (path := local_path(u)) is not None)
    report.skipped = dict.fromkeys(SKIP_REASONS, 0)
    if not present:
        return report
    pipeline = image_text_pipeline(present, image_transform=DecodeCheck(), batch_size=CHECK_BATCH, shuffle_buffer=0,
                                   tokenize=None if embedding_key else _no_tokens, text_embedding_key=embedding_key)
    report.usable = sum(len(batch.images) for batch in pipeline)
    report.skipped = dict(pipeline.skip_stats.counts)  # in-process: every skip, those after the last sample too
    return report


def _no_tokens(texts: list[str]) -> torch.Tensor:
    """Captions are checked for presence (missing_caption), not tokenised: no model is built."""
    return torch.zeros(len(texts), 1, dtype=torch.long)


def _training_shards(cfg: DictConfig) -> tuple[Any, str | None] | None:
    """(shards, cached-embedding key) a TAT / pretraining run reads, as training finds them; absent shards stay."""
    return None if cfg.task == "supervised" else train_shards(cfg, expand=False)


def load_check_config(path: str | None, overrides: list[str]) -> tuple[DictConfig, bool]:
    """(config, is a training run): CONFIG with a `task` is cir.fit's, else cir.evaluate's; `BENCHMARK ROOT` is an
    evaluation of that benchmark (data.split and the rest as overrides)."""
    if path in BENCHMARK_NAMES and overrides and "=" not in overrides[0]:
        root, *rest = overrides
        return load_config(EvaluateConfig, None, [f"data.name={path}", f"data.root={root}", *rest]), False
    if path is None:
        raise ConfigError("usage: python -m cir.data.check CONFIG [key=value ...] | BENCHMARK ROOT [key=value ...]")
    raw = read_yaml(Path(path))
    task = raw.get("task")
    if task is None:
        return load_config(EvaluateConfig, path, overrides, raw=raw), False
    if task not in TRAINING_TASKS:
        raise ConfigError(f"{path}: task {task!r} has no data of its own to check: check each stage's config")
    return load_config(FitConfig, path, overrides, raw=raw), True


def check_config(cfg: DictConfig, training: bool, decode: bool = True) -> dict[str, Any]:
    """The whole report: {"splits": [...], "shards": {...} or None, "skip_missing": bool, "ok": bool}."""
    if training:
        benches = [*cfg.eval.benchmarks, *([cfg.supervised.train] if cfg.task == "supervised" else [])]
        splits = [r for bench_cfg in benches for r in check_benchmark(bench_cfg, cfg.eval.fashioniq_captions, decode)]
        source = _training_shards(cfg)
        shards = check_shards(*source) if source is not None else None
        skip_missing = False
    else:
        splits = check_benchmark(cfg.data, cfg.eval.fashioniq_captions, decode)
        shards = None
        skip_missing = cfg.eval.missing_images == "skip"
    ok = not any(r.blocking(skip_missing) for r in splits) and not (shards is not None and shards.blocking())
    return {"splits": [asdict(r) for r in splits], "shards": asdict(shards) if shards else None,
            "skip_missing": skip_missing, "decoded": decode, "ok": ok}


def _names(kind: str, names: list[str]) -> list[str]:
    if not names:
        return []
    more = f", ... ({len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return [f"    {kind} ({len(names)}): {', '.join(names[:SHOWN])}{more}"]


def format_report(report: dict[str, Any]) -> str:
    """The one-screen text of a report (check_config)."""
    lines = []
    for s in report["splits"]:
        head = f"{s['benchmark']}/{s['split']} under {s['root']}"
        if s["error"]:
            lines.append(f"{head}: cannot load: {s['error']}")
        else:
            lines.append(f"{head}: annotations {', '.join(s['annotations'])}")
            unread = f", {len(s['unreadable'])} unreadable" if report["decoded"] else " (not decoded: --quick)"
            lines.append(f"  images: {s['images']} needed, {s['present']} present, {len(s['missing'])} missing, "
                         f"{len(s['empty'])} empty{unread}")
            for kind in ("missing", "empty", "unreadable"):
                lines += _names(kind, s[kind])
        if s["layout"]:
            lines += ["  expected layout:", *(f"    {line}" for line in s["layout"].splitlines())]
    shards = report["shards"]
    if shards is not None:
        lines.append(f"training shards {shards['pattern']}: {shards['shards']} shards, {len(shards['absent'])} absent, "
                     f"{shards['samples']} samples, {shards['usable']} usable")
        lines += _names("absent", shards["absent"])
        bad = ", ".join(f"{reason} {n}" for reason, n in shards["skipped"].items() if n)
        lines.append(f"  bad samples (skipped by training): {bad or 'none'}")
    if report["skip_missing"]:
        lines.append("eval.missing_images=skip: missing and empty images leave the gallery with their queries")
    lines.append("ok: the run would start" if report["ok"] else "not ok: the run would stop on the problems above")
    return "\n".join(lines)


def run(argv: Sequence[str]) -> int:
    """The command: parse, check, print; returns the exit status (0: the run would start, 1: it would not)."""
    parser = argparse.ArgumentParser(prog="python -m cir.data.check", add_help=False)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    flags, rest = parser.parse_known_args(list(argv))
    path = rest[0] if rest and "=" not in rest[0] else None
    cfg, training = load_check_config(path, rest[1:] if path is not None else rest)
    report = check_config(cfg, training, decode=not flags.quick)
    print(json.dumps(report, indent=1) if flags.json else format_report(report))
    return 0 if report["ok"] else 1


def main(path: str | None, overrides: list[str]) -> None:
    """usage: python -m cir.data.check CONFIG [key=value ...] [--json] [--quick] [--debug]
       or:    python -m cir.data.check BENCHMARK ROOT [key=value ...] [--json] [--quick]

    Reports, per benchmark split the config names, the annotation files and the images present / missing / empty /
    unreadable, and for a training run its shards and bad samples; exit status 0 only when the run would start."""
    status = run([a for a in (path, *overrides) if a is not None])
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    run_cli(main, passthrough=True)  # the command parses its own flags
