"""Supervised CIR fine-tuning with a tiny model on the generated benchmark: where the weights come from,
that the loss, alpha and combiner train, validation of the learned fusion, the CLI, and config errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from omegaconf import OmegaConf

from cir import fit, training
from cir.config import load_config, run_cli
from cir.config_checks import check_fit_config
from cir.data.synth import generate, shard_urls
from cir.data.triplets import TripletDataset, load_triplets
from cir.fusion import Combiner, SlerpFusion
from cir.models import create_backbone, export_open_clip, has_lora, merged_state_dict
from cir.schema import FitConfig
from cir.slerp import slerp
from cir.tasks import supervised
from cir.tasks.tat import TextAnchoredTuning

DEFAULTS = str(Path(__file__).resolve().parents[1] / "configs" / "defaults.yaml")  # the config a command needs first

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
SYNTH = dict(image_size=16, pretrain_samples=16, tune_samples=64, train_queries=64, val_queries=32, test_queries=16,
             shard_size=64)
TINY = ["model.name=cir-tiny", "model.pretrained=none", "data.num_workers=0", "data.batch_size=16",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto", "trainer.precision=32",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
        "optim.lr=3e-3", "optim.warmup_steps=1", "model.lora.dropout=0.0"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, 0, progress=False, **SYNTH)
    return out


@pytest.fixture(scope="module")
def tat_run(synth, tmp_path_factory) -> Path:
    """A 3-step TAT run (seed 1, so none of its weights equal a seed-0 random init)."""
    out = tmp_path_factory.mktemp("tat") / "run"
    return fit.main(None, [*TINY, "task=tat", f"data.train_shards={shard_urls(synth, 'tune')}", f"output_dir={out}",
                           "trainer.max_steps=3", "seed=1"])


def sup_args(synth: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY, "task=supervised", f"supervised.train.root={synth / 'cirr'}", f"output_dir={out}",
            "trainer.max_epochs=-1", *extra]


def val_benchmark(cirr_root: Path) -> str:
    """The CIRR val excerpt (171 images): smaller than the generated val gallery, so validation stays quick."""
    return f"eval.benchmarks=[{{name: cirr, root: {cirr_root}, split: val}}]"


def fixed_batch(synth: Path, backbone) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first 16 train triplets with the deterministic transform."""
    dataset = TripletDataset(load_triplets("cirr", synth / "cirr", "train")[:16], backbone.preprocess_val, backbone.tokenize)
    return tuple(torch.stack(column) for column in zip(*(dataset[i] for i in range(len(dataset)))))


def batch_loss(module: supervised.SupervisedTuning, batch) -> float:
    module.eval()
    with torch.no_grad():
        return float(module.batch_loss(batch))


def run_with_snapshot(monkeypatch, synth: Path, args: list[str]) -> dict:
    """Fit; at fit start record the module, its merged weights and the fixed-batch loss."""
    seen: dict = {}

    class Snap(L.Callback):
        def on_fit_start(self, trainer, module):
            seen.update(trainer=trainer, module=module, start=merged_state_dict(module.backbone),
                        batch=fixed_batch(synth, module.backbone))
            seen["loss"] = batch_loss(module, seen["batch"])
            seen["fusion"] = {k: v.clone() for k, v in module.fusion.state_dict().items()}
            module.train()

    monkeypatch.setattr(training, "callbacks", lambda cfg, out, _orig=training.callbacks: [*_orig(cfg, out), Snap()])
    fit.main(None, args)
    return seen


def tat_merged_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The reference: the TAT LightningModule restored from its checkpoint by Lightning, adapters merged."""
    data = torch.load(ckpt, map_location="cpu", weights_only=False)
    module = TextAnchoredTuning(data["hyper_parameters"]["config"])
    module.load_state_dict(data["state_dict"])
    return merged_state_dict(module.backbone)


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.allclose(got[key], expected[key], atol=1e-6), key


def brute_force_recall(evaluator, fuse) -> dict[str, float]:
    """R@K of a fusion from the evaluator's features by full ranking, independent of cir.scoring."""
    (_, index, feats), = evaluator.features()
    with torch.no_grad():
        queries = fuse(feats.image[index.ref_rows], feats.text[index.text_rows]).float()
    sims = queries @ feats.image[: index.n_gallery].T
    rows = torch.arange(len(sims))
    sims[rows[index.exclude >= 0], index.exclude[index.exclude >= 0]] = float("-inf")
    rank = (sims > sims[rows, index.target].unsqueeze(1)).sum(dim=1)
    return {f"R@{k}": float((rank < k).float().mean() * 100) for k in (1, 5, 10, 50)}


