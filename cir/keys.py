"""Every key a config takes, with its type, default and one line of meaning, generated from what is accepted.

The typed schemas (cir.schema and the grid's and generator's) say the keys, types and defaults; each key's meaning
is the comment written beside the field (or on the lines right above it) in the schema's source, so the one place a
key is declared is also the one place it is explained. `trainer.*` goes to Lightning's Trainer as is: its keys come
from Trainer's signature and their meaning from Trainer's own docstring.
"""

from __future__ import annotations

import inspect
import io
import re
import tokenize
from dataclasses import MISSING, dataclass, fields, is_dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True)
class Key:
    name: str
    type: str
    default: Any
    meaning: str


@cache
def field_comments(cls: type) -> dict[str, str]:
    """field name -> its comment: the one on its line, else the comment lines right above it (joined)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # made by make_dataclass (the generator's sizes): no source, no comments
        return {}
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    comments = {tok.start[0]: tok.string.lstrip("#").strip() for tok in tokens if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    found: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        match = re.match(r"\s+(\w+)\s*:", line)
        if not match or line.lstrip().startswith("#"):
            continue
        if number in comments:
            found[match.group(1)] = comments[number]
            continue
        above, at = [], number - 1
        while at in comments and lines[at - 1].lstrip().startswith("#"):
            above.insert(0, comments[at])
            at -= 1
        if above:
            found[match.group(1)] = " ".join(above)
    return found


def _default(item: Any) -> Any:
    if item.default is not MISSING:
        return item.default
    if item.default_factory is not MISSING:
        return item.default_factory()
    return "???"


def _type_name(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def _nested(item: Any, default: Any) -> type | None:
    """The dataclass a field holds (ModelConfig for `model`; `ModelConfig | None` set to None: not walked)."""
    return type(default) if is_dataclass(default) else None


def schema_keys(cls: type, prefix: str = "") -> list[Key]:
    """Every leaf key of a dataclass schema, dotted, in declaration order (nested dataclasses walked)."""
    keys: list[Key] = []
    comments = {}
    for klass in reversed(cls.__mro__):  # a subclass's fields come after its base's, comments from where declared
        if is_dataclass(klass) and klass is not object:
            comments.update(field_comments(klass))
    for item in fields(cls):
        default = _default(item)
        nested = _nested(item, default)
        if nested is not None:
            keys += schema_keys(nested, f"{prefix}{item.name}.")
        elif item.name == "trainer" and not prefix:
            keys += trainer_keys(default)
        else:
            keys.append(Key(f"{prefix}{item.name}", _type_name(item.type), default, comments.get(item.name, "")))
    return keys


@cache
def trainer_docs() -> dict[str, str]:
    """Trainer argument -> the first sentence of its description in Lightning's docstring (its `Args:` section)."""
    import lightning

    doc = inspect.getdoc(lightning.Trainer.__init__) or ""
    found: dict[str, str] = {}
    for match in re.finditer(r"^ {4}(\w+): (.+?)(?=^ {4}\w+: |^\S|\Z)", doc, re.M | re.S):
        text = " ".join(match.group(2).split())
        found[match.group(1)] = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return found


def trainer_keys(ours: dict[str, Any]) -> list[Key]:
    """trainer.* from Lightning's Trainer signature; a default we set (cir's schema) is said as ours."""
    import lightning

    docs = trainer_docs()
    keys = []
    for name, param in inspect.signature(lightning.Trainer.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        default = ours.get(name, None if param.default is param.empty else param.default)
        meaning = docs.get(name, "") + (" (cir's default)" if name in ours else "")
        annotation = param.annotation if isinstance(param.annotation, str) else inspect.formatannotation(param.annotation)
        annotation = re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", annotation)  # lightning.pytorch....Logger -> Logger
        keys.append(Key(f"trainer.{name}", annotation, default, meaning.strip()))
    return keys


def format_keys(keys: list[Key]) -> str:
    """One key a line: `name: type = default  # meaning`."""
    return "\n".join(f"{k.name}: {k.type} = {k.default!r}" + (f"  # {k.meaning}" if k.meaning else "") for k in keys)


PAGE_SCHEMAS = (("cir fit (task: tat, pretrain, supervised)", "cir.schema:FitConfig"),
                ("cir evaluate, cir submit (an evaluation config)", "cir.schema:EvaluateConfig"),
                ("cir browse (an evaluation config plus browse.*)", "cir.schema:BrowseConfig"),
                ("cir grid (task: grid)", "cir.grid.spec:GridConfig"),
                ("cir synth (task: synth)", "cir.data.synth.settings:SynthRunConfig"))


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def configuration_page() -> str:
    """docs/configuration.md: every key of every command's config (tests/test_cli.py fails when the page is stale)."""
    import importlib

    parts = ["# Configuration: every key", "",
             "Generated from the typed schemas (cir/schema.py and the grid's and generator's) and Lightning's Trainer "
             "by `python -m cir.keys > docs/configuration.md`; a test fails when this page is stale. "
             "`cir config CONFIG --keys` prints the same for one config, `cir config CONFIG [key=value ...]` the "
             "resolved config. Only the keys of `trainer.*` that cir sets are listed here; every argument of "
             "Lightning's Trainer is accepted (`cir config CONFIG --keys` lists them all).", ""]
    for title, schema in PAGE_SCHEMAS:
        module, name = schema.split(":")
        keys = schema_keys(getattr(importlib.import_module(module), name))
        parts += [f"## {title}", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        parts += [f"| `{k.name}` | {_cell(k.type)} | `{_cell(repr(k.default))}` | {_cell(k.meaning)} |" for k in keys
                  if not k.name.startswith("trainer.") or "(cir's default)" in k.meaning]
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(configuration_page(), end="")
