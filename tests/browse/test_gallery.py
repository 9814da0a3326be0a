"""Galleries the page can and cannot show: folders of images, files that do not decode, sizes past memory."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from cir.browse.gallery import FOLDER, GalleryError, check_fits, folder_benchmark


def test_a_folder_is_a_gallery_of_its_images_recursively(tmp_path):
    for name in ("b.png", "a.JPG", "sub/c.webp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="WEBP" if name.endswith("webp") else None)
    (tmp_path / "notes.txt").write_text("not an image")
    bench = folder_benchmark(tmp_path)
    assert bench.name == FOLDER and bench.queries == []
    assert bench.gallery == ["a.JPG", "b.png", "sub/c.webp"]
    assert bench.image_path("sub/c.webp") == tmp_path / "sub" / "c.webp"


def test_an_edited_folder_gets_a_new_cache_identity(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    before = folder_benchmark(tmp_path).info
    Image.new("RGB", (6, 6)).save(tmp_path / "a.png")
    os.utime(tmp_path / "a.png", ns=(1, 1))
    assert folder_benchmark(tmp_path).info["files"] != before["files"]


def test_folders_without_images_are_refused_with_the_path(tmp_path):
    with pytest.raises(GalleryError, match="no images"):
        folder_benchmark(tmp_path)
    with pytest.raises(GalleryError, match="not a folder"):
        folder_benchmark(tmp_path / "missing")


def test_a_gallery_past_free_memory_is_refused_before_encoding():
    check_fits(1000, 768, available=2 * 1000 * 768 * 4)
    with pytest.raises(GalleryError, match=r"123403 images needs about 0\.7 GiB.*only 0\.5 GiB is free"):
        check_fits(123_403, 768, available=2**29)


def test_a_split_evaluated_before_opens_from_the_evaluation_cache(cirr_root, tmp_path, monkeypatch):
    from cir import evaluate
    from cir.browse.browser import open_browser
    from cir.config import load_config
    from cir.models import Backbone
    from cir.schema import BrowseConfig

    settings = ["model.name=cir-tiny", "model.pretrained=none", f"data.root={cirr_root}", f"eval.cache_dir={tmp_path / 'cache'}",
                "data.num_workers=0", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]
    evaluate.main(None, [*settings, f"output_dir={tmp_path / 'eval'}", "eval.examples=0", "eval.alphas=[0.9]"])
    cfg = load_config(BrowseConfig, None, settings)

    def no_encoding(self, x):
        raise AssertionError("encoded although cir.evaluate cached these features")

    monkeypatch.setattr(Backbone, "encode_image", no_encoding)
    monkeypatch.setattr(Backbone, "encode_text", no_encoding)
    (gallery,) = open_browser(cfg).galleries
    assert gallery.vectors.shape[0] == len(gallery.bench.gallery) == gallery.index.n_gallery
