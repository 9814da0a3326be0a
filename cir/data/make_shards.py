"""Write image-caption WebDataset shards, as img2dataset lays them out, from local sources.

    python -m cir.data.make_shards folder --images DIR --captions captions.csv|captions.jsonl --out OUT
    python -m cir.data.make_shards llava --json blip_laion_cc_sbu_558k.json --image-root DIR --out OUT
    python -m cir.data.make_shards cc3m --tsv train.tsv --image-root DIR --out OUT

folder: CSV with a header holding the columns `image` and `caption`, or JSONL
with one {"image": ..., "caption": ...} per line; image paths are relative to
--images. llava: a JSON list of {"id", "image", "conversations"}; the caption
is the first "gpt" turn. cc3m: `caption<TAB>image path` per line, no header,
paths relative to --image-root.

Each sample is key (the source row index, 9 digits), the image's original
bytes under jpg / png / webp (decoded once with PIL to check them; other
formats are re-encoded losslessly as png), txt (the caption) and json (caption,
source image path, size, LLaVA id). Missing or unreadable images, empty
captions and malformed rows are skipped and reported at the end with counts
and examples. Shards are written to a temp file beside OUT/PREFIX-000000.tar and renamed
when complete (cir.io.AtomicFiles); OUT/sizes.json gets each shard's sample count (what an exact
epoch reads, see cir.data.shard_sizes) and OUT/PREFIX.manifest.json is written
last. Rerunning refuses to touch existing PREFIX files unless --overwrite, which
deletes them first.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from cir.commands import parser_for
from cir.data.shard_sizes import remove_sizes, write_sizes
from cir.io import AtomicFiles, atomic_write_text, leftover_temps

log = logging.getLogger(__name__)

EXTENSION_OF_FORMAT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}
SKIP_REASONS = ("malformed_row", "empty_caption", "missing_image", "unreadable_image")
_EXAMPLES = 5


@dataclass(frozen=True)
class Record:
    """One source row; `problem` names why the row itself is unusable (it is then skipped)."""

    index: int
    image: str | None
    caption: str
    extra: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


@dataclass
class ConversionReport:
    """Skip counts per reason with the first few source names, for the summary and the manifest."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    examples: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in SKIP_REASONS})
    reencoded: int = 0

    def skip(self, reason: str, name: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < _EXAMPLES:
            self.examples[reason].append(name)

    def summary(self) -> str:
        lines = [f"  {r}: {n} (e.g. {', '.join(self.examples[r])})" for r, n in self.counts.items() if n]
        return "\n".join(["skipped:", *lines]) if lines else "skipped: none"


def _malformed(index: int, detail: str) -> Record:
    return Record(index, None, "", problem=f"row {index}: {detail}")


def read_captions_table(path: Path) -> Iterator[Record]:
    """Rows of a captions CSV (header with `image` and `caption`) or JSONL ({"image", "caption"} per line)."""
    if path.suffix.lower() == ".jsonl":
        yield from _read_jsonl(path)
    elif path.suffix.lower() == ".csv":
        yield from _read_csv(path)
    else:
        raise ValueError(f"{path}: captions must be a .csv (columns image, caption) or a .jsonl file")


def _read_csv(path: Path) -> Iterator[Record]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "image" not in columns or "caption" not in columns:
            raise ValueError(f"{path}: the header must name the columns 'image' and 'caption', found {columns}")
        for index, row in enumerate(reader):
            if row["image"] is None or row["caption"] is None:
                yield _malformed(index, f"{len(row) - 1} fields, fewer than the header's {len(columns)}")
            else:
                yield Record(index, row["image"], row["caption"])


def _read_jsonl(path: Path) -> Iterator[Record]:
    with path.open(encoding="utf-8") as f:
        for index, line in enumerate(f):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exn:
                yield _malformed(index, f"not JSON ({exn})")
                continue
            if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(row.get("caption"), str):
                yield _malformed(index, 'expected {"image": str, "caption": str}')
            else:
                yield Record(index, row["image"], row["caption"])


def read_llava(path: Path) -> list[Record]:
    """LLaVA-Align pretraining entries; the caption is the first gpt turn."""
    entries = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of LLaVA entries, got {type(entries).__name__}")
    return [_llava_record(index, entry) for index, entry in enumerate(entries)]


def _llava_record(index: int, entry: Any) -> Record:
    if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
        return _malformed(index, "expected an object with a 'conversations' list")
    answers = [turn.get("value") for turn in entry["conversations"] if isinstance(turn, dict) and turn.get("from") == "gpt"]
    if not answers or not isinstance(answers[0], str):
        return _malformed(index, "no gpt turn with a string value")
    return Record(index, entry.get("image"), answers[0], extra={"id": entry.get("id")})


def read_cc3m(path: Path) -> Iterator[Record]:
    """`caption<TAB>image path` lines (no header); a caption's own tabs stay in the caption."""
    with path.open(encoding="utf-8") as f:
        for index, line in enumerate(f):
            fields = line.rstrip("\r\n").rsplit("\t", 1)
            if len(fields) != 2:
                yield _malformed(index, "no tab between caption and image path")
            else:
                yield Record(index, fields[1], fields[0])


def _image_entry(path: Path, report: ConversionReport) -> tuple[str, bytes, tuple[int, int]]:
    """(extension key, bytes to store, size); raises OSError / PIL errors for unreadable files.

    JPEGs are decoded in draft mode (1/8 scale), which still fails on truncated files.
    """
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        size = img.size
        img.draft(img.mode, (1, 1))
        img.load()
        extension = EXTENSION_OF_FORMAT.get(img.format or "")
        if extension is not None:
            return extension, data, size
        frame = img if img.mode in _PNG_MODES else img.convert("RGB")
        out = io.BytesIO()
        frame.save(out, format="PNG")
    report.reencoded += 1
    return "png", out.getvalue(), size


def _sample(record: Record, image_root: Path, report: ConversionReport) -> dict[str, Any] | None:
    name = record.image if record.image is not None else f"row {record.index}"
    caption = record.caption.strip()
    if record.problem is not None:
        report.skip("malformed_row", record.problem)
        return None
    if not caption:
        report.skip("empty_caption", name)
        return None
    if not record.image:
        report.skip("missing_image", f"row {record.index} (no image field)")
        return None
    try:
        extension, data, (width, height) = _image_entry(image_root / record.image, report)
    except FileNotFoundError:
        report.skip("missing_image", name)
        return None
    except Exception as exn:
        report.skip("unreadable_image", f"{name} ({type(exn).__name__})")
        return None
    meta = {"caption": caption, "image": record.image, "width": width, "height": height, **record.extra}
    return {"__key__": f"{record.index:09d}", extension: data, "txt": caption, "json": meta}


def _shard_files(out: Path, prefix: str) -> list[Path]:
    """PREFIX's shards and manifest in `out`, and what a killed run left of them."""
    pattern = re.compile(rf"{re.escape(prefix)}-\d{{6}}\.tar|{re.escape(prefix)}\.manifest\.json")
    found = [p for p in out.iterdir() if pattern.fullmatch(p.name)] if out.is_dir() else []
    return sorted(found + leftover_temps(out, prefix))


def write_shards(
    records: Iterable[Record],
    out: Path,
    *,
    image_root: Path,
    source: dict[str, Any],
    prefix: str = "shard",
    maxcount: int = 10_000,
    maxsize: int = 1_000_000_000,
    overwrite: bool = False,
    total: int | None = None,
) -> dict[str, Any]:
    """Write OUT/PREFIX-%06d.tar shards and OUT/PREFIX.manifest.json; return the manifest."""
    existing = _shard_files(out, prefix)
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {len(existing)} {prefix!r} files (e.g. {existing[0].name}); pass --overwrite to replace them")
    for path in existing:
        path.unlink()
    remove_sizes(out, [p.name for p in existing])
    out.mkdir(parents=True, exist_ok=True)
    report = ConversionReport()
    written = 0
    sizes: dict[str, int] = {}
    files = AtomicFiles()
    sink = wds.ShardWriter(str(out / f"{prefix}-%06d.tar"), maxcount=maxcount, maxsize=maxsize, verbose=0,
                           opener=files.open, post=files.publish)
    try:
        for record in tqdm(records, total=total, unit="sample", desc=f"{prefix} shards"):
            sample = _sample(record, image_root, report)
            if sample is not None:
                sink.write(sample)
                written += 1
                name = os.path.basename(sink.fname)
                sizes[name] = sizes.get(name, 0) + 1
        num_shards = sink.shard
    except BaseException:
        sink.post = None
        sink.close()
        files.discard()
        raise
    sink.close()
    log.info("%s", report.summary())
    if written == 0:
        for path in _shard_files(out, prefix):
            path.unlink()
        raise ValueError(f"no sample could be written from {source}\n{report.summary()}")
    write_sizes(out, sizes)
    manifest = {
        "samples": written,
        "shards": num_shards,
        "pattern": f"{prefix}-{{000000..{num_shards - 1:06d}}}.tar",
        "source": source,
        "skipped": report.counts,
        "skipped_examples": {r: e for r, e in report.examples.items() if e},
        "reencoded_png": report.reencoded,
        "maxcount": maxcount,
        "maxsize": maxsize,
    }
    manifest_path = out / f"{prefix}.manifest.json"
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    log.info("wrote %d samples in %d shards to %s", written, num_shards, out / manifest["pattern"])
    return manifest


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = parser_for("shards", prog, __doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="on an error, show the traceback")
    common.add_argument("--out", type=Path, required=True, help="output folder")
    common.add_argument("--prefix", default="shard", help="shard name prefix (default: shard)")
    common.add_argument("--maxcount", type=int, default=10_000, help="samples per shard at most (default: 10000)")
    common.add_argument("--maxsize", type=int, default=1_000_000_000, help="bytes per shard, about (default: 1e9)")
    common.add_argument("--overwrite", action="store_true", help="delete existing PREFIX shards and manifest in OUT first")
    formats = parser.add_subparsers(dest="format", required=True)
    folder = formats.add_parser("folder", parents=[common], help="image folder + captions CSV or JSONL")
    folder.add_argument("--images", type=Path, required=True, help="folder the captions' image paths are relative to")
    folder.add_argument("--captions", type=Path, required=True, help="CSV with header columns image,caption or JSONL")
    llava = formats.add_parser("llava", parents=[common], help="LLaVA-Align pretraining JSON")
    llava.add_argument("--json", type=Path, required=True, help="e.g. blip_laion_cc_sbu_558k.json")
    llava.add_argument("--image-root", type=Path, required=True, help="folder the entries' image paths are relative to")
    cc3m = formats.add_parser("cc3m", parents=[common], help="CC3M-style TSV: caption<TAB>image path, no header")
    cc3m.add_argument("--tsv", type=Path, required=True)
    cc3m.add_argument("--image-root", type=Path, required=True, help="folder the TSV's image paths are relative to")
    return parser


def _source(args: argparse.Namespace) -> tuple[Iterable[Record], int | None, Path, dict[str, str]]:
    """(records, their number if known, image root, source description for the manifest)."""
    if args.format == "folder":
        source = {"format": "folder", "captions": str(args.captions), "images": str(args.images)}
        return read_captions_table(args.captions), None, args.images, source
    if args.format == "llava":
        records = read_llava(args.json)
        return records, len(records), args.image_root, {"format": "llava", "json": str(args.json), "image_root": str(args.image_root)}
    return read_cc3m(args.tsv), None, args.image_root, {"format": "cc3m", "tsv": str(args.tsv), "image_root": str(args.image_root)}


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = _parser(prog)
    args = parser.parse_args(argv)
    try:
        records, total, image_root, source = _source(args)
        write_shards(
            records, args.out, image_root=image_root, source=source, prefix=args.prefix,
            maxcount=args.maxcount, maxsize=args.maxsize, overwrite=args.overwrite, total=total,
        )
    except (FileExistsError, FileNotFoundError, ValueError) as exn:
        if args.debug:
            raise
        parser.error(str(exn))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
