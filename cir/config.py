"""Typed experiment configs: a dataclass schema per command, YAML files in experiments/, CLI overrides.

Configs are OmegaConf structured configs in struct mode, so a mistyped key or a
wrong type fails before any expensive work starts, with the key named. An
experiment YAML may list `base:` files (relative to itself) that it overrides,
dinov2-style: small override files on top of shared defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import inspect
import math
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import BooleanNode, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cir.logs import setup_logging
from cir.signals import RankLost, stop_on_signals

BASE_KEY = "base"


class ConfigError(ValueError):
    """A user-facing config problem: the message names the key or file and what is expected."""


class InputError(Exception):
    """A fault in the user's files (data, annotations, images) that names the file or key: one line, as a ConfigError.

    Defined here, below cir.data, so that one_line_errors catches the data package's faults without importing it.
    """


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Read one experiment file with its `base:` chain merged underneath it."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular `{BASE_KEY}:` chain through {' -> '.join(map(str, seen))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends carry the line number in their text
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    bases = raw.pop(BASE_KEY, None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged = OmegaConf.create()
    for base in bases:
        merged = OmegaConf.merge(merged, read_yaml(path.parent / base, (*seen, path)))
    return OmegaConf.merge(merged, raw)


def _describe(err: OmegaConfBaseException, origin: str) -> str:
    key = getattr(err, "full_key", None) or "?"
    first = str(err).splitlines()[0]
    return f"{origin}: config key `{key}`: {first}"


def _split_list(text: str) -> list[str]:
    """`[a, b-{0..3}.tar]` -> ["a", "b-{0..3}.tar"]: commas inside braces or quotes do not split."""
    items, depth, quote, start = [], 0, "", 1
    for i, char in enumerate(text[1:-1], 1):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:-1])
    return [item.strip() for item in items if item.strip()]


def _list_item(text: str) -> Any:
    """A YAML scalar, or the text itself where YAML reads a brace pattern as a mapping or fails on it."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text.strip("'\"")
    return text.strip("'\"") if isinstance(value, (dict, list)) or value is None else value


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """`key=value` strings as OmegaConf.from_dotlist reads them, except that a list holding shard brace patterns
    (`data.train_shards=[/p/tune-{000000..000003}.tar]`, which YAML reads as a broken mapping) is a list of strings."""
    layer = OmegaConf.create()
    for override in overrides:
        try:
            layer = OmegaConf.merge(layer, OmegaConf.from_dotlist([override]))
            continue
        except yaml.YAMLError as err:
            key, value = override.split("=", 1)
            if not (value.startswith("[") and value.endswith("]")):
                raise ConfigError(f"command line: config key `{key}`: cannot parse {value!r} "
                                  f"({str(err).splitlines()[0]}); quote it: {key}='\"{value}\"'") from None
        OmegaConf.update(layer, key, [_list_item(item) for item in _split_list(value)], force_add=True)
    return layer


def check_finite(cfg: DictConfig | ListConfig, prefix: str = "") -> None:
    """inf and nan parse as floats (`optim.lr=inf`) but are never a setting: name the key."""
    items = cfg.items() if isinstance(cfg, DictConfig) else enumerate(cfg)
    for key, value in items:
        name = f"{prefix}.{key}" if isinstance(cfg, DictConfig) and prefix else f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, (DictConfig, ListConfig)):
            check_finite(value, name)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key `{name}`: expected a finite number, got {value}")


def check_booleans(schema: DictConfig, layer: DictConfig, origin: str, prefix: str = "") -> None:
    """OmegaConf takes any number for a bool (`eval.exclude_reference=2` as true): a bool key wants true or false."""
    for key in layer:
        try:
            target = schema._get_node(key)
        except OmegaConfBaseException:
            continue  # an unknown key: the merge names it
        value, name = layer._get_node(key), f"{prefix}{key}"
        if isinstance(value, DictConfig) and isinstance(target, DictConfig) and not target._is_none():
            check_booleans(target, value, origin, f"{name}.")
        elif isinstance(target, BooleanNode) and isinstance(value._value(), (int, float)) \
                and not isinstance(value._value(), bool):
            raise ConfigError(f"{origin}: config key `{name}`: expected true or false, got {value._value()!r}")


def _merge(schema: DictConfig, layer: DictConfig | list[str], origin: str) -> DictConfig:
    try:
        if isinstance(layer, list):
            layer = parse_overrides(layer)
        check_booleans(schema, layer, origin)
        return OmegaConf.merge(schema, layer)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err, origin)) from err


def open_nodes(cfg: DictConfig, keys: Sequence[str]) -> None:
    """Let free-form sections (trainer kwargs, augmentation settings) take any key; they are validated separately."""
    for key in keys:
        node = OmegaConf.select(cfg, key)
        if isinstance(node, DictConfig):
            OmegaConf.set_struct(node, False)


