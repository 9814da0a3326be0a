"""The checks every official-layout annotation loader shares: a wrong root, a bad split or a malformed entry
is reported the same way everywhere, naming the file, the entry and what was expected."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cir.config import InputError
from cir.data.inputs import note_input


class BenchmarkLayoutError(FileNotFoundError):
    """An annotation file is missing under the benchmark root; the message shows the expected tree."""


class AnnotationError(InputError, ValueError):
    """An annotation file parses but does not have the official structure."""


def require_file(path: Path, root: Path, layout: str) -> Path:
    """Fail early on a wrong root, showing where every file is expected to be."""
    if not path.is_file():
        raise BenchmarkLayoutError(
            f"missing annotation file {path}\nexpected layout under {root}:\n{layout}"
        )
    return path


def read_json(path: Path, root: Path, layout: str, kind: type) -> Any:
    """Load one annotation file whose top level must be `kind` (list or dict); a completion record names it."""
    require_file(path, root, layout)
    note_input(path)
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path}: not valid JSON ({error})") from None
    except _DuplicateKey as duplicate:
        raise AnnotationError(f"{path}: key {duplicate.args[0]!r} appears twice in one object (JSON readers keep the "
                              "last silently; which one is meant?)") from None
    if not isinstance(data, kind):
        raise AnnotationError(
            f"{path}: top level should be a JSON {_json_kind(kind)}, found {_json_kind(type(data))}"
        )
    return data


class _DuplicateKey(Exception):
    """A key seen twice in one JSON object (json keeps the last one without a word)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _DuplicateKey(next(key for i, key in enumerate(keys) if key in keys[:i]))
    return dict(pairs)


def entry_field(entry: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """One field of one annotation entry; `where` names the file and entry index for the error."""
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where}: should be a JSON object, found {_json_kind(type(entry))}")
    if key not in entry:
        raise AnnotationError(f"{where}: missing field {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise AnnotationError(
            f"{where}: field {key!r} should be a JSON {_json_kind(kind)}, found {value!r}"
        )
    return value


def check_choice(value: str, valid: Iterable[str], what: str) -> None:
    """Reject an unknown split / category / mode, naming the valid ones."""
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def check_unique(ids: list[str], path: Path, what: str) -> None:
    """Duplicate ids would make two gallery rows or two submission keys collide."""
    seen: set[str] = set()
    for index, image_id in enumerate(ids):
        if image_id in seen:
            raise AnnotationError(f"{path}: entry {index}: duplicate {what} {image_id!r}")
        seen.add(image_id)


def _json_kind(kind: type | tuple[type, ...]) -> str:
    names = {dict: "object", list: "array", str: "string", int: "integer", float: "number", type(None): "null"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)
