"""cir.training: a run the data cuts short is an error, never a finished run (no usable sample, fewer steps than asked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cir import fit
from cir.config import run_cli

DEFAULTS = str(Path(__file__).resolve().parent / "configs" / "defaults.yaml")  # the config a command needs first

TINY = ["model.name=cir-tiny", "model.pretrained=none", "model.lora.dropout=0.0", "data.num_workers=0", "data.batch_size=16",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "optim.warmup_steps=1", "eval.benchmarks=[]"]


def fit_cli(out: Path, shards: str, *extra: str, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(fit.main, [DEFAULTS, *TINY, f"data.train_shards={shards}", f"output_dir={out}", *extra])
    return exit_info.value.code, capsys.readouterr().err


def finished(out: Path) -> bool:
    return (out / "run.json").exists() or (out / "export.pt").exists()


@pytest.mark.parametrize(("name", "content"), [("zero-bytes", b""), ("no-members", b"\0" * 10240),
                                                ("text", b"not a tar, only named like one\n" * 20)], ids=["zero", "empty", "text"])
def test_shards_without_a_usable_sample_stop_the_run_naming_them(tmp_path, capsys, name, content):
    shard = tmp_path / f"{name}.tar"
    shard.write_bytes(content)
    code, err = fit_cli(tmp_path / "run", str(shard), "trainer.max_steps=4", capsys=capsys)
    assert code == 2 and f"{name}.tar" in err and "no usable sample" in err and "Traceback" not in err
    assert not finished(tmp_path / "run")
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # nothing for a rerun with the right shards to "resume" past


def test_resampling_refuses_shards_without_samples_instead_of_drawing_forever(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / f"{name}.tar").write_bytes(b"\0" * 10240)  # valid tars without members
    shards = str(tmp_path / "{a,b}.tar")
    code, err = fit_cli(tmp_path / "run", shards, "data.resampled=true", "data.samples_per_epoch=64",
                        "trainer.max_steps=4", capsys=capsys)
    assert code == 2 and "data.train_shards" in err and "no shard holds a sample" in err and "b.tar" in err
    assert "Traceback" not in err and not finished(tmp_path / "run")


def test_exact_epoch_refuses_shards_without_samples_before_training(tmp_path, capsys):
    (tmp_path / "a.tar").write_bytes(b"\0" * 10240)
    code, err = fit_cli(tmp_path / "run", str(tmp_path / "a.tar"), "data.exact_epoch=true", capsys=capsys)
    assert code == 2 and "data.train_shards" in err and "a.tar" in err
    assert not finished(tmp_path / "run")


def test_data_that_runs_out_before_max_steps_is_an_error_and_epochs_are_asked_for_by_max_steps_minus_one(
        image_text_shards, tmp_path, capsys):
    # 64 samples in batches of 16: one epoch is 4 steps
    code, err = fit_cli(tmp_path / "short", image_text_shards, "trainer.max_steps=6", "trainer.max_epochs=1", capsys=capsys)
    assert code == 2 and "ran out after 4 of 6 steps" in err and "trainer.max_epochs=-1" in err
    assert not finished(tmp_path / "short")
    out = fit.main(None, [*TINY, f"data.train_shards={image_text_shards}", f"output_dir={tmp_path / 'epochs'}",
                          "trainer.max_steps=-1", "trainer.max_epochs=1"])
    assert json.loads((out / "run.json").read_text())["global_step"] == 4


def test_several_processes_without_an_exact_or_resampled_epoch_are_refused_before_the_model_is_built(
        image_text_shards, tmp_path, capsys, monkeypatch):
    from cir import training

    monkeypatch.setattr(training, "build_task", lambda cfg: pytest.fail("the model was built before the data check"))
    code, err = fit_cli(tmp_path / "run", image_text_shards, "trainer.devices=2", "trainer.strategy=ddp_spawn", capsys=capsys)
    assert code == 2 and "data.exact_epoch" in err and "2 processes" in err
