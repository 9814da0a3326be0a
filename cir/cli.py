"""`cir COMMAND ...`: every command a user runs, behind one word; `python -m cir.<module>` runs the same code.

`cir config CONFIG [key=value ...]` prints the config a command would run with, resolved and type-checked, as the
run saves it in its config.yaml (data.batch_size null is derived later, from the devices the run gets), without
running anything; `--keys` lists every key that config takes, with its type, default and meaning (cir.keys).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from cir.commands import COMMANDS, EVAL_TASK
from cir.config import ConfigError, load_config, read_yaml, run_cli, to_yaml
from cir.keys import format_keys, schema_keys

# An experiment file's `task:` -> the typed config it is read with (a file without `task:` is an evaluation config).
SCHEMAS = {"tat": "cir.schema:FitConfig", "pretrain": "cir.schema:FitConfig", "supervised": "cir.schema:FitConfig",
           "grid": "cir.grid.spec:GridConfig", "synth": "cir.data.synth.settings:SynthRunConfig",
           EVAL_TASK: "cir.schema:EvaluateConfig"}


def schema_of(task: str) -> type:
    module, name = SCHEMAS[task].split(":")
    return getattr(importlib.import_module(module), name)


def resolved(path: str, overrides: list[str]) -> str:
    """The config as the run would save it: a grid as cir.grid reads it, any other through load_config."""
    raw = read_yaml(Path(path))
    task = str(raw.get("task", EVAL_TASK))
    if task == "grid":
        from cir.grid.plan import load_grid

        cfg, _ = load_grid(path, overrides)
        return OmegaConf.to_yaml(cfg)  # `${...}` left as written: each cell resolves them
    if task not in SCHEMAS:
        raise ConfigError(f"{path}: config key `task`: expected one of {sorted(set(SCHEMAS) - {EVAL_TASK})}, got {task!r}")
    return to_yaml(load_config(schema_of(task), path, overrides, raw=raw))


def show(path: str | None, overrides: list[str], keys: bool = False) -> None:
    """Prints the resolved config (or with `keys`, every key it takes); runs nothing."""
    if path is None:
        raise ConfigError("usage: cir config CONFIG [key=value ...] [--keys]")
    if keys:
        task = str(read_yaml(Path(path)).get("task", EVAL_TASK))
        print(format_keys(schema_keys(schema_of(task) if task in SCHEMAS else schema_of(EVAL_TASK))))
        return
    print(resolved(path, overrides), end="")


def config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", action="store_true", help="list every key the config takes: type, default, meaning")


def run(name: str, argv: list[str]) -> None:
    """One command, parsed by its own parser under the name `cir NAME`."""
    prog, command = f"cir {name}", COMMANDS[name]
    if name == "config":
        run_cli(show, argv, "config", prog, config_options)
        return
    package = importlib.import_module(command.module)
    module = importlib.import_module(f"{command.module}.__main__") if hasattr(package, "__path__") else package
    entry = module.main if command.argv_main else getattr(module, "cli", None)
    if entry is None:  # a command that is run_cli(main) and nothing else
        run_cli(module.main, argv, name, prog, passthrough=command.own_flags)
        return
    status = entry(argv, prog)
    if isinstance(status, int) and status:
        raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:2] == ["data", "check"]:
        args = ["check", *args[2:]]
    width = max(map(len, COMMANDS))
    table = "\n".join(f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS.values())
    parser = argparse.ArgumentParser(
        prog="cir", usage="cir COMMAND [CONFIG] [key=value ...] [--debug]  (cir COMMAND --help: examples, experiments)",
        description="Composed image retrieval with Slerp and Text-Anchored Tuning (TAT), on PyTorch Lightning.",
        epilog=f"commands:\n{table}\n\nstart: cir fit experiments/demo.yaml (the demo, ~10 min on 2 CPU cores)\n"
               "more: README.md (its table lists the docs/ pages), docs/commands.md (every command with an example)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    if not args:
        parser.print_help(sys.stderr)
        raise SystemExit(2)
    parser.parse_args(args[:1])
    run(args[0], args[1:])


if __name__ == "__main__":
    main()