def check_override_form(overrides: Sequence[str]) -> None:
    """Every override is `key=value` (a bare word is a misplaced path or flag, not a setting)."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")


def load_config(
    schema: type,
    path: str | Path | None,
    overrides: Sequence[str] = (),
    free_form: Sequence[str] = ("trainer", "model.aug_cfg"),
    raw: DictConfig | None = None,
    resolve: bool = True,
) -> DictConfig:
    """Schema defaults <- experiment YAML (with its bases) <- `key=value` overrides, all type-checked.

    `raw`: the file as `read_yaml(path)` gave it, for a caller that has read it already. `resolve=False` leaves
    interpolations for later (a grid's `${stage.tat.export}`, resolved per cell).
    """
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    open_nodes(cfg, free_form)
    if path is not None:
        cfg = _merge(cfg, raw if raw is not None else read_yaml(Path(path)), str(path))
        open_nodes(cfg, free_form)
    check_override_form(overrides)
    cfg = _merge(cfg, list(overrides), "command line")
    if not resolve:
        return cfg
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err, "interpolation")) from err
    check_finite(cfg)
    return cfg


def check_kwargs(section: DictConfig | dict, target: Callable, key: str) -> dict[str, Any]:
    """Free-form sections go to a callable (Lightning's Trainer): reject names it does not take."""
    accepted = set(inspect.signature(target).parameters) - {"self"}
    return check_names(section, accepted, key, getattr(target, "__qualname__", str(target)))


def check_names(section: DictConfig | dict, accepted: Collection[str], key: str, target: str) -> dict[str, Any]:
    """check_kwargs with the names `target` takes given (cir.source_names reads them without importing it)."""
    kwargs = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"config key `{key}.{unknown[0]}`: not an argument of {target} (unknown: {', '.join(unknown)})")
    return kwargs


def require(condition: bool, key: str, expected: str, value: Any) -> None:
    """One-line validation of an impossible value, naming the key."""
    if not condition:
        raise ConfigError(f"config key `{key}`: expected {expected}, got {value!r}")


def to_yaml(cfg: DictConfig | ListConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


# A full disk, a quota, a read-only or forbidden location: the user's to fix, said in one line (naming the file).
FILESYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def run_cli(main: Callable[..., Any], argv: Sequence[str] | None = None, command: str | None = None,
            prog: str | None = None, options: Callable[[argparse.ArgumentParser], None] | None = None,
            passthrough: bool = False) -> Any:
    """`python -m cir.X CONFIG [key=value ...] [--debug]`, parsed by the command's parser (cir.commands: its --help
    teaches); `options` adds the command's own flags, given to `main` by name; `passthrough` leaves unknown flags
    in the overrides for a main that parses its own. No CONFIG first (nothing, or key=value alone, which would run the
    schema's defaults): usage, exit 2. User errors are one line
    and exit 2; a signal that stops the command ends it with 128 + the signal's number (cir.signals)."""
    from cir.commands import BY_MODULE, add_config_arguments, parser_for

    args = list(sys.argv[1:] if argv is None else argv)
    module = main.__module__
    if module == "__main__":  # python -m cir.X: the module's name as imported
        module = getattr(sys.modules["__main__"].__spec__, "name", module).removesuffix(".__main__")
    name = command or getattr(BY_MODULE.get(module), "name", None)
    if name is not None:
        parser = parser_for(name, prog, sys.modules[main.__module__].__doc__)
    else:
        parser = argparse.ArgumentParser(prog=prog, usage="%(prog)s CONFIG [key=value ...] [--debug]",
                                         description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--debug", action="store_true")
    add_config_arguments(parser)
    if options is not None:
        options(parser)
    if passthrough:  # the main parses its own flags, in the order given
        if {"-h", "--help"} & set(args):
            parser.print_help()
            raise SystemExit(0)
        rest = [a for a in args if a != "--debug"]
        parsed = argparse.Namespace(debug=len(rest) < len(args), config=None, overrides=rest)
        if rest and not rest[0].startswith("-"):
            parsed.config, parsed.overrides = rest[0], rest[1:]
    else:
        parsed = parser.parse_intermixed_args(args)
    extra = {k: v for k, v in vars(parsed).items() if k not in ("config", "overrides", "debug")}
    path, overrides = parsed.config, list(parsed.overrides)
    lead = next((a for a in [path, *overrides] if a is not None and not a.startswith("-")), None)
    if lead is None or "=" in lead:  # overrides alone would run the schema's defaults
        parser.print_usage(sys.stderr)
        given = f"; got {lead!r} first" if lead is not None else ""
        print(f"{parser.prog}: error: CONFIG is required and comes first, then key=value overrides{given} "
              "(see --help for the experiment files)", file=sys.stderr)
        raise SystemExit(2)
    setup_logging(parsed.debug)
    with one_line_errors(parsed.debug), stop_on_signals():
        return main(path, overrides, **extra)


@contextlib.contextmanager
def one_line_errors(debug: bool, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """A user's error (a config, a missing file, a full disk; `also`: the command's own) or a lost peer rank
    (cir.signals.RankLost) as one line and exit 2; with `debug`, or for anything else, the traceback."""
    try:
        yield
    except (ConfigError, InputError, RankLost, OSError, *also) as err:
        user_fixes = (not isinstance(err, OSError) or isinstance(err, (FileNotFoundError, InputError))
                      or err.errno in FILESYSTEM_ERRNOS)
        if debug or not user_fixes:
            raise
        print(f"error: {err}", file=sys.stderr)
        print("(rerun with --debug for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
