"""TAT with a tiny model on generated shards: what trains, what stays frozen, DDP, resume, SLURM, records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import open_clip
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, Dataset

from cir import fit, training
from cir.config import load_config, run_cli
from cir.models import create_backbone
from cir.schema import FitConfig
from cir.tasks.base import warmup_cosine
from cir.tasks.tat import TextAnchoredTuning

DEFAULTS = str(Path(__file__).resolve().parents[1] / "configs" / "defaults.yaml")  # the config a command needs first

TINY = ["model.name=cir-tiny", "model.pretrained=none", "data.num_workers=0", "data.batch_size=16",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1", "optim.lr=3e-3", "optim.warmup_steps=2", "model.lora.dropout=0.0",
        "trainer.max_epochs=-1"]  # runs are max_steps long: the data is passed over as often as that takes


def run_fit(out: Path, shards: str, *extra: str) -> Path:
    return fit.main(None, [*TINY, f"data.train_shards={shards}", f"output_dir={out}", *extra])


def tiny_module(*extra: str) -> TextAnchoredTuning:
    cfg = load_config(FitConfig, None, [*TINY, *extra])
    from omegaconf import OmegaConf

    return TextAnchoredTuning(OmegaConf.to_container(cfg, resolve=True))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fixed_batch(shards: str, backbone) -> tuple[torch.Tensor, torch.Tensor]:
    from cir.data.shards import image_text_pipeline

    pipeline = image_text_pipeline(shards, image_transform=backbone.preprocess_val, tokenize=backbone.tokenize,
                                   batch_size=64, shuffle_buffer=0)
    batch = next(iter(pipeline))
    return batch.images, batch.texts


def loss_on(module: TextAnchoredTuning, images, tokens) -> float:
    module.eval()
    with torch.no_grad():
        image, text = module.features(images, tokens)
        return float(module.loss_fn(image, text, module.logit_scale()))


@pytest.mark.parametrize(
    "anchor, trained, frozen",
    [("text", "visual.", "transformer."), ("image", "transformer.", "visual."), ("none", None, None)],
)
def test_only_lora_trains_and_the_anchor_stays_bit_identical(anchor, trained, frozen, image_text_shards, tmp_path, monkeypatch):
    steps = 12 if anchor == "text" else 4
    before_holder = {}

    class Snap(L.Callback):
        def on_fit_start(self, trainer, module):
            before_holder["module"] = module
            before_holder["state"] = snapshot(module.backbone)
            before_holder["loss"] = loss_on(module, *fixed_batch(image_text_shards, module.backbone))
            module.train()

    monkeypatch.setattr(training, "callbacks", lambda cfg, out, _orig=training.callbacks: [*_orig(cfg, out), Snap()])
    run_fit(tmp_path / "run", image_text_shards, f"model.anchor={anchor}", f"trainer.max_steps={steps}")
    module = before_holder["module"]
    before, after = before_holder["state"], snapshot(module.backbone)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed), sorted(changed)[:5]
    if anchor == "none":
        assert any(k.startswith("model.visual.") for k in changed) and any(k.startswith("model.transformer.") for k in changed)
    else:
        assert all(k.startswith(f"model.{trained}") for k in changed)
        anchor_keys = [k for k in before if k.startswith(f"model.{frozen}")]
        assert anchor_keys and all(torch.equal(before[k], after[k]) for k in anchor_keys)
    if anchor == "text":
        assert loss_on(module, *fixed_batch(image_text_shards, module.backbone)) < before_holder["loss"] - 0.05


def test_cli_run_writes_checkpoint_export_record_and_tensorboard(image_text_shards, tmp_path):
    out = run_fit(tmp_path / "run", image_text_shards, "trainer.max_steps=4", "checkpoint.every_n_steps=2",
                  "trainer.log_every_n_steps=3")
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "config.yaml").read_text().count("anchor: text") == 1
    record = json.loads((out / "run.json").read_text())
    assert record["backbone"]["name"] == "cir-tiny" and record["global_step"] == 4
    assert record["export_model_name"] == "cir-tiny"
    assert record["samples_seen"] == 4 * 16
    assert record["train_data"]["train_shards"] == image_text_shards
    assert record["versions"]["torch"] == torch.__version__.split("+")[0] or record["versions"]["torch"].startswith("2.")
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["cir_run"]["backbone"]["name"] == "cir-tiny"
    assert ckpt["hyper_parameters"]["config"]["model"]["anchor"] == "text"
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    # the synced diagnostics on the steps Lightning writes (every 3rd, and the last, off that grid), the loss on those too
    for tag in ("train/loss", "train/contrastive_loss", "train/modality_gap", "train/temperature", "data/skipped_bad_image"):
        assert [e.step for e in events.Scalars(tag)] == [2, 3], tag
    # the export is a plain open_clip checkpoint that loads strictly and gives the trained features
    model, _, _ = open_clip.create_model_and_transforms("cir-tiny", pretrained=str(out / "export.pt"))
    tuned = create_backbone("cir-tiny", str(out / "export.pt"))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        assert torch.allclose(tuned.encode_image(images), expected, atol=1e-5)


def test_resume_continues_step_count_and_schedule(image_text_shards, tmp_path, monkeypatch):
    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                trainer.should_stop = True

    args = ("trainer.max_steps=6", "checkpoint.every_n_steps=1")
    original = training.callbacks
    monkeypatch.setattr(training, "callbacks", lambda cfg, out: [*original(cfg, out), StopAt()])
    out = run_fit(tmp_path / "run", image_text_shards, *args)
    first = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["global_step"] == 3
    monkeypatch.setattr(training, "callbacks", original)
    run_fit(tmp_path / "run", image_text_shards, *args)
    final = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 6
    scheduler = final["lr_schedulers"][0]
    assert scheduler["last_epoch"] == 6
    assert scheduler["_last_lr"][0] == pytest.approx(3e-3 * warmup_cosine(6, 2, 6))


def test_warmup_then_cosine():
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.0)


class FixedPairs(Dataset):
    """A fixed global batch: under DDP each rank gets half, in one process one batch holds all."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.tokens = torch.randint(1, 400, (n, 32), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.tokens[i]


