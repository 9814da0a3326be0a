from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from cir.models import Backbone, apply_lora, export_open_clip, has_lora


@pytest.fixture
def tuned(build, images, captions) -> tuple[Backbone, torch.Tensor, torch.Tensor]:
    """cir-tiny with LoRA on both towers after a few AdamW steps (so LoRA B != 0)."""
    backbone = build()
    apply_lora(backbone, towers=("image", "text"), dropout=0.0)
    x, tokens = images(backbone), backbone.tokenize(captions)
    optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.arange(len(x))
    for _ in range(3):
        logits = backbone.encode_image(x) @ backbone.encode_text(tokens).T / 0.07
        optimizer.zero_grad()
        F.cross_entropy(logits, labels).backward()
        optimizer.step()
    assert all(p.abs().sum() > 0 for n, p in backbone.model.named_parameters() if "lora_B" in n)
    return backbone, x, tokens


@pytest.mark.parametrize("filename", ["tat.pt", "tat.safetensors"])
def test_export_loads_in_plain_open_clip(filename, tuned, tmp_path) -> None:
    backbone, x, tokens = tuned
    with torch.no_grad():
        expected = backbone.encode_image(x), backbone.encode_text(tokens)
    path = export_open_clip(backbone, tmp_path / "out" / filename)
    assert path == tmp_path / "out" / filename and sorted(p.name for p in path.parent.iterdir()) == [filename]
    model, _, _ = open_clip.create_model_and_transforms("cir-tiny", pretrained=str(path))
    model.eval()
    state = open_clip.load_checkpoint(open_clip.create_model("cir-tiny"), str(path), strict=True)
    assert not state.missing_keys and not state.unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x, normalize=True), expected[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_text(tokens, normalize=True), expected[1], atol=1e-5, rtol=0)


def test_export_leaves_the_backbone_training_ready(tuned, tmp_path) -> None:
    backbone, _, _ = tuned
    fingerprint = backbone.fingerprint()
    trainable = {n for n, p in backbone.model.named_parameters() if p.requires_grad}
    export_open_clip(backbone, tmp_path / "tat.pt")
    assert has_lora(backbone.model) and backbone.fingerprint() == fingerprint
    assert {n for n, p in backbone.model.named_parameters() if p.requires_grad} == trainable


def test_export_reloads_through_create_backbone(tuned, tmp_path, build) -> None:
    backbone, x, tokens = tuned
    path = export_open_clip(backbone, tmp_path / "tat.pt")
    path.write_bytes(b"stale")  # the next export must replace it whole
    export_open_clip(backbone, path)
    reloaded = build(seed=9, pretrained=str(path))
    assert reloaded.pretrained == str(path) and not has_lora(reloaded.model)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_image(x), backbone.encode_image(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(reloaded.encode_text(tokens), backbone.encode_text(tokens), atol=1e-5, rtol=0)
