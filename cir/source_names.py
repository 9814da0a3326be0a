"""The names a third-party class takes (its constructor's arguments, a dataclass's fields), read from the installed
source without importing the package.

The config checks (cir.config_checks) refuse a free-form section's unknown names: `trainer` goes to Lightning's
Trainer, `model.aug_cfg` to open_clip's AugmentationCfg. Importing either package costs seconds (torch, torchmetrics,
transformers, timm), which cir.grid, checking every call's config before its first stage, would pay at every start;
the source answers the same question in milliseconds. tests/test_source_names.py checks each answer against the
imported class (inspect.signature, dataclasses.fields).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path


def class_node(module: str, name: str) -> ast.ClassDef:
    """The definition of class `name` in `module` (dotted, a plain module file of an installed package)."""
    top, *inner = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level package: found, not imported
    assert spec is not None and spec.submodule_search_locations, f"{top} is not an installed package"
    path = Path(spec.submodule_search_locations[0], *inner).with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


@functools.cache
def init_arguments(module: str, name: str) -> frozenset[str]:
    """The argument names of class `name`'s __init__, as inspect.signature(cls).parameters gives them."""
    init = next(n for n in class_node(module, name).body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    args = init.args
    every = [*args.posonlyargs, *args.args, args.vararg, *args.kwonlyargs, args.kwarg]
    return frozenset(a.arg for a in every if a is not None) - {"self"}


@functools.cache
def dataclass_fields(module: str, name: str) -> frozenset[str]:
    """The field names of dataclass `name` (annotated class attributes, ClassVar aside)."""
    return frozenset(
        n.target.id for n in class_node(module, name).body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and "ClassVar" not in ast.unparse(n.annotation)
    )
