"""Every command a user runs, in one registry: its module, one line, real examples, which experiment files apply.

`cir --help`, each command's `--help` (as `cir fit` or `python -m cir.fit`), `cir config` and the docs' command
check all read it, so a new command or experiment file shows up everywhere at once. Which experiments apply is read
from the files' `task:` key at run time (a file without one is an evaluation config), never listed by hand.
"""

from __future__ import annotations

import argparse
import importlib
import re
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
DOCS = "README.md and docs/ (docs/configuration.md lists every key)"
EVAL_TASK = "evaluation"  # what a file without `task:` is
FIT_TASKS = ("tat", "pretrain", "supervised", "grid")


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    summary: str
    examples: tuple[str, ...]
    tasks: tuple[str, ...] = ()  # the `task:` values of the experiment files it runs
    schema: str | None = None  # "module:Class" of its typed config, for the key groups
    usage: str = "CONFIG [key=value ...]"
    own_flags: bool = False  # its main parses its own flags (run_cli passes them through in order)
    argv_main: bool = False  # its main(argv, prog) parses the whole command line itself, as a `cli` entry does


COMMANDS = {c.name: c for c in (
    Command("fit", "cir.fit", "train: TAT, pretraining or supervised fine-tuning (or a grid of runs)",
            ("cir fit experiments/demo.yaml",
             "cir fit experiments/tat_vitl.yaml data.train_shards='/data/cc3m/{000000..000331}.tar'",
             "cir fit experiments/demo_tat.yaml trainer.max_steps=50 output_dir=outputs/tat_short"),
            FIT_TASKS, "cir.schema:FitConfig"),
    Command("evaluate", "cir.evaluate", "zero-shot evaluation of a model on CIRR, CIRCO, FashionIQ or GeneCIS",
            ("cir evaluate experiments/eval_cirr.yaml data.root=/data/cirr",
             "cir evaluate experiments/eval_circo.yaml model.name=ViT-B-32 eval.save_features=true",
             "cir evaluate experiments/quickstart.yaml"),
            (EVAL_TASK,), "cir.schema:EvaluateConfig"),
    Command("submit", "cir.submit", "files for the CIRR / CIRCO test servers",
            ("cir submit experiments/eval_cirr.yaml data.root=/data/cirr",
             "cir submit experiments/eval_circo.yaml submit.split=val"),
            (EVAL_TASK,), "cir.schema:EvaluateConfig"),
    Command("grid", "cir.grid", "a grid of runs (stages x cells), locally or on SLURM; --only, --slurm, --dry-run",
            ("cir grid experiments/paper/anchor_ablation.yaml inputs.train_shards='/data/laion2m/{000000..000199}.tar' "
             "inputs.cirr=/data/cirr inputs.circo=/data/circo --dry-run",
             "cir grid experiments/paper/anchor_ablation.yaml inputs.train_shards='/data/laion2m/{000000..000199}.tar' "
             "inputs.cirr=/data/cirr inputs.circo=/data/circo --slurm",
             "cir grid experiments/demo.yaml --only seed-0/tat_text"),
            ("grid",), "cir.grid.spec:GridConfig", "CONFIG [key=value ...] [--only CELL/STAGE] [--slurm] [--dry-run]"),
    Command("report", "cir.report", "our results beside the paper's, as a markdown table (and CSV or markdown file)",
            ("cir report outputs/demo", "cir report outputs/main_results --out report.md",
             "cir report outputs/eval outputs/fit --out table.csv"),
            usage="DIR... [--out FILE.md|FILE.csv] [--tensorboard DIR]"),
    Command("browse", "cir.browse", "a local web page to query a gallery and compare two models",
            ("cir browse experiments/eval_cirr.yaml data.root=/data/cirr",
             "cir browse experiments/eval_cirr.yaml browse.compare.name=ViT-B-32 browse.compare.pretrained=openai"),
            (EVAL_TASK,), "cir.schema:BrowseConfig"),
    Command("synth", "cir.data.synth", "the generated benchmark (shards and a CIRR-layout split) the demo trains on",
            ("cir synth experiments/demo_synth.yaml output_dir=outputs/synth",
             "cir synth --out outputs/synth_small --seed 1 --tune-samples 512"),
            ("synth",), "cir.data.synth.settings:SynthRunConfig",
            "CONFIG [key=value ...] | --out DIR [--seed N] [size flags]", argv_main=True),
    Command("shards", "cir.data.make_shards", "WebDataset image-caption shards from an image folder, LLaVA JSON or CC3M TSV",
            ("cir shards folder --images photos --captions captions.csv --out shards",
             "cir shards llava --json blip_laion_cc_sbu_558k.json --image-root llava/images --out shards/llava"),
            usage="{folder,llava,cc3m} --out DIR ...", argv_main=True),
    Command("embed-text", "cir.data.embed_text", "cache caption embeddings in shards so TAT needs no text tower",
            ("cir embed-text --shards 'shards/shard-{000000..000009}.tar' --model ViT-B-32 --pretrained openai "
             "--out shards_txt",),
            usage="--shards PATTERN --model NAME --pretrained TAG --out DIR", argv_main=True),
    Command("check", "cir.data.check", "check a config's data before a run: images, annotations, shards",
            ("cir check experiments/eval_cirr.yaml data.root=/data/cirr", "cir check cirr /data/cirr --quick"),
            (EVAL_TASK, "tat", "pretrain", "supervised"), None,
            "CONFIG [key=value ...] [--json] [--quick] | BENCHMARK ROOT", own_flags=True),
    Command("export", "cir.publish", "a trained run as an open_clip hub folder (weights, config, model card)",
            ("cir export outputs/tat_vitl --out hub/tat-vitl",), usage="RUN_DIR|CKPT --out DIR [--evals DIR ...]", own_flags=True),
    Command("config", "cir.cli", "the resolved config a command would run with (--keys: every key it takes)",
            ("cir config experiments/eval_cirr.yaml eval.alphas=[0.8]", "cir config experiments/tat_vitl.yaml --keys"),
            ("tat", "pretrain", "supervised", "grid", "synth", EVAL_TASK), None, "CONFIG [key=value ...] [--keys]"),
)}
BY_MODULE = {c.module: c for c in COMMANDS.values()}


