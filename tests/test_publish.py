"""`python -m cir.publish`: a TAT run as open_clip's hub folder, loaded by plain open_clip and by cir."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import open_clip
import pytest
import torch

from cir import evaluate, fit
from cir import publish as publish_cli
from cir.config import run_cli
from cir.models import create_backbone
from cir.models.weight_files import HUB_CONFIG, HUB_WEIGHTS

TINY_FIT = ["model.name=cir-tiny", "model.pretrained=none", "data.num_workers=0", "data.batch_size=16",
            "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false", "optim.warmup_steps=1",
            "model.lora.dropout=0.0", "trainer.max_epochs=-1", "trainer.max_steps=3", "optim.lr=3e-3"]
# The commands docs/data_and_weights.md "Publishing a trained model" shows, with its placeholders
DOC_UPLOAD = "hf upload ORG/NAME outputs/tat_vitl_hub ."
DOC_PUBLISH = "python -m cir.publish outputs/tat_vitl --out outputs/tat_vitl_hub"
DOC_EVAL = "python -m cir.evaluate experiments/eval_cirr.yaml model.pretrained=outputs/tat_vitl_hub"


@pytest.fixture
def trained_run(image_text_shards, cirr_root, tmp_path) -> Path:
    """runs/tat (a 3-step TAT of cir-tiny) and runs/tat_val (its export evaluated on the CIRR excerpt)."""
    run = fit.main(None, [*TINY_FIT, f"data.train_shards={image_text_shards}", f"output_dir={tmp_path / 'runs' / 'tat'}"])
    evaluate.main(None, ["model.name=cir-tiny", f"model.pretrained={run / 'export.pt'}", f"data.root={cirr_root}",
                         f"output_dir={tmp_path / 'runs' / 'tat_val'}", "eval.cache_dir=null", "data.num_workers=0",
                         "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "eval.examples=0"])
    return run


def _doc_args(command: str, paths: dict[str, Path]) -> list[str]:
    """The arguments after `python -m MODULE`, each placeholder path replaced (longest first)."""
    args = shlex.split(command)[3:]
    for placeholder in sorted(paths, key=len, reverse=True):
        args = [arg.replace(placeholder, str(paths[placeholder])) for arg in args]
    return args


def test_the_folder_loads_in_open_clip_and_cir_with_the_export_features(trained_run, tmp_path, capsys) -> None:
    out = tmp_path / "hub"
    args = _doc_args(DOC_PUBLISH, {"outputs/tat_vitl": trained_run, "outputs/tat_vitl_hub": out})
    run_cli(publish_cli.main, args, passthrough=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", HUB_CONFIG, HUB_WEIGHTS]
    assert f"wrote {out}" in capsys.readouterr().out
    config = json.loads((out / HUB_CONFIG).read_text())
    assert config["model_cfg"] == open_clip.get_model_config("cir-tiny")
    assert set(config["preprocess_cfg"]) >= {"mean", "std"}
    plain, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    reference, _, _ = open_clip.create_model_and_transforms("cir-tiny", pretrained=str(trained_run / "export.pt"))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(plain.eval().encode_image(images), reference.eval().encode_image(images), rtol=0, atol=0)
    from_folder = create_backbone("cir-tiny", str(out))
    from_export = create_backbone("cir-tiny", str(trained_run / "export.pt"))
    assert from_folder.fingerprint() == from_export.fingerprint()
    tokens = from_export.tokenize(["a red square", "make it blue"])
    with torch.no_grad():
        torch.testing.assert_close(from_folder.encode_text(tokens), from_export.encode_text(tokens), rtol=0, atol=0)
    assert repr(from_folder.preprocess_val) == repr(from_export.preprocess_val)  # the feature-cache key too
    with pytest.raises(ValueError, match=r"config key `model.name`: 'cir-demo' is not the architecture of"):
        create_backbone("cir-demo", str(out))
    from_ckpt = publish_cli.publish(trained_run / "checkpoints" / "last.ckpt", tmp_path / "from_ckpt")
    assert create_backbone("cir-tiny", str(from_ckpt)).fingerprint() == from_export.fingerprint()


def test_the_card_reads_every_number_from_the_run_records(trained_run, tmp_path) -> None:
    out = publish_cli.publish(trained_run, tmp_path / "hub")
    card = (out / "README.md").read_text()
    record = json.loads((trained_run / "run.json").read_text())
    metrics = json.loads((tmp_path / "runs" / "tat_val" / "metrics.json").read_text())
    assert "library_name: open_clip" in card and "license: other" in card
    for line in (
        "- **Base model:** cir-tiny (open_clip), weights `none`",
        "- **Anchor (frozen tower):** text (the image tower is tuned)",
        "- **LoRA (merged into these weights):** rank 16, alpha 16, dropout 0.0, on q_proj, v_proj",
        "- **Temperature:** 0.07 (fixed)",
        "- **Steps:** 3",
        f"- **Pairs seen:** {record['samples_seen']}",
        f"- **Training data:** {record['train_data']['train_shards']}",
        f"- **Weights fingerprint:** {metrics['meta/fingerprint']}",
        f"- **Framework:** cir {record['versions']['cir']} (commit {record['versions']['cir_commit']}), "
        f"open_clip {open_clip.__version__}",
    ):
        assert line in card, line
    r1 = metrics["cirr/val/slerp_a0.9/R@1"]
    assert f"| tat_val | cirr/val | slerp_a0.9 | R@1 {r1:.2f}, " in card
    assert "exclude_reference/cirr: True" in card


def test_the_published_folder_evaluates_as_the_doc_shows(trained_run, cirr_root, tmp_path) -> None:
    """The docs' evaluate command with model.pretrained=DIR gives the export's numbers."""
    out = publish_cli.publish(trained_run, tmp_path / "hub")
    args = _doc_args(DOC_EVAL, {"outputs/tat_vitl_hub": out})
    assert args[0] == "experiments/eval_cirr.yaml"
    evaluate.main(args[0], [*args[1:], "model.name=cir-tiny", f"data.root={cirr_root}", f"output_dir={tmp_path / 'e'}",
                            "eval.cache_dir=null", "data.num_workers=0", "trainer.accelerator=cpu",
                            "trainer.enable_progress_bar=false", "eval.examples=0", "data.image_root=null"])
    ours = json.loads((tmp_path / "e" / "metrics.json").read_text())
    export = json.loads((tmp_path / "runs" / "tat_val" / "metrics.json").read_text())
    assert {k: v for k, v in ours.items() if "/val/" in k} == {k: v for k, v in export.items() if "/val/" in k}


def test_the_documented_upload_command_parses(tmp_path) -> None:
    """The one upload command the docs show, run offline: huggingface_hub accepts its arguments and stops only
    at the network (an upload itself needs a token and the Hub, which no test has)."""
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "README.md").write_text("card")
    args = shlex.split(DOC_UPLOAD.replace("outputs/tat_vitl_hub", str(tmp_path / "hub")))
    done = subprocess.run(args, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})
    assert done.returncode == 1
    assert "offline mode is enabled" in done.stdout + done.stderr
