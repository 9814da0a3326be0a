"""A rerun in a used output_dir: which config changes it may make (cir.resume) and what run.json records of them."""

from __future__ import annotations

import json

import pytest
import torch
from test_interruption import DEFAULTS, fit_args

from cir import fit
from cir.config import ConfigError, run_cli
from cir.resume import config_changes

OLD = {"seed": 0, "task": "tat", "model": {"name": "cir-tiny", "lora": {"r": 16}}, "optim": {"lr": 1e-4, "warmup_steps": 100}, "trainer": {"max_steps": 8, "devices": 1},
       "data": {"train_shards": "/old/place/tune-{000000..000003}.tar", "num_workers": 4},
       "eval": {"alphas": [0.5]}, "output_dir": "/old/run", "resume": {"accept_changes": []}}


def changed(**sections) -> dict:
    new = json.loads(json.dumps(OLD))
    for section, values in sections.items():
        if isinstance(values, dict):
            new[section].update(values)
        else:
            new[section] = values
    return new


def test_trajectory_changes_stop_naming_every_key():
    with pytest.raises(ConfigError) as err:
        config_changes(OLD, changed(seed=7, optim={"lr": 0.5}), [], step=8)
    message = str(err.value)
    assert "\n" not in message
    assert "optim.lr 0.0001 -> 0.5" in message and "seed 0 -> 7" in message
    assert "resume.accept_changes=[optim.lr,seed]" in message


@pytest.mark.parametrize("new", [changed(data={"num_workers": 2}), changed(trainer={"devices": 2}),
                                 changed(data={"train_shards": "/new/place/other-{000000..000003}.tar"})])
def test_data_order_devices_and_other_shards_change_the_trajectory(new):
    with pytest.raises(ConfigError):
        config_changes(OLD, new, [], step=8)


def test_extending_observing_and_moving_are_allowed_and_recorded_with_their_step():
    new = changed(trainer={"max_steps": 16}, eval={"alphas": [0.5, 0.8]}, output_dir="/new/run",
                  data={"train_shards": "/new/place/tune-{000000..000003}.tar"})
    assert config_changes(OLD, new, [], step=8) == [
        {"step": 8, "key": "data.train_shards", "from": OLD["data"]["train_shards"],
         "to": "/new/place/tune-{000000..000003}.tar", "kind": "moved"},
        {"step": 8, "key": "eval.alphas", "from": [0.5], "to": [0.5, 0.8], "kind": "observes"},
        {"step": 8, "key": "output_dir", "from": "/old/run", "to": "/new/run", "kind": "observes"},
        {"step": 8, "key": "trainer.max_steps", "from": 8, "to": 16, "kind": "observes"},
    ]


@pytest.mark.parametrize("key, new", [("model.name", changed(model={"name": "ViT-B-32"})),
                                      ("model.lora.r", changed(model={"name": "cir-tiny", "lora": {"r": 8}})),
                                      ("task", changed(task="supervised"))])
def test_what_the_weights_were_built_with_cannot_change_even_when_accepted(key, new):
    with pytest.raises(ConfigError, match=f"`{key}`: .*a resumed run cannot change it"):
        config_changes(OLD, new, [key.split(".")[0]], step=8)


def test_accepted_changes_go_through_by_key_or_section():
    new = changed(optim={"lr": 0.5, "warmup_steps": 0}, resume={"accept_changes": ["optim"]})
    assert [(c["key"], c["kind"]) for c in config_changes(OLD, new, ["optim"], step=3)] == [
        ("optim.lr", "accepted"), ("optim.warmup_steps", "accepted"), ("resume.accept_changes", "observes")]


def test_a_rerun_with_another_lr_and_seed_stops_in_one_line_and_rewrites_nothing(image_text_shards, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*fit_args(out, image_text_shards), "trainer.max_steps=2"]
    fit.main(None, args)
    config_before, record_before = (out / "config.yaml").read_text(), (out / "run.json").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        run_cli(fit.main, [DEFAULTS, *args, "optim.lr=0.5", "seed=7"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: config key `optim.lr`: differs from the checkpoint at global step 2") and len(err) == 2
    assert (out / "config.yaml").read_text() == config_before and (out / "run.json").read_text() == record_before

    fit.main(None, [*args, "optim.lr=0.5", "trainer.max_steps=4", "resume.accept_changes=[optim.lr]"])
    record = json.loads((out / "run.json").read_text())
    assert record["global_step"] == 4 and record["config"]["optim"]["lr"] == 0.5
    scheduler = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["lr_schedulers"][0]
    assert scheduler["base_lrs"] == [0.5]  # trained with it: not the checkpoint's LR that Lightning restores
    assert [(c["step"], c["key"], c["kind"]) for c in record["config_changes"]] == [
        (2, "optim.lr", "accepted"), (2, "resume.accept_changes", "observes"), (2, "trainer.max_steps", "observes")]


def test_more_steps_after_an_epoch_max_steps_stopped_are_refused_and_more_epochs_go_on(image_text_shards, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*fit_args(out, image_text_shards), "data.resampled=false", "data.samples_per_epoch=null",
            "trainer.max_epochs=1", "checkpoint.every_n_steps=100"]
    fit.main(None, [*args, "trainer.max_steps=2"])
    final = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 2 and final["epoch"] == 1  # Lightning counts the stopped epoch as finished
    # so the data resumes where Lightning's loops do: the next epoch's first batch
    assert final["ImageTextDataModule"] == {"epoch": 1, "batches": 0}
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        run_cli(fit.main, [DEFAULTS, *args, "trainer.max_steps=4"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: config key `trainer.max_steps`: the checkpoint at global step 2 has finished "
                             "1 epoch(s) of trainer.max_epochs=1") and len(err) == 2, err
    fit.main(None, [*args, "trainer.max_steps=4", "trainer.max_epochs=2"])
    assert json.loads((out / "run.json").read_text())["global_step"] == 4