def test_fit_from_tat_checkpoint_starts_from_its_weights_learns_alpha_and_validates_it(
    synth, tat_run, cirr_root, tmp_path, monkeypatch
):
    ckpt = tat_run / "checkpoints" / "last.ckpt"
    seen = run_with_snapshot(monkeypatch, synth, sup_args(
        synth, tmp_path / "sup", f"init_from={ckpt}", "supervised.alpha=0.8", "trainer.max_steps=8",
        val_benchmark(cirr_root), "trainer.check_val_every_n_epoch=2", "eval.alphas=[0.8]", "eval.methods=[slerp]"))
    module = seen["module"]
    assert_same_weights(seen["start"], tat_merged_weights(ckpt))
    L.seed_everything(0)  # what a silently ignored init_from would have given this seed-0 run
    fresh = merged_state_dict(create_backbone("cir-tiny", "none"))
    differs = [k for k in fresh if not torch.equal(fresh[k], seen["start"][k])]
    assert "visual.conv1.weight" in differs and "token_embedding.weight" in differs
    # fresh LoRA on the image tower only, and the loss on a fixed train batch falls
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert "fusion.alpha_logit" in trainable
    assert all(n.startswith("backbone.model.visual.") and "lora_" in n for n in trainable if n != "fusion.alpha_logit")
    assert batch_loss(module, seen["batch"]) < seen["loss"] - 0.05
    alpha = module.fusion.alpha.item()
    assert 0.0 <= alpha <= 1.0 and abs(alpha - 0.8) > 1e-3
    # validation at the end reports the learned alpha's metrics, equal to a brute-force ranking at that alpha
    metrics = seen["trainer"].callback_metrics
    assert metrics["eval/alpha"].item() == pytest.approx(alpha, abs=1e-6)
    expected = brute_force_recall(module.evaluator, lambda v, w: slerp(v, w, alpha))
    for key, value in expected.items():
        assert metrics[f"eval/cirr/val/slerp_learned/{key}"].item() == pytest.approx(value, abs=1e-4), key
    assert "eval/cirr/val/slerp_a0.8/R@1" in metrics


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_module_from_an_export_starts_from_its_weights(synth, tat_run, tmp_path, suffix):
    export = tat_run / "export.pt"
    if suffix == ".safetensors":
        export = export_open_clip(create_backbone("cir-tiny", str(export)), tmp_path / "tat.safetensors")
    cfg = load_config(FitConfig, None, sup_args(synth, tmp_path / "sup", f"init_from={export}"))
    module, data = supervised.build(cfg)
    assert has_lora(module.backbone.model)
    assert_same_weights(merged_state_dict(module.backbone), torch.load(tat_run / "export.pt", weights_only=True))
    assert len(data.dataset) == 64


def test_combiner_trains_and_is_validated(synth, tat_run, cirr_root, tmp_path, monkeypatch):
    seen = run_with_snapshot(monkeypatch, synth, sup_args(
        synth, tmp_path / "sup", f"init_from={tat_run / 'export.pt'}", "supervised.fusion=combiner",
        "supervised.combiner_hidden=32", "supervised.combiner_dropout=0.0", "trainer.max_steps=4",
        val_benchmark(cirr_root), "eval.alphas=[0.8]", "eval.methods=[image]"))
    module = seen["module"]
    assert isinstance(module.fusion, Combiner)
    after = module.fusion.state_dict()
    assert not torch.equal(after["out.weight"], seen["fusion"]["out.weight"])  # the zero-initialised residual learns
    assert not torch.equal(after["gate.3.bias"], seen["fusion"]["gate.3.bias"])
    assert batch_loss(module, seen["batch"]) < seen["loss"] - 0.05
    metrics = seen["trainer"].callback_metrics
    expected = brute_force_recall(module.evaluator, module.fusion)
    for key, value in expected.items():
        assert metrics[f"eval/cirr/val/combiner/{key}"].item() == pytest.approx(value, abs=1e-4), key
    assert "eval/alpha" not in metrics and "eval/cirr/val/image/R@1" in metrics


@pytest.mark.parametrize("experiment", ["sup_cirr_from_tat.yaml", "sup_fashioniq_from_tat.yaml"])
def test_cli_from_the_experiment_configs(experiment, synth, tat_run, fashioniq_root, tmp_path):
    out = tmp_path / "run"
    if experiment.startswith("sup_cirr"):
        data = [f"init_from={tat_run / 'checkpoints' / 'last.ckpt'}", f"supervised.train.root={synth / 'cirr'}",
                "data.batch_size=16"]
    else:  # the fixture excerpt has no train split: train on its dress val triplets (15)
        data = [f"init_from={tat_run / 'export.pt'}", f"supervised.train.root={fashioniq_root}",
                "supervised.train.split=val", "supervised.train.categories=[dress]", "data.batch_size=4"]
    run_cli(fit.main, [str(EXPERIMENTS / experiment), "model.name=cir-tiny", "model.pretrained=none", *data,
                       "eval.benchmarks=[]", "trainer.max_steps=3", "trainer.accelerator=cpu", "trainer.devices=1",
                       "trainer.strategy=auto", "trainer.precision=32", "trainer.enable_progress_bar=false",
                       "data.num_workers=0", f"output_dir={out}"])
    record = json.loads((out / "run.json").read_text())
    assert record["task"] == "supervised" and record["global_step"] == 3
    assert record["samples_seen"] == 3 * int(data[-1].split("=")[1])
    assert record["init_from"] == data[0].split("=", 1)[1]
    assert record["train_data"]["triplets"]["root"] == data[1].split("=", 1)[1]
    assert set(torch.load(out / "export.pt", weights_only=True)) == set(merged_state_dict(create_backbone("cir-tiny")))


