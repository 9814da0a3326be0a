"""Local weight files and the offline hub cache: the right activation for OpenAI's weights, tags read from a cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from huggingface_hub import constants
from open_clip.pretrained import _PRETRAINED, _pcfg

from cir.config import ConfigError
from cir.models import create_backbone
from cir.models.factory import _resolve_pretrained

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
REPO = "cir-test/tiny-oa.openai"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def tiny_openai(tmp_path, monkeypatch) -> str:
    """"tiny-oa" (GELU) and "tiny-oa-quickgelu" registered with an `openai` tag on a hub repo, as open_clip lists
    ViT-L-14's; returns the GELU name."""
    for name, quick in (("tiny-oa", False), ("tiny-oa-quickgelu", True)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**TINY, **({"quick_gelu": True} if quick else {})}))
        open_clip.add_model_config(path)
        monkeypatch.setitem(_PRETRAINED, name, {"openai": _pcfg(hf_hub=f"{REPO}/", quick_gelu=True)})
    return "tiny-oa"


def _features(backbone, seed: int = 0) -> torch.Tensor:
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return backbone.encode_image(images)


def _openai_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return open_clip.create_model("tiny-oa-quickgelu").state_dict()


def _torchscript_release(state: dict[str, torch.Tensor], path: Path) -> None:
    """A TorchScript archive shaped like OpenAI's release: the weights under open_clip's names plus the three
    buffers OpenAI keeps (open_clip's loader drops them)."""
    extra = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(16), "vocab_size": torch.tensor(49408)}
    root = torch.nn.Module()
    for key, value in {**state, **extra}.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        node.register_buffer(leaf, value.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; OpenAI's files are what they are
        torch.jit.script(root).save(str(path))


def test_a_torchscript_archive_is_read_as_openai_weights(tiny_openai, tmp_path) -> None:
    state = _openai_weights()
    _torchscript_release(state, tmp_path / "ViT-oa.pt")
    backbone = create_backbone(tiny_openai, str(tmp_path / "ViT-oa.pt"))
    assert backbone.name == "tiny-oa-quickgelu"
    torch.save(state, tmp_path / "plain.pt")
    reference = create_backbone("tiny-oa-quickgelu", str(tmp_path / "plain.pt"))
    torch.testing.assert_close(_features(backbone), _features(reference), rtol=0, atol=0)
    gelu = create_backbone("tiny-oa", "none")
    gelu.model.load_state_dict(state)
    assert not torch.allclose(_features(backbone), _features(gelu))  # the activation matters here


def test_a_file_that_does_not_say_its_activation_is_refused_naming_the_quickgelu_model(tiny_openai, tmp_path) -> None:
    torch.save(_openai_weights(), tmp_path / "weights.bin")
    with pytest.raises(ConfigError, match=r"model\.pretrained.*use model\.name=tiny-oa-quickgelu;") as err:
        create_backbone(tiny_openai, str(tmp_path / "weights.bin"))
    assert "\n" not in str(err.value)


def test_a_run_record_beside_the_file_names_the_activation(tiny_openai, tmp_path) -> None:
    torch.save(_openai_weights(), tmp_path / "export.pt")
    (tmp_path / "run.json").write_text(json.dumps({"export_model_name": "tiny-oa-quickgelu"}))
    assert _resolve_pretrained(tiny_openai, str(tmp_path / "export.pt")).model_name == "tiny-oa-quickgelu"
    (tmp_path / "run.json").write_text(json.dumps({"export_model_name": "tiny-oa"}))
    assert _resolve_pretrained(tiny_openai, str(tmp_path / "export.pt")).model_name == "tiny-oa"


def _hub_cache(cache: Path, repo: str, filename: str, payload: bytes) -> Path:
    """A cache entry laid out as huggingface_hub lays it out: blobs/<sha256>, snapshots/<commit>/<file> -> blob,
    refs/main -> commit."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    blob = folder / "blobs" / hashlib.sha256(payload).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(payload)
    link = folder / "snapshots" / COMMIT / filename
    link.parent.mkdir(parents=True)
    link.symlink_to(Path("../..") / "blobs" / blob.name)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    return link


def test_offline_a_tag_loads_from_a_prepared_cache(tiny_openai, tmp_path, monkeypatch) -> None:
    state = _openai_weights()
    torch.save(state, tmp_path / "w.bin")
    _hub_cache(tmp_path / "cache", REPO, "open_clip_pytorch_model.bin", (tmp_path / "w.bin").read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    backbone = create_backbone(tiny_openai, "openai", cache_dir=str(tmp_path / "cache"))
    assert backbone.name == "tiny-oa-quickgelu"
    reference = create_backbone("tiny-oa-quickgelu", str(tmp_path / "w.bin"))
    assert backbone.fingerprint() == reference.fingerprint()


def test_offline_a_missing_cache_entry_is_one_line_with_the_fetch_command(tiny_openai, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError) as err:
        create_backbone(tiny_openai, "openai", cache_dir=str(cache))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"pretrained weights tiny-oa-quickgelu / openai are not in the cache {cache} "
                              "(HF_HUB_OFFLINE is set)")
    assert f"run `hf download {REPO} open_clip_pytorch_model.bin --cache-dir {cache}`" in message


def test_the_fetch_command_fills_the_cache_open_clip_reads(tiny_openai, tmp_path) -> None:
    """The command the error names, run offline against a filled cache (no network here): it resolves the same
    file, so its arguments are the ones hf_hub_download takes."""
    link = _hub_cache(tmp_path / "cache", REPO, "open_clip_pytorch_model.bin", b"weights")
    out = subprocess.run(
        ["hf", "download", REPO, "open_clip_pytorch_model.bin", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}, check=True,
    )
    assert str(link) in out.stdout


def test_cir_tiny_files_need_no_activation_hint(tmp_path) -> None:
    """A model with no OpenAI weights (no `openai` tag) loads any file as before."""
    torch.save(open_clip.create_model("cir-tiny").state_dict(), tmp_path / "w.pt")
    assert _resolve_pretrained("cir-tiny", str(tmp_path / "w.pt")).model_name == "cir-tiny"