def collate_pairs(samples):
    """The shard loader's batch layout: images, tokens, skipped-sample counts per reason."""
    images, tokens = zip(*samples)
    return torch.stack(images), torch.stack(tokens), torch.zeros(6, dtype=torch.long)


def first_step_loss(devices: int, tmp_path: Path) -> float:
    L.seed_everything(0)
    module = tiny_module("model.lora.dropout=0.0")
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                        max_steps=1, log_every_n_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, DataLoader(FixedPairs(16), batch_size=16 // devices, shuffle=False, collate_fn=collate_pairs))
    return float(trainer.callback_metrics["train/loss"])


@pytest.mark.ddp
def test_two_process_loss_equals_one_process_on_the_same_global_batch(tmp_path):
    single = first_step_loss(1, tmp_path / "one")
    double = first_step_loss(2, tmp_path / "two")
    assert double == pytest.approx(single, rel=1e-5)
    assert double > 0.5  # a real contrastive loss over 16 pairs, not a degenerate one


def test_slurm_variables_are_honoured(monkeypatch, tmp_path):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    env = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NAME": "tat", "SLURM_NODELIST": "node1",
           "SLURM_NNODES": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=str(tmp_path))
    assert isinstance(trainer._accelerator_connector.cluster_environment, SLURMEnvironment)
    assert trainer.world_size == 1 and trainer.global_rank == 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.anchor=both", "model.anchor"),
        ("model.lora.r=0", "model.lora.r"),
        ("model.aug_cfg={scales: [1.0, 1.0]}", "expected open_clip AugmentationCfg fields"),
        ("data.batch_size=0", "data.batch_size"),
        ("model.lora.rank=4", "model.lora.rank"),
        ("task=distill", "task"),
        ("data.train_shards=/nonexistent/x-{0..3}.tar", "data.train_shards"),
    ],
)
def test_bad_fit_config_is_one_line_naming_the_key(override, message, image_text_shards, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(fit.main, [DEFAULTS, *TINY, f"data.train_shards={image_text_shards}", override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.batch_size=null", "data.global_batch_size=30", "trainer.accumulate_grad_batches=4"], "a multiple of 1 process(es) x 4"),
        (["data.global_batch_size=32", "trainer.accumulate_grad_batches=4"], "set data.batch_size=null to derive it, or data.global_batch_size=null to keep 16 per device"),  # 16 given, 8 derived
        (["data.batch_size=null"], "data.global_batch_size to derive it from"),
    ],
)
def test_global_batch_that_does_not_split_evenly_is_refused(overrides, message, image_text_shards, capsys, monkeypatch):
    monkeypatch.setattr(training, "build_task", lambda cfg: pytest.fail("the model was built before the batch was checked"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(fit.main, [DEFAULTS, *TINY, f"data.train_shards={image_text_shards}", *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_augmentation_settings_reach_the_training_transform(image_text_shards):
    cfg = load_config(FitConfig, None, [*TINY, f"data.train_shards={image_text_shards}", "model.aug_cfg={scale: [1.0, 1.0]}"])
    module, data = training.build_task(cfg)
    image = torch.rand(3, 40, 40)
    from torchvision.transforms.functional import to_pil_image

    pil = to_pil_image(image)
    transform = data.image_transform  # uint8 out of the loader, normalised by the DataModule once on the device
    assert transform.scale == (1.0, 1.0)
    normalised = data.on_after_batch_transfer(transform(pil)[None], 0)[0]
    assert torch.allclose(normalised, module.backbone.preprocess_val(pil), atol=2.01 / 255 / min(transform.std), rtol=0)


def test_global_batch_is_split_over_processes_and_accumulation(tmp_path):
    cfg = load_config(FitConfig, None, [*TINY, "data.batch_size=null", "data.global_batch_size=64"])
    trainer = L.Trainer(accelerator="cpu", devices=1, accumulate_grad_batches=4, logger=False, default_root_dir=str(tmp_path))
    training.resolve_batch_size(cfg, trainer)
    assert cfg.data.batch_size == 16


def test_cached_caption_embeddings_skip_the_text_tower(image_text_shards, tmp_path, monkeypatch):
    from cir.data.embed_text import embed_shards
    from cir.models import Backbone

    torch.manual_seed(0)
    meta_dir = tmp_path / "emb"
    embed_shards(image_text_shards, meta_dir, create_backbone("cir-tiny", str(tiny_export(tmp_path))), batch_size=32)

    def no_text_tower(self, tokens):
        raise AssertionError("the text tower ran although cached embeddings were given")

    monkeypatch.setattr(Backbone, "encode_text", no_text_tower)
    out = run_fit(tmp_path / "run", image_text_shards, "trainer.max_steps=2",
                  f"model.pretrained={tiny_export(tmp_path)}", f"data.text_embeddings={meta_dir}")
    assert json.loads((out / "run.json").read_text())["global_step"] == 2


def test_cached_embeddings_from_another_backbone_are_refused(image_text_shards, tmp_path, capsys):
    from cir.data.embed_text import embed_shards

    meta_dir = tmp_path / "emb"
    embed_shards(image_text_shards, meta_dir, create_backbone("cir-tiny", str(tiny_export(tmp_path))), batch_size=32)
    with pytest.raises(ValueError, match="fingerprint"):
        run_fit(tmp_path / "run", image_text_shards, "trainer.max_steps=1", "seed=1", f"data.text_embeddings={meta_dir}")


def tiny_export(tmp_path: Path) -> Path:
    """A fixed random cir-tiny checkpoint, so two backbones built from it have the same weights."""
    path = tmp_path / "tiny.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(create_backbone("cir-tiny", "none").model.state_dict(), path)
    return path


def test_periodic_zero_shot_evaluation_is_logged(image_text_shards, cirr_root, tmp_path):
    metrics = {}

    class Keep(L.Callback):
        def on_validation_end(self, trainer, module):
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    original = training.callbacks
    try:
        training.callbacks = lambda cfg, out: [*original(cfg, out), Keep()]
        run_fit(tmp_path / "run", image_text_shards, "trainer.max_steps=4", "trainer.val_check_interval=2",
                f"eval.benchmarks=[{{name: cirr, root: {cirr_root}, split: val}}]", "eval.alphas=[0.5]",
                "eval.num_workers=0")
    finally:
        training.callbacks = original
    assert {"eval/cirr/val/slerp_a0.5/R@1", "eval/cirr/val/slerp_a0.9/R@1", "eval/cirr/val/image/Rsub@1"} <= set(metrics)
    assert all(0.0 <= v <= 100.0 for k, v in metrics.items() if k.startswith("eval/"))


def test_ddp_without_resampling_is_refused_instead_of_hanging(image_text_shards):
    from cir.config import ConfigError
    from cir.data.image_text import ImageTextDataModule

    data = ImageTextDataModule(image_text_shards, lambda x: x, lambda t: t, batch_size=4, num_workers=0)
    data.trainer = type("T", (), {"world_size": 2})()
    with pytest.raises(ConfigError, match="data.resampled"):
        data.train_dataloader()
