"""BLIP through transformers on a tiny random config saved like a hub checkpoint: features, LoRA, export, CLIs."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    BertConfig,
    BertTokenizer,
    BlipConfig,
    BlipForImageTextRetrieval,
    BlipImageProcessor,
)
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from cir.models import (
    BlipBackbone,
    apply_lora,
    count_parameters,
    create_backbone,
    export_backbone,
    has_lora,
    merge_lora,
    tower_parameter_names,
)
from cir.models.blip import BLIP_CONTEXT_LENGTH, BlipTokenizer, SplitQKV
from cir.models.factory import _is_hugging_face_name
from cir.tasks.tat import build_tat_backbone

IMAGE_SIZE, WIDTH, EMBED_DIM, LAYERS = 32, 32, 24, 2
WORDS = ["a", "dog", "on", "sofa", "two", "cats", "red", "car", "make", "it", "blue", "square", "the"]
CAPTIONS = ["a dog on a sofa", "two cats", "a red car", "make it blue"]


def write_tiny_blip(folder: Path, seed: int = 0) -> Path:
    """A 2-layer random BlipForImageTextRetrieval with WordPiece vocab and image processor, as save_pretrained writes."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = list(string.ascii_lowercase)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters), *WORDS[1:]]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    config = BlipConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": WIDTH, "intermediate_size": 64,
                     "num_hidden_layers": LAYERS, "num_attention_heads": 2, "max_position_embeddings": 64,
                     "pad_token_id": 0, "bos_token_id": 2, "sep_token_id": 3, "eos_token_id": 3},
        vision_config={"hidden_size": WIDTH, "intermediate_size": 64, "num_hidden_layers": LAYERS,
                       "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": 16, "initializer_range": 0.02},
        image_text_hidden_size=EMBED_DIM,
    )
    torch.manual_seed(seed)
    BlipForImageTextRetrieval(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip")


@pytest.fixture
def blip(blip_dir: Path) -> BlipBackbone:
    return create_backbone(str(blip_dir), "none").eval()


def _images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def _lora_names(backbone: BlipBackbone) -> list[str]:
    return [n for n, _ in backbone.model.named_parameters() if "lora_" in n]


def test_features_are_blips_itc_embeddings(blip, blip_dir) -> None:
    assert isinstance(blip, BlipBackbone)
    # built in train mode like open_clip's models (Lightning keeps it, so TAT's LoRA dropout is active)
    assert all(m.training for m in create_backbone(str(blip_dir), "none").model.modules())
    assert (blip.name, blip.pretrained, blip.embed_dim) == (str(blip_dir), None, EMBED_DIM)
    tokens = blip.tokenize(CAPTIONS)
    reference_tokens = BertTokenizer.from_pretrained(blip_dir)(
        CAPTIONS, padding="max_length", truncation=True, max_length=BLIP_CONTEXT_LENGTH, return_tensors="pt"
    )
    assert tokens.dtype == torch.long and torch.equal(tokens, reference_tokens["input_ids"])
    assert torch.equal(blip.tokenize("two cats"), tokens[1:2])
    x = _images()
    with torch.no_grad():
        image, text = blip.encode_image(x), blip.encode_text(tokens)
        # transformers' own ITC path: cosine of every image with every caption
        reference = BlipForImageTextRetrieval.from_pretrained(blip_dir).eval()
        itc = reference(input_ids=tokens, pixel_values=x, attention_mask=reference_tokens["attention_mask"],
                        use_itm_head=False).itm_score
    for feats in (image, text):
        assert feats.shape == (4, EMBED_DIM)
        torch.testing.assert_close(feats.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(image @ text.T, itc, atol=1e-5, rtol=0)


def test_preprocessing_matches_blips_image_processor(blip) -> None:
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    reference = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    expected = torch.as_tensor(reference(picture, return_tensors="pt")["pixel_values"][0])
    torch.testing.assert_close(blip.preprocess_val(picture), expected, atol=1e-5, rtol=0)
    assert blip.preprocess_train(picture).shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_towers_partition_the_model(blip) -> None:
    model = blip.model
    image, text = set(tower_parameter_names(model, "image")), set(tower_parameter_names(model, "text"))
    assert image and all(n.startswith(("vision_model.", "vision_proj.")) for n in image)
    assert text and all(n.startswith(("text_encoder.", "text_proj.")) for n in text)
    assert {n for n, _ in model.named_parameters()} - image - text == {"itm_head.weight", "itm_head.bias"}


def test_split_qkv_gives_the_same_features_and_fuses_back_bit_for_bit(blip) -> None:
    original = {k: v.clone() for k, v in blip.model.state_dict().items()}
    x = _images()
    with torch.no_grad():
        expected = blip.encode_image(x)
        blip.split_attention(("image", "text"))
        assert sum(isinstance(m, SplitQKV) for m in blip.model.modules()) == LAYERS
        torch.testing.assert_close(blip.encode_image(x), expected, atol=1e-6, rtol=0)
    blip.fuse_attention()
    state = blip.model.state_dict()
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in original)


def test_lora_on_the_image_tower_trains_only_adapters(train_steps, blip, blip_dir) -> None:
    reference = create_backbone(str(blip_dir), "none").eval()
    apply_lora(blip, towers=("image",), dropout=0.0)
    names = _lora_names(blip)
    assert names and all(n.startswith("vision_model.") and (".qkv.q_proj.lora_" in n or ".qkv.v_proj.lora_" in n)
                         for n in names)
    # 2 layers x (q, v) x (A: r x width + B: width x r) at r 16
    assert count_parameters(blip)[0] == LAYERS * 2 * 16 * (WIDTH + WIDTH)
    before = {n: p.detach().clone() for n, p in blip.model.named_parameters()}
    x, tokens = _images(), blip.tokenize(CAPTIONS)
    train_steps(blip, x, tokens)
    changed = {n for n, p in blip.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed == set(names)
    with torch.no_grad():
        assert torch.equal(blip.encode_text(tokens), reference.encode_text(tokens))
        assert not torch.allclose(blip.encode_image(x), reference.encode_image(x), atol=1e-4)


def test_lora_on_the_text_tower_adapts_self_attention_only(blip) -> None:
    apply_lora(blip, towers=("text",))
    names = _lora_names(blip)
    assert len(names) == LAYERS * 2 * 2
    assert all(".attention.self.query.lora_" in n or ".attention.self.value.lora_" in n for n in names)
    assert not any("crossattention" in n for n in names)  # unused by the ITC text embedding
    with pytest.raises(ValueError, match=r"\['qkv'\].*image tower"):
        apply_lora(create_backbone(blip.name, "none"), towers=("image",), target_modules=("q_proj", "qkv"))


def test_grad_checkpointing_gives_the_same_lora_gradients(blip_dir) -> None:
    grads = []
    for checkpointing in (False, True):
        backbone = create_backbone(str(blip_dir), "none")
        torch.manual_seed(0)  # the same LoRA A init both times
        apply_lora(backbone, dropout=0.0)
        with torch.no_grad():
            for param in (p for n, p in backbone.model.named_parameters() if "lora_B" in n):
                param.normal_()
        backbone.set_grad_checkpointing(checkpointing)
        backbone.train()
        assert backbone.model.vision_model.encoder.layers[0].gradient_checkpointing == checkpointing
        loss = (backbone.encode_image(_images()) @ backbone.encode_text(backbone.tokenize(CAPTIONS)).T).trace()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in backbone.model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(g.abs().sum() > 0 for g in grads[1].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_export_is_a_plain_transformers_checkpoint_that_round_trips(train_steps, blip, blip_dir, tmp_path) -> None:
    apply_lora(blip, towers=("image", "text"), dropout=0.0)
    x, tokens = _images(), blip.tokenize(CAPTIONS)
    train_steps(blip, x, tokens)
    fingerprint = blip.fingerprint()
    with torch.no_grad():
        tuned = blip.encode_image(x), blip.encode_text(tokens)
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "stale.txt").write_text("from an earlier run")
    folder = export_backbone(blip, tmp_path)
    assert folder == tmp_path / "export" and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert not (folder / "stale.txt").exists()
    assert has_lora(blip.model) and blip.fingerprint() == fingerprint  # training can go on
    model, info = BlipForImageTextRetrieval.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    with torch.no_grad():
        itc = model.eval()(input_ids=tokens, pixel_values=x, attention_mask=tokens.ne(0).long(),
                           use_itm_head=False).itm_score
    torch.testing.assert_close(itc, tuned[0] @ tuned[1].T, atol=1e-5, rtol=0)
    # the folder is a model name of its own, and it or its weights file loads into the original architecture
    for name, weights in ((folder, "none"), (blip_dir, folder), (blip_dir, folder / "model.safetensors")):
        reloaded = create_backbone(str(name), str(weights))
        assert reloaded.pretrained == (None if weights == "none" else str(weights))
        assert not has_lora(reloaded.model)
        with torch.no_grad():
            torch.testing.assert_close(reloaded.eval().encode_image(x), tuned[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(reloaded.encode_text(tokens), tuned[1], atol=1e-5, rtol=0)
    merge_lora(blip)
    assert not has_lora(blip.model) and load_file(folder / "model.safetensors").keys() == blip.model.state_dict().keys()


def test_real_blip_large_trains_under_half_a_percent(blip_dir) -> None:
    # Salesforce/blip-itm-large-coco's architecture (ViT-L/16 at 384 px, BERT-base); counts need no weights.
    config = BlipConfig(
        text_config={"encoder_hidden_size": 1024, "num_attention_heads": 12},
        vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                       "num_hidden_layers": 24},
    )
    with torch.device("meta"):
        model = BlipForImageTextRetrieval(config)
    tokenizer = BlipTokenizer(BertTokenizer.from_pretrained(blip_dir))
    backbone = BlipBackbone(model, "Salesforce/blip-itm-large-coco", None, tokenizer, BlipImageProcessor())
    total_before = count_parameters(backbone)[1]
    apply_lora(backbone)
    trainable, total = count_parameters(backbone)
    expected = 24 * 2 * 16 * (1024 + 1024)  # q and v per vision block, A (16 x 1024) + B (1024 x 16)
    assert trainable == expected and total == total_before + expected
    assert 0.003 < trainable / total < 0.005  # 1.57M of 448M: 0.35 %
    assert backbone.embed_dim == 256 and backbone.preprocess_val.transforms[0].size == (384, 384)


def test_names_dispatch_to_blip_or_open_clip(blip_dir, tmp_path, monkeypatch) -> None:
    assert _is_hugging_face_name("Salesforce/blip-itm-large-coco") and _is_hugging_face_name(str(blip_dir))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ViT-L-14").mkdir()  # a folder that happens to share an open_clip name does not shadow it
    for name in ("ViT-B/32", "ViT-L-14", "cir-tiny", "configs/my-clip.json", "hf-hub:timm/ViT-B-16-SigLIP"):
        assert not _is_hugging_face_name(name), name


def test_bad_blip_sources_and_weights(blip_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="no Hugging Face config"):
        create_backbone(str(tmp_path))
    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
               intermediate_size=8).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert' model: only BLIP"):
        create_backbone(str(tmp_path / "bert"))
    captioner = write_tiny_blip(tmp_path / "captioner")
    config = json.loads((captioner / "config.json").read_text())
    (captioner / "config.json").write_text(json.dumps({**config, "architectures": ["BlipForConditionalGeneration"]}))
    with pytest.raises(ValueError, match="need BlipForImageTextRetrieval"):
        create_backbone(str(captioner))
    with pytest.raises(ValueError, match="brings its own weights"):
        create_backbone(str(blip_dir), "openai")
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        create_backbone(str(blip_dir), str(tmp_path / "nothing.safetensors"))
    state = load_file(blip_dir / "model.safetensors")
    del state["vision_proj.weight"]
    save_file(state, tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match=r"1 missing_keys.*vision_proj.weight"):
        create_backbone(str(blip_dir), str(tmp_path / "partial.safetensors"))


def test_evaluate_cli_encodes_cirr_with_blip(blip_dir, cirr_root, tmp_path) -> None:
    from cir import evaluate
    from cir.data.retrieval_benchmarks import load_benchmarks
    from cir.evaluation.features import EvalIndex

    out = tmp_path / "eval"
    evaluate.main(None, [f"model.name={blip_dir}", "model.pretrained=none", f"data.root={cirr_root}",
                         f"output_dir={out}", f"eval.cache_dir={out / 'cache'}", "data.num_workers=0",
                         "data.batch_size=16", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                         "eval.alphas=[0.9]", "eval.examples=0"])
    metrics = json.loads((out / "metrics.json").read_text())
    backbone = create_backbone(str(blip_dir), "none").eval()
    assert metrics["meta/model"] == str(blip_dir) and metrics["meta/fingerprint"] == backbone.fingerprint()
    assert {"cirr/val/slerp_a0.9/R@1", "cirr/val/slerp_a0.9/Rsub@1", "cirr/val/image/R@50"} <= metrics.keys()
    # the cached tables are BLIP's features of the split's images and captions
    bench = load_benchmarks("cirr", cirr_root, "val")[0]
    index = EvalIndex.build(bench)
    cache = torch.load(next((out / "cache").glob("*.pt")), weights_only=True)
    images = [Image.open(bench.image_path(i)).convert("RGB") for i in index.image_ids]
    with torch.no_grad():
        expected_image = backbone.encode_image(torch.stack([backbone.preprocess_val(im) for im in images]))
        expected_text = backbone.encode_text(backbone.tokenize(index.texts))
    torch.testing.assert_close(cache["image"].float(), expected_image, atol=2e-3, rtol=0)
    torch.testing.assert_close(cache["text"].float(), expected_text, atol=2e-3, rtol=0)


def test_tat_fit_cli_tunes_the_image_tower_and_exports_a_blip_folder(blip_dir, image_text_shards, tmp_path) -> None:
    from cir import fit

    out = fit.main(None, [f"model.name={blip_dir}", "model.pretrained=none", f"data.train_shards={image_text_shards}",
                          f"output_dir={tmp_path / 'tat'}", "data.num_workers=0", "data.batch_size=8",
                          "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
                          "trainer.max_steps=2", "optim.lr=1e-2", "optim.warmup_steps=0", "model.lora.dropout=0.0"])
    record = json.loads((out / "run.json").read_text())
    assert record["global_step"] == 2 and Path(record["export"]) == out / "export"
    original, tuned = load_file(blip_dir / "model.safetensors"), load_file(out / "export" / "model.safetensors")
    assert original.keys() == tuned.keys()
    changed = {k for k in original if not torch.equal(original[k], tuned[k])}
    # merged LoRA moved exactly the query and value rows of every vision qkv; the text anchor is bit-identical
    assert changed == {f"vision_model.encoder.layers.{i}.self_attn.qkv.weight" for i in range(LAYERS)}
    for key in changed:
        assert not torch.equal(original[key][:WIDTH], tuned[key][:WIDTH])
        assert torch.equal(original[key][WIDTH:2 * WIDTH], tuned[key][WIDTH:2 * WIDTH])  # key rows: no adapter
    # the export is the checkpoint's tuned model, merged: rebuild that from last.ckpt and compare features
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    tuned_backbone = build_tat_backbone(OmegaConf.create(ckpt["hyper_parameters"]["config"]))
    tuned_backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in ckpt["state_dict"].items()
                                    if k.startswith("backbone.")})
    exported = create_backbone(str(out / "export"), "none").eval()
    x, tokens = _images(), exported.tokenize(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(exported.encode_image(x), tuned_backbone.eval().encode_image(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(exported.encode_text(tokens), tuned_backbone.encode_text(tokens), atol=1e-5, rtol=0)


def test_experiment_configs_hold_the_papers_blip_settings() -> None:
    from cir.config import load_config
    from cir.schema import EvaluateConfig, FitConfig

    experiments = Path(__file__).resolve().parents[2] / "experiments"
    evaluation = load_config(EvaluateConfig, experiments / "eval_cirr_blip.yaml")
    assert (evaluation.model.name, evaluation.model.pretrained) == ("Salesforce/blip-itm-large-coco", "none")
    assert (evaluation.data.name, evaluation.eval.paper_alpha) == ("cirr", 0.9)
    tat = load_config(FitConfig, experiments / "tat_blip.yaml")
    vitl = load_config(FitConfig, experiments / "tat_vitl.yaml")
    assert (tat.task, tat.model.name, tat.model.anchor) == ("tat", "Salesforce/blip-itm-large-coco", "text")
    assert (tat.model.lora.r, tat.model.lora.alpha, tat.model.lora.dropout) == (16, 16, 0.1)
    assert list(tat.model.lora.target_modules) == ["q_proj", "v_proj"]
    assert tat.optim == vitl.optim and tat.data.global_batch_size == 1024
