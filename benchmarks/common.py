"""What every benchmark script shares: pinned threads, interleaved repeats, ratios, machine and load notes, data.

Timings on a shared CPU are only comparable side by side, so each script runs
its contenders alternately (ABAB..., the order flipped every round) and reports
the median of the per-round ratios, never an absolute time. Scratch data lives
under CIR_BENCH_DIR (default <repo>/outputs/bench, ignored by git) and is
reused across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(os.environ.get("CIR_BENCH_DIR", REPO / "outputs" / "bench"))
THREADS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def arguments(doc: str | None, threads: int = 1) -> argparse.ArgumentParser:
    """A benchmark's command line with the options every one takes: --threads and --json."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    return parser


def pin_threads(threads: int) -> None:
    """One fixed intra-op thread count for this process and its children.

    On a CPU shared with other jobs, OpenMP threads that spin-wait for a busy
    core make a step several times slower at random; one thread per contender
    keeps the side-by-side ratio meaningful.
    """
    for name in THREADS_ENV:
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


def child_env(threads: int) -> dict[str, str]:
    """Environment for a benchmark subprocess: same thread pinning, repo importable."""
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREADS_ENV})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def interleaved(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each contender once per round, alternating the order, and collect its figure per round."""
    names = list(contenders)
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            value = contenders[name]()
            results[name].append(value)
            print(f"  round {r + 1}/{rounds} {name}: {value:.4g}", flush=True)
    return results


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of the per-round ratio (each ratio measured side by side)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def steady_rate(ends: Sequence[float], samples: Sequence[int], warmup: int) -> float:
    """Samples per second between the end of step `warmup` and the end of the last step."""
    if len(ends) <= warmup + 1:
        raise ValueError(f"need more than {warmup + 1} steps to skip {warmup} warm-up steps, got {len(ends)}")
    return sum(samples[warmup + 1 :]) / (ends[-1] - ends[warmup])


def quiet() -> None:
    """Keep Lightning's banners and deprecation warnings out of the benchmark output."""
    import logging
    import warnings

    import lightning  # noqa: F401  (it sets its loggers' levels on import: override them after)

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)


def header(title: str, threads: int) -> dict[str, Any]:
    quiet()
    info = {**machine(), "threads": threads, "load_before": load(), "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv])}
    print(f"== {title}")
    print("   " + ", ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    return info


def finish(name: str, info: dict[str, Any], figures: dict[str, Any], verdicts: list[tuple[bool, str]], json_path: str | None) -> int:
    """Print the figures and one verdict line per target; optionally save them as JSON."""
    info = {**info, "load_after": load()}
    for key, value in figures.items():
        print(f"   {key}: {value:.4g}" if isinstance(value, float) else f"   {key}: {value}")
    print(f"   load before/after: {info['load_before']} / {info['load_after']}")
    for ok, text in verdicts:
        print(f"VERDICT {'MET' if ok else 'MISSED'}: {text}", flush=True)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps({"benchmark": name, **info, "figures": figures,
                                               "verdicts": [{"met": ok, "text": t} for ok, t in verdicts]}, indent=2))
    return 0


def run_child(args: Sequence[str], threads: int, timeout: float = 1800) -> dict[str, Any]:
    """Run `python <args>` and return the JSON object on its last stdout line."""
    proc = subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True, env=child_env(threads), timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def synth_data(samples: int, queries: int = 1000, image_size: int = 32, shard_size: int = 1000) -> Path:
    """The project's generated benchmark (tuning shards + CIRR-layout split), written once and reused."""
    from cir.data.synth.writer import generate

    out = BENCH_DIR / f"synth-{samples}-{queries}-{image_size}"
    generate(out, seed=0, progress=False, image_size=image_size, pretrain_samples=1, tune_samples=samples,
             train_queries=1, val_queries=queries, test_queries=1, shard_size=shard_size)
    return out


def tune_shards(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "shards").glob("tune-*.tar"))


def saved_backbone(model: str = "cir-tiny", seed: int = 0) -> Path:
    """A random-init open_clip checkpoint written once, so every contender starts from the same weights."""
    import torch

    from cir.models import create_backbone

    path = BENCH_DIR / "weights" / f"{model}-seed{seed}.pt"
    if not path.is_file():
        torch.manual_seed(seed)
        backbone = create_backbone(model, "none")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(backbone.model.state_dict(), path)
    return path


def fit_config(*overrides: str):
    """A validated cir.fit config (FitConfig schema + overrides), as `python -m cir.fit` would build it."""
    from cir.config import load_config
    from cir.config_checks import check_fit_config
    from cir.schema import FitConfig

    cfg = load_config(FitConfig, None, ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
                                        "checkpoint.every_n_steps=1000000", *overrides])
    check_fit_config(cfg)
    return cfg


