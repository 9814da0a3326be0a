from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from cir.models import (
    Backbone,
    SplitAttention,
    apply_lora,
    count_parameters,
    has_lora,
    merge_lora,
    tower_parameter_names,
)


def _lora_names(backbone: Backbone) -> list[str]:
    return [n for n, _ in backbone.model.named_parameters() if "lora_" in n]


def test_count_parameters() -> None:
    module = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))
    module[1].weight.requires_grad_(False)
    assert count_parameters(module) == (16, 24)


@pytest.mark.parametrize("towers", [("image",), ("text",), ("image", "text")])
def test_lora_starts_as_the_base_model(towers, build, images, captions) -> None:
    reference, backbone = build(), build()
    apply_lora(backbone, towers=towers)
    backbone.eval()
    x, tokens = images(reference), reference.tokenize(captions)
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_image(x), reference.encode_image(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(backbone.encode_text(tokens), reference.encode_text(tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("towers", [("image",), ("text",), ("image", "text")])
def test_lora_sits_only_in_the_chosen_towers(towers, build) -> None:
    backbone = build()
    apply_lora(backbone, towers=towers)
    model = backbone.model
    names = _lora_names(backbone)
    for tower in ("image", "text"):
        in_tower = set(names) & set(tower_parameter_names(model, tower))
        # 2 blocks x (q_proj, v_proj) x (lora_A, lora_B)
        assert len(in_tower) == (8 if tower in towers else 0), tower
    assert all(".q_proj.lora_" in n or ".v_proj.lora_" in n for n in names)
    for tower in ("image", "text"):
        split = any(isinstance(m, SplitAttention) for m in _tower_modules(model, tower))
        assert split == (tower in towers), tower
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(names)
    assert not model.logit_scale.requires_grad
    # width 64, rank 16: A is 16 x 64 and B is 64 x 16 for each adapted projection
    assert count_parameters(backbone)[0] == len(towers) * 2 * 2 * (16 * 64 + 64 * 16)


def _tower_modules(model: nn.Module, tower: str) -> list[nn.Module]:
    roots = ("visual",) if tower == "image" else ("transformer",)
    return [m for n, m in model.named_modules() if n.split(".")[0] in roots]


def test_lora_on_mlp_layers_by_suffix(build) -> None:
    backbone = build()
    apply_lora(backbone, target_modules=("mlp.c_fc",), r=4)
    names = _lora_names(backbone)
    assert len(names) == 4 and all(n.startswith("visual.") and ".mlp.c_fc.lora_" in n for n in names)
    assert count_parameters(backbone)[0] == 2 * (4 * 64 + 256 * 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "rank r"),
        ({"alpha": 0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"towers": ()}, "towers"),
        ({"towers": ("image", "audio")}, "audio"),
        ({"target_modules": ("q_proj", "qkv")}, r"\['qkv'\].*image tower"),
        ({"target_modules": ()}, "target_modules"),
    ],
)
def test_apply_lora_validates(kwargs, message, build) -> None:
    backbone = build()
    with pytest.raises(ValueError, match=message):
        apply_lora(backbone, **kwargs)


def test_apply_lora_twice_is_an_error(build) -> None:
    backbone = build()
    apply_lora(backbone)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(backbone, towers=("text",))


def test_training_changes_only_the_adapters(train_steps, build, images, captions) -> None:
    reference, backbone = build(), build()
    apply_lora(backbone, towers=("image",), dropout=0.0)
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    x, tokens = images(reference), reference.tokenize(captions)
    train_steps(backbone, x, tokens)
    after = dict(backbone.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == set(_lora_names(backbone))  # lora_A and lora_B of every adapted projection
    with torch.no_grad():
        assert torch.equal(backbone.encode_text(tokens), reference.encode_text(tokens))
        assert not torch.allclose(backbone.encode_image(x), reference.encode_image(x), atol=1e-4)


def test_merge_gives_a_plain_open_clip_model_with_the_same_features(train_steps, build, images, captions) -> None:
    backbone = build()
    apply_lora(backbone, towers=("image", "text"), dropout=0.0)
    x, tokens = images(backbone), backbone.tokenize(captions)
    train_steps(backbone, x, tokens)
    with torch.no_grad():
        tuned = backbone.encode_image(x), backbone.encode_text(tokens)
    merge_lora(backbone)
    assert not has_lora(backbone.model) and not hasattr(backbone.model, "peft_config")
    blocks = [m for m in backbone.model.modules() if isinstance(m, ResidualAttentionBlock)]
    assert all(type(b.attn) is nn.MultiheadAttention for b in blocks)
    assert backbone.model.state_dict().keys() == build().model.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_image(x), tuned[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(backbone.encode_text(tokens), tuned[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, layers, width", [("ViT-B-32", 12, 768), ("ViT-L-14", 24, 1024)])
def test_default_lora_trains_under_half_a_percent(name, layers, width) -> None:
    # Parameter counts do not depend on values: build on the meta device (no memory, no init time).
    with torch.device("meta"):
        model = open_clip.create_model(name, device="meta")
    backbone = Backbone(model, name, None, tokenizer=None, preprocess_train=None, preprocess_val=None, embed_dim=0)
    total_before = count_parameters(backbone)[1]
    apply_lora(backbone)
    trainable, total = count_parameters(backbone)
    expected = layers * 2 * 16 * (width + width)  # q and v per image block, A (16 x w) + B (w x 16)
    assert trainable == expected and total == total_before + expected
    assert trainable / total < 0.005