def experiment_task(path: Path) -> str:
    """The file's `task:` after its `base:` chain (read as plain YAML: this is help text, not validation)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "?"
    if not isinstance(data, dict):
        return "?"
    if "task" in data:
        return str(data["task"])
    bases = data.get("base") or []
    for base in [bases] if isinstance(bases, str) else bases:
        task = experiment_task(path.parent / base)
        if task != EVAL_TASK:
            return task
    return EVAL_TASK


def experiments_for(tasks: tuple[str, ...], folder: Path = EXPERIMENTS) -> list[tuple[Path, str]]:
    """(file, task) of every experiment file whose task the command runs, found now in experiments/."""
    found = [(p, experiment_task(p)) for p in sorted(folder.rglob("*.yaml"))]
    return [(p, t) for p, t in found if t in tasks]


def key_groups(schema: str | None) -> list[str]:
    """The top-level keys of a command's typed config (model, data, ...)."""
    if schema is None:
        return []
    module, name = schema.split(":")
    return [f.name for f in fields(getattr(importlib.import_module(module), name))]


def epilog(command: Command) -> str:
    """What a command's --help says after its options: examples, experiments, key groups, where to read on."""
    lines = ["examples:", *(f"  {example}" for example in command.examples)]
    if command.tasks:
        root = EXPERIMENTS.parent
        files = [f"  {p.relative_to(root)}  ({task})" for p, task in experiments_for(command.tasks)]
        lines += ["", f"experiment files for it (task: {', '.join(command.tasks)}):", *(files or ["  (none)"])]
    groups = key_groups(command.schema)
    if groups:
        lines += ["", f"key groups: {', '.join(groups)}",
                  "  every key with type, default and meaning: cir config CONFIG --keys"]
    lines += ["", f"more: {DOCS}"]
    return "\n".join(lines)


def description(command: Command, doc: str | None = None) -> str:
    """The command's module docstring (`doc`: the running module's), less a leading usage line the parser prints."""
    doc = (doc or importlib.import_module(command.module).__doc__ or command.summary).strip()
    doc = re.sub(r"^`[^`\n]*`:\s*", "", doc)
    return doc[:1].upper() + doc[1:]


def parser_for(name: str, prog: str | None = None, doc: str | None = None) -> argparse.ArgumentParser:
    """The one parser convention: description, examples and experiments in --help, and --debug."""
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(
        prog=prog or f"python -m {command.module}", usage=f"%(prog)s {command.usage} [--debug]",
        description=description(command, doc), epilog=epilog(command),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback; log every line")
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", metavar="CONFIG", help="an experiment YAML (see the list below)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config keys to override, e.g. trainer.max_steps=100 (cir config CONFIG --keys lists them)")