def step_timer():
    """A Lightning callback that records the wall time and batch size at the end of every training step."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.samples: list[int] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if module.device.type == "cuda":
                import torch

                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())
            self.samples.append(int(batch[0].shape[0]))

    return StepTimer()


def lightning_fit(cfg, module, data, out: Path, *, minimal: bool = False) -> tuple[list[float], list[int]]:
    """Train `module` on `data` (a DataModule or a loader) with the Trainer cir.fit builds; return step end times.

    minimal=True drops the logger and cir.fit's callbacks, to show what they cost.
    """
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from cir.config import check_kwargs
    from cir.training import callbacks

    timer = step_timer()
    kwargs = check_kwargs(cfg.trainer, L.Trainer, "trainer")
    if minimal:
        trainer = L.Trainer(logger=False, callbacks=[timer], enable_checkpointing=False, enable_model_summary=False,
                            num_sanity_val_steps=0, **kwargs)
    else:
        logger = TensorBoardLogger(str(out), name="tensorboard", version="", default_hp_metric=False)
        trainer = L.Trainer(default_root_dir=str(out), logger=logger, callbacks=[*callbacks(cfg, out), timer],
                            enable_model_summary=False, num_sanity_val_steps=0, **kwargs)
    if isinstance(data, L.LightningDataModule):
        trainer.fit(module, datamodule=data)
    else:
        trainer.fit(module, train_dataloaders=data)
    return timer.ends, timer.samples


def module_at(rev: str, path: str, name: str):
    """Import the file `path` as it is at git revision `rev` (read with `git show`), to measure a change side by side."""
    import importlib.util

    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    folder = BENCH_DIR / "baseline" / rev.replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Cycle:
    """`steps` batches drawn in turn from a fixed list: a map-style dataset for DataLoader(batch_size=None)."""

    def __init__(self, items: list, steps: int) -> None:
        self.items, self.steps = items, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int):
        return self.items[i % len(self.items)]


def training_images(backbone):
    """The image transform training uses (cir.tasks.base.training_transform without aug_cfg): uint8 where it can be."""
    from cir.data.transforms import uint8_version

    return uint8_version(backbone.preprocess_train) or backbone.preprocess_train


def memory_batches(urls: list[str], backbone, batch_size: int, count: int, text_embedding_key: str | None = None,
                   image_transform=None) -> list:
    """`count` full training batches read once from shards (tokens, or cached embeddings with text_embedding_key),
    made by `image_transform` (default: the backbone's open_clip transform, float)."""
    from cir.data.shards import image_text_pipeline

    pipeline = image_text_pipeline(urls, image_transform=image_transform or backbone.preprocess_train, batch_size=batch_size,
                                   shuffle_buffer=0,
                                   tokenize=None if text_embedding_key else backbone.tokenize, text_embedding_key=text_embedding_key)
    out = []
    for batch in pipeline:
        if len(out) == count:
            break
        if batch.images.shape[0] == batch_size:
            out.append(batch)
    return out


def new_tat_module(cfg):
    """A fresh TAT LightningModule, seeded so every contender starts from the same LoRA init."""
    import torch
    from omegaconf import OmegaConf

    from cir.tasks.tat import TextAnchoredTuning

    torch.manual_seed(0)
    return TextAnchoredTuning(OmegaConf.to_container(cfg, resolve=True))


def embedded_shards(shards: list[str], weights: Path) -> Path:
    """Shards with each caption's embedding added by cir.data.embed_text, for the frozen backbone."""
    from cir.data.embed_text import META_FILE, embed_shards
    from cir.models import create_backbone

    out = BENCH_DIR / f"embedded-{weights.stem}-{Path(shards[0]).parent.parent.name}"
    if not (out / META_FILE).is_file():
        embed_shards(shards, out, create_backbone("cir-tiny", str(weights)), batch_size=256, overwrite=True)
    return out


def bench_venv(name: str, pins: Sequence[str], check: str) -> Path:
    """BENCH_DIR/<name>-venv holding benchmark-only packages, created once; returns its python.

    The venv's own site-packages come first and this interpreter's site-packages
    (torch, open_clip, cir's dependencies) are appended by a .pth file, so a pin
    such as webdataset==0.2.86 shadows the project's version only inside the venv.
    numpy is pinned to this interpreter's version so both sides share one numpy.
    """
    import sysconfig

    import numpy

    venv = BENCH_DIR / f"{name}-venv"
    python = venv / "bin" / "python"
    marker = venv / ".cir-bench-ready"
    wanted = " ".join([*pins, f"numpy=={numpy.__version__}"])
    if marker.is_file() and marker.read_text() == wanted:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *wanted.split()], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "system-site-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-c", check], check=True)
    marker.write_text(wanted)
    return python


def bare_loop(module, loader, total_steps: int, cfg, device: str = "cpu", autocast: str | None = None) -> tuple[list[float], list[int]]:
    """TAT's step without Lightning: features, ClipLoss, backward, AdamW, LambdaLR, zero_grad; returns step end times.

    Same parameter groups and schedule as ContrastiveTask.configure_optimizers;
    autocast="bf16" runs the forward under torch.autocast as Lightning's bf16-mixed does.
    """
    import contextlib

    import torch

    from cir.tasks.base import warmup_cosine

    optim = cfg.optim
    module.to(device).train()
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if p.ndim >= 2], "weight_decay": optim.weight_decay},
              {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, optim.warmup_steps, total_steps))
    scope = (lambda: torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)) if autocast == "bf16" else contextlib.nullcontext
    ends, samples = [], []
    for images, texts, _ in loader:
        images, texts = images.to(device), texts.to(device)
        with scope():
            image, text = module.features(images, texts)
            loss = module.loss_fn(image, text, module.logit_scale())
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if device != "cpu":
            torch.cuda.synchronize()
        ends.append(time.perf_counter())
        samples.append(images.shape[0])
    return ends, samples
