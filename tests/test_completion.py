"""The completion record: done only with this fingerprint (config, model config JSON, weights, data), every output
named in it present and every input it read unchanged; no training here (tests/grid/test_done.py runs real calls)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import cir.models
from cir import completion
from cir.config import load_config
from cir.data.inputs import watch_inputs
from cir.data.retrieval_benchmarks import load_benchmarks
from cir.schema import EvaluateConfig, FitConfig

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def eval_cfg(out: Path, *overrides: str):
    return load_config(EvaluateConfig, EXPERIMENTS / "demo_eval.yaml", [f"output_dir={out}", *overrides])


def fit_cfg(out: Path, *overrides: str):
    return load_config(FitConfig, EXPERIMENTS / "demo_tat.yaml", [f"output_dir={out}", *overrides])


def finish(out: Path, cfg, inputs=()) -> None:
    """A finished run's folder: its outputs, then the done record."""
    outputs = [out / "metrics.json", out / "features" / "cirr-val.npz"]
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    completion.finish(out, completion.fingerprint(cfg), outputs, inputs)


def bump(path: Path) -> None:
    """Rewrite a file with the same contents and size, a later mtime (as a rerun's atomic write would)."""
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))


def test_a_finished_folder_is_done_until_an_output_goes_or_a_new_run_starts(tmp_path) -> None:
    cfg = eval_cfg(tmp_path, "data.root=r")
    made_by = completion.fingerprint(cfg)
    assert completion.why_not_done(tmp_path, made_by) == "no completion record"
    finish(tmp_path, cfg)
    record = json.loads((tmp_path / completion.RECORD).read_text())
    assert record["state"] == "done" and record["outputs"] == {"features/cirr-val.npz": 2, "metrics.json": 2}
    assert completion.why_not_done(tmp_path, made_by) is None
    (tmp_path / "features" / "cirr-val.npz").unlink()
    assert completion.why_not_done(tmp_path, made_by) == "output features/cirr-val.npz missing or changed"
    finish(tmp_path, cfg)
    completion.start(tmp_path, made_by)  # a rerun began: the folder is no longer done, but it is this run's
    assert completion.why_not_done(tmp_path, made_by) == "interrupted"
    assert completion.same_run(tmp_path, made_by)
    (tmp_path / completion.RECORD).write_text('{"state": "do')  # as no cir write leaves it; still not done
    assert completion.why_not_done(tmp_path, made_by) == "no completion record"


def test_any_other_config_is_not_done_but_the_launch_shape_is_the_same_run(tmp_path) -> None:
    finish(tmp_path, eval_cfg(tmp_path, "data.root=r"))
    assert completion.why_not_done(tmp_path, completion.fingerprint(eval_cfg(tmp_path, "data.root=r",
                                                                             "eval.examples=2"))) == "config changed"
    assert completion.why_not_done(tmp_path, completion.fingerprint(eval_cfg(
        tmp_path, "data.root=r", "trainer.devices=4", "trainer.num_nodes=2"))) is None


def test_editing_the_model_config_json_undoes_a_finished_run(tmp_path, monkeypatch) -> None:
    """cir-demo.json's `layers` (a shipped config, copied so the test edits its own), and a config given by path."""
    configs = tmp_path / "configs"
    shutil.copytree(cir.models.CONFIG_DIR, configs)
    monkeypatch.setattr(completion, "shipped_configs", lambda: configs)
    shipped, by_path = eval_cfg(tmp_path / "a", "data.root=r"), eval_cfg(tmp_path / "b", "data.root=r",
                                                                         f"model.name={configs / 'cir-demo.json'}")
    for cfg in (shipped, by_path):
        finish(Path(cfg.output_dir), cfg)
        assert completion.why_not_done(cfg.output_dir, completion.fingerprint(cfg)) is None
    model = json.loads((configs / "cir-demo.json").read_text())
    model["vision_cfg"]["layers"] += 1
    (configs / "cir-demo.json").write_text(json.dumps(model, indent=4))
    for cfg in (shipped, by_path):
        assert completion.why_not_done(cfg.output_dir, completion.fingerprint(cfg)) == "model changed"


def test_the_shipped_configs_are_found_where_cir_models_registers_them() -> None:
    assert completion.shipped_configs() == cir.models.CONFIG_DIR


def test_rewritten_weights_or_shards_undo_a_finished_run(tmp_path) -> None:
    weights, shards = tmp_path / "export.pt", tmp_path / "shards"
    weights.write_bytes(b"w" * 10)
    shards.mkdir()
    for n in range(2):
        (shards / f"tune-{n:06d}.tar").write_bytes(b"s")
    evaluation = eval_cfg(tmp_path / "eval", "data.root=r", f"model.pretrained={weights}")
    fit = fit_cfg(tmp_path / "fit", f"data.train_shards={shards}/tune-{{000000..000001}}.tar")
    for cfg in (evaluation, fit):
        finish(Path(cfg.output_dir), cfg)
    assert completion.fingerprint(fit)["data"].keys() == {str(p) for p in sorted(shards.iterdir())}
    bump(weights)
    assert completion.why_not_done(evaluation.output_dir, completion.fingerprint(evaluation)) == (
        f"weights changed ({weights})")
    bump(shards / "tune-000001.tar")
    assert completion.why_not_done(fit.output_dir, completion.fingerprint(fit)) == (
        f"data changed ({shards / 'tune-000001.tar'})")


