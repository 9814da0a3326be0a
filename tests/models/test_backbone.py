from __future__ import annotations

import json
import re

import open_clip
import pytest
import torch
from PIL import Image

from cir.models import create_backbone, tower_parameter_names, train_transform
from cir.models.factory import _resolve_pretrained


def test_tiny_backbone_interface(build, images, captions) -> None:
    backbone = build()
    assert (backbone.name, backbone.pretrained, backbone.embed_dim) == ("cir-tiny", None, 64)
    tokens = backbone.tokenize(captions)
    assert tokens.dtype == torch.long and tokens.shape == (4, 32)
    assert torch.equal(backbone.tokenize("two cats"), tokens[1:2])
    with torch.no_grad():
        image_feats, text_feats = backbone.encode_image(images(backbone)), backbone.encode_text(tokens)
    for feats in (image_feats, text_feats):
        assert feats.shape == (4, 64)
        torch.testing.assert_close(feats.norm(dim=-1), torch.ones(4))
    picture = Image.new("RGB", (50, 40), (200, 10, 10))
    assert backbone.preprocess_val(picture).shape == (3, 32, 32)
    assert backbone.preprocess_train(picture).shape == (3, 32, 32)


def test_features_match_open_clip(build, images, captions) -> None:
    backbone = build(seed=5)
    torch.manual_seed(5)
    reference = open_clip.create_model("cir-tiny").eval()
    x, text = images(backbone), open_clip.get_tokenizer("cir-tiny")(captions)
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_image(x), reference.encode_image(x, normalize=True))
        torch.testing.assert_close(backbone.encode_text(text), reference.encode_text(text, normalize=True))


def test_tower_parameter_names_partition_the_model(build) -> None:
    model = build().model
    image, text = set(tower_parameter_names(model, "image")), set(tower_parameter_names(model, "text"))
    assert all(n.startswith("visual.") for n in image) and not image & text
    assert {"token_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight"} <= text
    assert "transformer.resblocks.1.attn.in_proj_weight" in text
    assert {n for n, _ in model.named_parameters()} - image - text == {"logit_scale"}
    with pytest.raises(ValueError, match="audio"):
        tower_parameter_names(model, "audio")


def test_set_trainable_freezes_one_tower(build) -> None:
    backbone = build()
    backbone.set_trainable("text", False)
    frozen = {n for n, p in backbone.model.named_parameters() if not p.requires_grad}
    assert frozen == set(tower_parameter_names(backbone.model, "text"))


def test_config_json_path(tmp_path, build, images) -> None:
    config = open_clip.get_model_config("cir-tiny")
    config["embed_dim"] = 48
    path = tmp_path / "my-clip.json"
    path.write_text(json.dumps(config))
    backbone = build(str(path))
    assert backbone.name == "my-clip" and backbone.embed_dim == 48
    assert backbone.encode_image(images(backbone)).shape == (4, 48)


def test_bad_model_names(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown model 'ViT-Q-99'.*open_clip.list_models\(\)"):
        create_backbone("ViT-Q-99")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        create_backbone(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"embed_dim": 8, "vision_cfg": {}}))
    with pytest.raises(ValueError, match="text_cfg"):
        create_backbone(str(bad))


def test_bad_pretrained_values(tmp_path) -> None:
    for missing in (str(tmp_path / "nothing.pt"), "weights.safetensors", "some/dir/ckpt"):
        with pytest.raises(FileNotFoundError, match=re.escape(missing)):
            create_backbone("cir-tiny", missing)
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'nope'.*'openai'"):
        create_backbone("ViT-B-32", "nope")
    with pytest.raises(ValueError, match="cir-tiny"):
        create_backbone("cir-tiny", "openai")


def test_openai_tag_uses_the_quickgelu_config() -> None:
    assert _resolve_pretrained("ViT-B-32", "openai")[:3] == ("openai", False, "ViT-B-32-quickgelu")
    assert _resolve_pretrained("ViT-B-32", "laion2b_s34b_b79k")[:3] == ("laion2b_s34b_b79k", False, "ViT-B-32")
    assert _resolve_pretrained("ViT-L-14", "NONE")[:3] == (None, False, "ViT-L-14")


def test_local_checkpoint_is_loaded(tmp_path, build, images) -> None:
    source = build(seed=3)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.model.state_dict().items()}}, path)
    loaded = build(seed=4, pretrained=str(path))
    assert loaded.pretrained == str(path)
    x = images(source)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), source.encode_image(x))
    assert loaded.fingerprint() == source.fingerprint()


def test_fingerprint_tracks_every_weight(build) -> None:
    a, b = build(seed=0), build(seed=0)
    assert a.fingerprint() == a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16 and int(a.fingerprint(), 16) >= 0
    assert build(seed=1).fingerprint() != a.fingerprint()
    with torch.no_grad():
        b.model.visual.transformer.resblocks[1].mlp.c_proj.weight[3, 7] += 1e-6
    assert b.fingerprint() != a.fingerprint()
    c = build(seed=0)
    with torch.no_grad():
        c.model.logit_scale.fill_(0.0)
    assert c.fingerprint() != a.fingerprint()
    assert a.fingerprint() != a.half().fingerprint()


def test_train_transform_takes_open_clip_augmentation_settings(build) -> None:
    backbone = build()
    assert train_transform(backbone, {}) is backbone.preprocess_train
    image = Image.fromarray(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).numpy())
    whole = train_transform(backbone, {"scale": [1.0, 1.0]})
    torch.manual_seed(0)
    # scale 1 keeps the whole image: the same tensor as the evaluation transform, every time
    assert all(torch.equal(whole(image), backbone.preprocess_val(image)) for _ in range(5))
    assert any(not torch.equal(backbone.preprocess_train(image), backbone.preprocess_val(image)) for _ in range(5))
    with pytest.raises(ValueError, match="scales"):
        train_transform(backbone, {"scales": [1.0, 1.0]})
