"""Faults a user makes or meets are one line naming the file or key, found before the work they would spoil:
unreadable gallery images, a test split given to cir.evaluate, shards without a usable sample, keys that do not
exist, duplicate annotation keys, numbers given for booleans, a grid's missing benchmark root or dotted axes."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image
from test_interruption import DEFAULTS, fit_args

from cir import evaluate, fit
from cir.config import ConfigError, run_cli
from cir.data import samples
from cir.data.retrieval_benchmarks import load_benchmarks
from cir.data.retrieval_benchmarks.annotations import AnnotationError
from cir.grid.local import run_cells
from cir.grid.plan import Grid

EVAL_ARGS = ["model.name=cir-tiny", "model.pretrained=none", "trainer.accelerator=cpu",
             "trainer.enable_progress_bar=false", "eval.examples=0", "eval.alphas=[0.8]"]
GRID = Path(__file__).resolve().parents[1] / "experiments" / "grid_demo.yaml"


def one_line_exit(main, args, capsys) -> str:
    """Runs a command line that must fail with status 2; returns its error line."""
    with pytest.raises(SystemExit) as stop:
        run_cli(main, [DEFAULTS, *args])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert "Traceback" not in err and err.startswith("error: ") and len(err.splitlines()) == 2, err
    return err.splitlines()[0]


def no_model(*args, **kwargs):
    raise AssertionError("a model was built")


def huge_png(path: Path, side: int = 20000) -> None:
    """A PNG whose header says side x side pixels (PIL refuses it as a decompression bomb before decoding)."""
    Image.new("1", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", side, side)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_gallery_png_is_named(cirr_root, tmp_path, capsys, workers):
    victim = sorted((cirr_root / "dev").glob("*.png"))[-1]
    Image.new("RGB", (64, 64)).save(buffer := io.BytesIO(), format="PNG")
    victim.write_bytes(buffer.getvalue()[:-40])
    line = one_line_exit(evaluate.main, [*EVAL_ARGS, f"data.root={cirr_root}", f"output_dir={tmp_path / 'e'}",
                                         f"data.num_workers={workers}"], capsys)
    assert line.startswith(f"error: {victim}: cannot read the image (")


def test_a_huge_gallery_png_is_named(cirr_root, tmp_path, capsys):
    victim = sorted((cirr_root / "dev").glob("*.png"))[0]
    huge_png(victim)
    line = one_line_exit(evaluate.main, [*EVAL_ARGS, f"data.root={cirr_root}", f"output_dir={tmp_path / 'e'}",
                                         "data.num_workers=0"], capsys)
    assert line.startswith(f"error: {victim}: cannot read the image (DecompressionBombError: ")


def test_a_test_split_in_cir_evaluate_is_refused_before_any_model(cirr_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("cir.evaluation.run.create_backbone", no_model)
    line = one_line_exit(evaluate.main, [*EVAL_ARGS, f"data.root={cirr_root}", f"output_dir={tmp_path / 'e'}",
                                         "data.split=test1"], capsys)
    assert "config key `data.split`: expected a split with targets" in line and "cirr/test1 has none" in line


@pytest.mark.parametrize("override", ["eval.exclude_reference=2", "eval.save_features=1"])
def test_a_number_for_a_boolean_is_refused(override, capsys):
    line = one_line_exit(evaluate.main, [*EVAL_ARGS, override], capsys)
    assert f"config key `{override.split('=')[0]}`: expected true or false, got {override.split('=')[1]}" in line


def test_a_duplicate_key_in_a_split_file_is_named(cirr_root):
    split = cirr_root / "cirr" / "image_splits" / "split.rc2.val.json"
    text = split.read_text(encoding="utf-8").rstrip().rstrip("}")
    first = next(iter(json.loads(split.read_text(encoding="utf-8"))))
    split.write_text(f'{text}, "{first}": "dev/elsewhere.png"}}', encoding="utf-8")
    with pytest.raises(AnnotationError, match=rf"^{split}: key '{first}' appears twice in one object"):
        load_benchmarks("cirr", cirr_root, "val")


def unusable_shards(tmp_path: Path) -> str:
    path = tmp_path / "bad-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        for i in range(4):
            sink.write({"__key__": f"{i:06d}", "jpg": b"not an image", "txt": "a caption"})
    return str(path)


def test_shards_without_a_usable_sample_repeating_forever_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(samples, "MAX_CONSECUTIVE_SKIPS", 20)
    args = [*fit_args(tmp_path / "run", unusable_shards(tmp_path)), "trainer.max_epochs=-1"]  # resampled: forever
    line = one_line_exit(fit.main, args, capsys)
    assert "20 consecutive samples or shards were skipped (bad_image 20; see the warnings above): no usable" in line


def test_shards_without_a_usable_sample_for_one_epoch_do_not_say_none_were_skipped(tmp_path, capsys):
    args = [*fit_args(tmp_path / "run", unusable_shards(tmp_path)), "trainer.max_epochs=1", "trainer.max_steps=-1",
            "data.resampled=false", "data.samples_per_epoch=null"]
    line = one_line_exit(fit.main, args, capsys)
    assert "no training step: no usable sample in" in line and "none counted" not in line
    assert "skipped: uncounted, as no batch came to carry the counts" in line


def test_accepting_a_change_of_a_key_that_does_not_exist_is_refused(tmp_path, image_text_shards, capsys):
    line = one_line_exit(fit.main, [*fit_args(tmp_path / "run", image_text_shards),
                                    "resume.accept_changes=[optim.lr,optim.lrr]"], capsys)
    assert "config key `resume.accept_changes[1]`: expected a config key or section of this run, got 'optim.lrr'" in line


def test_a_grid_s_missing_benchmark_root_fails_its_cells_before_any_stage(tmp_path):
    grid = Grid(GRID, [f"output_dir={tmp_path / 'grid'}", f"data.train_shards={tmp_path}/tune-000000.tar",
                       f"data.root={tmp_path / 'nowhere'}"])
    lines: list[str] = []
    failed = run_cells(grid, echo=lines.append, warn=lines.append)
    assert failed == [c.name for c in grid.cells]
    assert all(f"config key `data.root`: {tmp_path / 'nowhere'} does not exist" in line for line in lines), lines
    assert not (tmp_path / "grid").exists()


def test_a_dotted_axis_from_the_command_line_replaces_the_axis(tmp_path, capsys):
    base = [f"data.train_shards={tmp_path}/tune-000000.tar", f"data.root={tmp_path}"]
    grid = Grid(GRID, ["axes.model.anchor=[image]", "axes.optim.lr=[0.01]", *base])
    assert [c.name for c in grid.cells] == ["anchor-image_lr-0.01"]
    assert grid.cells[0].axes == {"model.anchor": "anchor-image", "optim.lr": "lr-0.01"}
    with pytest.raises(ConfigError, match=r"config key `axes.model.anchor`: expected a non-empty list"):
        Grid(GRID, ["axes.model.anchor=image", *base])


@pytest.mark.slow
def test_a_model_given_as_a_config_json_exports_a_name_every_process_resolves(tmp_path, image_text_shards):
    """open_clip knows a JSON's model by its stem only in the process that registered it."""
    config = tmp_path / "models" / "m.json"
    config.parent.mkdir()
    config.write_text((Path(fit.__file__).parent / "models" / "configs" / "cir-tiny.json").read_text())
    out = tmp_path / "run"
    fit.main(None, [*fit_args(out, image_text_shards), f"model.name={config}", "trainer.max_steps=1"])
    record = json.loads((out / "run.json").read_text())
    assert record["export_model_name"] == str(out / "m.json")
    load = ("import sys; from cir.models import create_backbone; b = create_backbone(sys.argv[1], sys.argv[2]); "
            "print(b.fingerprint())")
    done = subprocess.run([sys.executable, "-c", load, record["export_model_name"], record["export"]],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