def test_an_edited_annotation_file_the_run_read_undoes_it(cirr_root, tmp_path) -> None:
    cfg = eval_cfg(tmp_path / "out", f"data.root={cirr_root}", "data.name=cirr")
    with watch_inputs() as inputs:
        load_benchmarks("cirr", cirr_root, "val")
    captions = cirr_root / "cirr" / "captions" / "cap.rc2.val.json"
    assert captions in inputs and len(inputs) == 2  # the captions and the image split
    finish(tmp_path / "out", cfg, inputs)
    bump(captions)  # a new date alone: the same contents, the same input
    assert completion.why_not_done(tmp_path / "out", completion.fingerprint(cfg)) is None
    entries = json.loads(captions.read_text())
    entries[0]["caption"] += " and more"
    captions.write_text(json.dumps(entries))
    assert completion.why_not_done(tmp_path / "out", completion.fingerprint(cfg)) == f"input {captions} changed"


def test_an_image_replaced_in_place_undoes_an_evaluation(tmp_path) -> None:
    cfg = eval_cfg(tmp_path / "out", "data.root=r")
    images = [tmp_path / "images" / name for name in ("a.png", "b.png")]
    for image in images:
        image.parent.mkdir(exist_ok=True)
        image.write_bytes(b"png")
    outputs = [tmp_path / "out" / "metrics.json"]
    outputs[0].parent.mkdir()
    outputs[0].write_text("{}")
    completion.finish(tmp_path / "out", completion.fingerprint(cfg), outputs, images=images)
    assert completion.why_not_done(tmp_path / "out", completion.fingerprint(cfg)) is None
    bump(images[1])  # regenerated with the same size: a new mtime
    assert completion.why_not_done(tmp_path / "out", completion.fingerprint(cfg)) == f"image {images[1]} changed"
    images[1].unlink()
    assert completion.why_not_done(tmp_path / "out", completion.fingerprint(cfg)) == f"image {images[1]} changed"


@pytest.mark.parametrize("value", ["pipe:curl -s http://example.com/a.tar", ["http://example.com/a.tar"]])
def test_streamed_shards_are_taken_on_trust(value) -> None:
    assert completion.local_paths(value) == []


class Killed(BaseException):
    """Stands for a kill: nothing after it runs."""


DEFAULTS = Path(__file__).resolve().parent / "configs" / "defaults.yaml"


def test_a_submission_killed_after_its_files_is_not_done_and_a_finished_one_names_every_output(cirr_root, tmp_path,
                                                                                               monkeypatch) -> None:
    from cir import submit
    from cir.grid.stages import InProcessCall

    out = tmp_path / "submit"
    call = InProcessCall("submit", DEFAULTS, ("model.name=cir-tiny", "model.pretrained=none", f"data.root={cirr_root}",
                                              "eval.cache_dir=null", "data.num_workers=0", "trainer.accelerator=cpu",
                                              "trainer.enable_progress_bar=false", f"output_dir={out}"), out)

    def killed(*_args) -> None:
        raise Killed

    monkeypatch.setattr(submit, "export_features", killed)  # runs after the submission files are written
    with pytest.raises(Killed):
        call.run(from_scratch=False)
    assert list(out.glob("*_submission.json"))
    assert call.why_not_done() == "interrupted"
    monkeypatch.undo()
    call.run(from_scratch=False)
    assert call.why_not_done() is None
    assert set(completion.read(out)["outputs"]) == {
        "config.yaml", "cirr_test1_recall_submission.json", "cirr_test1_recall_subset_submission.json"}
    (out / "cirr_test1_recall_submission.json").unlink()
    assert call.why_not_done() == "output cirr_test1_recall_submission.json missing or changed"


def test_a_generated_benchmark_is_done_by_its_record_not_by_its_marker(tmp_path, monkeypatch) -> None:
    """Killed once every file is written but before its record, or with a file gone since, it is not done."""
    from cir.data.synth import settings
    from cir.grid.stages import InProcessCall

    config = tmp_path / "synth.yaml"
    config.write_text("task: synth\nsynth: {image_size: 16, pretrain_samples: 8, tune_samples: 8, train_queries: 8, "
                      "val_queries: 8, test_queries: 8, shard_size: 64}\n")
    out = tmp_path / "synth"
    call = InProcessCall("synth", config, (f"output_dir={out}",), out)
    real = settings.generate

    def generate_then_killed(*args, **kwargs):
        real(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(settings, "generate", generate_then_killed)
    with pytest.raises(Killed):
        call.run(from_scratch=False)
    assert call.why_not_done() == "interrupted" and call.resumable()
    monkeypatch.undo()
    call.run(from_scratch=False)
    assert call.why_not_done() is None
    named = set(completion.read(out)["outputs"])
    assert named == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != completion.RECORD}
    image = next(p for p in sorted(out.glob("cirr/**/*.png")))
    image.unlink()
    assert call.why_not_done() == f"output {image.relative_to(out)} missing or changed"
