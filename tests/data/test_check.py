"""`python -m cir.data.check` on real layouts (the annotation excerpts, tests/fixtures) with missing, empty and
corrupt images and bad shards: the report, exactly, and the exit status."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from cir.data.check import run
from cir.data.retrieval_benchmarks import load_benchmarks
from cir.data.retrieval_benchmarks.cirr import CIRR_LAYOUT

# The commands docs/data_and_weights.md shows, with its placeholders
DOC_BENCHMARK = "python -m cir.data.check cirr data/cirr"
DOC_CONFIG = "python -m cir.data.check experiments/eval_cirr.yaml data.root=data/cirr --json"


def _break_images(root: Path, name: str) -> tuple[list[str], int]:
    """The first gallery image deleted, the second emptied, the third overwritten with bytes no decoder reads;
    returns their paths relative to root and the number of images the split needs."""
    (bench,) = load_benchmarks(name, root, "val")[:1]
    paths = [bench.image_path(image_id) for image_id in bench.gallery[:3]]
    paths[0].unlink()
    paths[1].write_bytes(b"")
    paths[2].write_bytes(b"<html>404</html>")
    needed = {*bench.gallery, *(i for q in bench.queries for i in (q.reference, *q.targets, *q.subset))}
    return [str(p.relative_to(root)) for p in paths], len(needed)


def _layout(text: str) -> list[str]:
    return ["  expected layout:", *(f"    {line}" for line in text.splitlines())]


def test_a_benchmark_root_with_missing_empty_and_corrupt_images(cirr_root, capsys) -> None:
    (missing, empty, corrupt), needed = _break_images(cirr_root, "cirr")
    assert run(["cirr", str(cirr_root)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"cirr/val under {cirr_root}: annotations cirr/captions/cap.rc2.val.json, cirr/image_splits/split.rc2.val.json",
        f"  images: {needed} needed, {needed - 3} present, 1 missing, 1 empty, 1 unreadable",
        f"    missing (1): {missing}",
        f"    empty (1): {empty}",
        f"    unreadable (1): {corrupt}",
        *_layout(CIRR_LAYOUT),
        "not ok: the run would stop on the problems above",
    ]


def test_an_intact_layout_passes_and_quick_skips_decoding(cirr_root, capsys) -> None:
    assert run(["cirr", str(cirr_root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "ok: the run would start"
    (_, _, corrupt), needed = _break_images(cirr_root, "cirr")
    assert run(["cirr", str(cirr_root), "--quick"]) == 1  # the missing and empty images still stop it
    out = capsys.readouterr().out
    assert f"  images: {needed} needed, {needed - 2} present, 1 missing, 1 empty (not decoded: --quick)" in out
    assert corrupt not in out


def test_a_missing_annotation_file_shows_the_expected_layout(cirr_root, capsys) -> None:
    captions = cirr_root / "cirr" / "captions" / "cap.rc2.val.json"
    captions.unlink()
    assert run(["cirr", str(cirr_root)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"cirr/val under {cirr_root}: cannot load: missing annotation file {captions}",
        *_layout(f"expected layout under {cirr_root}:\n{CIRR_LAYOUT}"),
        "not ok: the run would stop on the problems above",
    ]


def test_an_evaluation_config_with_skip_starts_despite_missing_images_but_not_corrupt_ones(fashioniq_root, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(f"data: {{name: fashioniq, root: '{fashioniq_root}', categories: [dress]}}\n"
                      "eval: {missing_images: skip}\n")
    (bench,) = load_benchmarks("fashioniq", fashioniq_root, "val", categories="dress")
    bench.image_path(bench.gallery[0]).unlink()
    assert run([str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (split,) = report["splits"]
    assert (split["benchmark"], split["missing"], split["empty"], split["unreadable"]) == (
        "fashioniq_dress", [str(bench.image_path(bench.gallery[0]).relative_to(fashioniq_root))], [], [])
    assert report["skip_missing"] is True and report["ok"] is True
    bench.image_path(bench.gallery[1]).write_bytes(b"\x89PNG broken")
    assert run([str(config), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
    assert run([str(config), "eval.missing_images=error", "--json"]) == 1


def _png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_training_shards_report_samples_and_bad_samples_by_training_reason(shard_writer, cirr_root, tmp_path, capsys):
    """Two good shards of generated pairs, one with a corrupt image and a blank caption, one that is no tar, one
    listed but absent; eval.benchmarks checked as an evaluation would."""
    shard_writer(tmp_path / "shards", num_shards=2, per_shard=5)
    bad = tmp_path / "shards" / "bad-000000.tar"
    with wds.TarWriter(str(bad)) as sink:
        sink.write({"__key__": "a", "png": _png("red"), "txt": "a red square"})
        sink.write({"__key__": "b", "png": b"not an image", "txt": "a broken square"})
        sink.write({"__key__": "c", "png": _png("blue"), "txt": "   "})
    (tmp_path / "shards" / "junk-000000.tar").write_bytes(b"this is not a tar archive" * 40)
    shards = [*sorted(str(p) for p in (tmp_path / "shards").glob("train-*.tar")), str(bad),
              str(tmp_path / "shards" / "junk-000000.tar"), str(tmp_path / "shards" / "gone-000000.tar")]
    config = tmp_path / "tat.yaml"
    config.write_text(json.dumps({"task": "tat", "data": {"train_shards": shards},
                                  "eval": {"benchmarks": [{"name": "cirr", "root": str(cirr_root), "split": "val"}]}}))
    assert run([str(config)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-4:] == [
        f"training shards {shards}: 5 shards, 1 absent, 13 samples, 11 usable",
        f"    absent (1): {shards[-1]}",
        "  bad samples (skipped by training): shard_error 1, bad_image 1, missing_caption 1",
        "not ok: the run would stop on the problems above",
    ]
    assert lines[0].startswith("cirr/val under ") and lines[1].endswith("0 missing, 0 empty, 0 unreadable")
    config.write_text(json.dumps({"task": "tat", "data": {"train_shards": shards[:3]}}))
    assert run([str(config)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"training shards {shards[:3]}: 3 shards, 0 absent, 13 samples, 11 usable",
        "  bad samples (skipped by training): bad_image 1, missing_caption 1",
        "ok: the run would start",
    ]


@pytest.mark.parametrize("command", [DOC_BENCHMARK, DOC_CONFIG])
def test_the_documented_commands(command, cirr_root) -> None:
    """As docs/data_and_weights.md shows them, run as a user would (exit status 0 on an intact layout)."""
    args = [a.replace("data/cirr", str(cirr_root)) for a in command.split()[3:]]
    done = subprocess.run([sys.executable, "-m", "cir.data.check", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