def test_experiment_configs_hand_off_one_key(tmp_path):
    for experiment in ("sup_cirr_from_tat.yaml", "sup_fashioniq_from_tat.yaml"):
        cfg = load_config(FitConfig, EXPERIMENTS / experiment)
        check_fit_config(cfg)
        assert cfg.task == "supervised" and cfg.init_from == "outputs/tat_vitl/checkpoints/last.ckpt"
        assert cfg.model.name == "ViT-L-14" and cfg.supervised.train.split == "train"


@pytest.mark.parametrize(
    "override, message",
    [
        ("init_from=/nonexistent/tat/last.ckpt", "config key `init_from`: not found: /nonexistent/tat/last.ckpt"),
        ("model.name=ViT-B-32", "set model.name=cir-tiny"),
        ("supervised.fusion=sum", "supervised.fusion"),
        ("supervised.alpha=1.0", "supervised.alpha"),
        ("supervised.train.split=test1", "labelled split"),
        ("supervised.train.name=flickr", "supervised.train.name"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(override, message, synth, tat_run, tmp_path, capsys):
    args = sup_args(synth, tmp_path / "sup", f"init_from={tat_run / 'checkpoints' / 'last.ckpt'}", override)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(fit.main, [DEFAULTS, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_export_named_ckpt_is_not_taken_for_a_lightning_checkpoint(synth, tat_run, tmp_path):
    fake = Path(shutil.copy(tat_run / "export.pt", tmp_path / "export.ckpt"))
    cfg = load_config(FitConfig, None, sup_args(synth, tmp_path / "sup", f"init_from={fake}"))
    with pytest.raises(ValueError, match="not a checkpoint written by cir.fit"):
        supervised.build(cfg)
    fake.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="init_from.*does not read as a torch checkpoint"):
        supervised.build(cfg)


def test_contrastive_loss_is_cross_entropy_over_the_batch_targets():
    g = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    targets = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    loss = supervised.composed_contrastive_loss(queries, targets, scale)
    logits = [[10.0 * float(queries[i] @ targets[j]) for j in range(5)] for i in range(5)]
    expected = sum(torch.logsumexp(torch.tensor(row), 0).item() - row[i] for i, row in enumerate(logits)) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def _ddp_loss_worker(rank: int, world_size: int, init_file: str, queries, targets, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        q = queries.chunk(world_size)[rank].clone().requires_grad_(True)
        t = targets.chunk(world_size)[rank].clone().requires_grad_(True)
        loss = supervised.composed_contrastive_loss(q, t, torch.tensor(14.0), rank, world_size)
        loss.backward()
        torch.save({"loss": loss.detach(), "q": q.grad, "t": t.grad}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_process_loss_and_local_gradients_equal_one_process(tmp_path):
    g = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(8, 6, generator=g), dim=-1)
    targets = F.normalize(torch.randn(8, 6, generator=g), dim=-1)
    # fork, not spawn: a spawned child re-imports everything (seconds of CPU on a small machine)
    mp.start_processes(_ddp_loss_worker, args=(2, str(tmp_path / "init"), queries, targets, str(tmp_path)),
                       nprocs=2, join=True, start_method="fork")
    q, t = queries.clone().requires_grad_(True), targets.clone().requires_grad_(True)
    loss = supervised.composed_contrastive_loss(q, t, torch.tensor(14.0))
    loss.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
        assert torch.allclose(got["q"], q.grad.chunk(2)[rank], atol=1e-6)
        assert torch.allclose(got["t"], t.grad.chunk(2)[rank], atol=1e-6)


def test_record_names_the_triplets_and_the_start(synth, tat_run, tmp_path):
    cfg = load_config(FitConfig, None, sup_args(synth, tmp_path / "sup", f"init_from={tat_run / 'export.pt'}"))
    module, _ = supervised.build(cfg)
    record = module.record()
    assert record["train_data"]["triplets"] == OmegaConf.to_container(cfg.supervised.train)
    assert record["backbone"]["initial_fingerprint"] == create_backbone("cir-tiny", str(tat_run / "export.pt")).fingerprint()
    assert isinstance(module.fusion, SlerpFusion) and module.fusion.alpha.item() == pytest.approx(0.8, abs=1e-6)
