"""The page's answers without the web stack: every bad input is a message, exports are PNG panels."""

from __future__ import annotations

import pytest
from PIL import Image

from cir.browse.browser import BENCHMARK, UPLOAD, Browser
from cir.browse.gallery import GalleryError


@pytest.fixture
def browser(gallery_factory):
    return Browser([gallery_factory(seed=0, label="A"), gallery_factory(seed=1, label="B")], top_k=4, depth=1000)


def test_a_benchmark_query_shows_both_models_with_their_ranks(browser):
    html = browser.show(BENCHMARK, 3, None, "", "slerp", 0.8)
    assert html.count('class="cir-model"') == 2 and "A · slerp_a0.8" in html and "B · slerp_a0.8" in html
    assert html.count("target rank") == 2 and "caption 3 red" in html
    assert html.count("<figure") == 1 + 2 * 4  # the reference and each model's top 4


@pytest.mark.parametrize(("source", "row", "upload", "message"), [
    (BENCHMARK, None, None, "pick a query"),
    (BENCHMARK, 99, None, "pick a query"),
    (UPLOAD, None, None, "upload a reference image"),
    ("clipboard", None, None, "unknown query source"),
])
def test_missing_or_impossible_input_is_a_message(browser, source, row, upload, message):
    assert message in browser.show(source, row, upload, "", "slerp", 0.8)


def test_an_upload_that_does_not_decode_is_a_message(browser, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    html = browser.show(UPLOAD, None, str(tmp_path / "broken.jpg"), "make it red", "slerp", 0.8)
    assert 'class="cir-message"' in html and "not an image this page can read" in html


def test_export_writes_the_shown_panel_as_png(browser):
    path = browser.export(BENCHMARK, 2, None, "", "sum", 0.3)
    assert path.name == "query-2-sum.png"
    with Image.open(path) as panel:
        assert panel.format == "PNG" and panel.width == 5 * (96 + 8 + 2) + 2  # reference + top 4, framed and padded


def test_disagreements_list_queries_where_the_ranks_differ(browser):
    rows = browser.disagreement_rows("slerp", 0.8)
    assert rows and all(a != b for _, _, _, a, b in rows)
    single = Browser(browser.galleries[:1], top_k=4, depth=1000)
    assert single.disagreement_rows("slerp", 0.8) == []


def test_filters_and_galleries_that_do_not_match(browser, gallery_factory):
    assert [row for _, row in browser.query_choices("red", "all", "slerp", 0.8)] == [1, 3, 5, 7, 9, 11]
    with pytest.raises(GalleryError, match="one gallery"):
        browser.swap([browser.galleries[0], gallery_factory(images=10, label="C")])
    assert "started without" in browser.open_folder("/tmp")


def test_opening_a_folder_that_cannot_be_shown_keeps_the_current_gallery(browser):
    def loader(folder):
        raise GalleryError(f"gallery folder {folder}: no images in it")

    browser.loader = loader
    shown = browser.galleries
    assert browser.open_folder("/empty") == "could not open the gallery: gallery folder /empty: no images in it"
    assert browser.galleries is shown and "target rank" in browser.show(BENCHMARK, 0, None, "", "sum", 0.0)


def test_the_exports_folder_goes_with_the_browser(gallery_factory):
    """Exported panels live in a folder of the page's own; it was left in /tmp by every page and test before."""
    import gc

    browser = Browser([gallery_factory(seed=0, label="A")], top_k=4, depth=1000)
    folder = browser.exports
    assert folder.is_dir()
    del browser
    gc.collect()
    assert not folder.exists()
