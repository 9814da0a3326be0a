"""The page end to end: the real server on the generated benchmark with a tiny model, driven in headless Chromium.

Needs the app extra (`pip install -e ".[app]"`: Gradio, Playwright's Python package) and Debian's `chromium`;
skips, naming what is missing, without them. Playwright drives the system browser (no browser download).
"""

from __future__ import annotations

import shutil
import socket
from urllib.parse import urljoin

import pytest

pytest.importorskip("gradio", reason='the app extra is not installed: pip install -e ".[app]"')
sync_api = pytest.importorskip("playwright.sync_api", reason='the app extra is not installed: pip install -e ".[app]"')
CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium)", allow_module_level=True)

from cir.browse.app import launch  # noqa: E402
from cir.browse.browser import open_browser  # noqa: E402
from cir.config import load_config  # noqa: E402
from cir.data.synth import generate  # noqa: E402
from cir.schema import BrowseConfig  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PNG = b"\x89PNG\r\n\x1a\n"
SYNTH = dict(image_size=16, pretrain_samples=4, tune_samples=4, train_queries=4, val_queries=12, test_queries=4,
             shard_size=16)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(page URL, browser state, benchmark root) of a server comparing two randomly initialised tiny models."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, 0, progress=False, **SYNTH)
    port = free_port()
    cfg = load_config(BrowseConfig, None, [
        "model.name=cir-tiny", "model.pretrained=none", f"data.root={root / 'cirr'}", "eval.cache_dir=null",
        "data.num_workers=0", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "browse.compare.name=cir-tiny", "browse.compare.pretrained=none", f"browse.port={port}"])
    browser = open_browser(cfg)
    # A random model ranks targets far down: show enough results that the best query's target is among them.
    ranks = browser.target_ranks(0, "slerp", browser.alpha)
    row = int(ranks.argmin())
    browser.top_k = int(ranks[row])
    page = launch(browser, "127.0.0.1", port, block=False)
    yield page.local_url, browser, row, root
    page.close()


def settle(tab) -> None:
    """Wait until the result panel has no request in flight."""
    tab.wait_for_function("() => document.querySelector('#cir-results [data-testid=status-tracker]').classList.contains('hide')")


def tile_ids(tab) -> list[str]:
    return tab.locator("#cir-results .cir-model").first.locator(".cir-tile").evaluate_all("els => els.map(e => e.dataset.id)")


def test_query_slider_upload_and_screenshot(served, tmp_path):
    url, browser, row, root = served
    label, caption = browser.query_label(row), browser.bench.queries[row].caption
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1400, "height": 1000})
        tab = chromium.new_page()
        requests: list[str] = []
        tab.on("request", lambda request: requests.append(request.url))
        tab.goto(url)
        tab.wait_for_selector("#cir-results .cir-tile")
        # choose a query: its caption heads the panel and its target is framed in model A's row
        tab.locator("#cir-query input").fill(label.split(" · ")[0])
        tab.locator("[role=option]", has_text=label).first.click()
        tab.wait_for_function(f"() => document.querySelector('#cir-results .cir-caption').textContent === {caption!r}")
        settle(tab)
        model_a = tab.locator("#cir-results .cir-model").first
        assert model_a.locator(".cir-target").count() == 1
        assert f"target rank {browser.top_k}" in model_a.locator(".cir-metrics").inner_text()
        before = tile_ids(tab)
        # move the slider to alpha 0: another composition, another ranking
        slider = tab.locator("#cir-alpha input[type=range]")
        slider.focus()
        slider.press("Home")
        tab.wait_for_function("() => document.querySelector('#cir-results .cir-model h3').textContent.endsWith('slerp_a0.0')")
        settle(tab)
        assert tile_ids(tab) != before
        # export the shown panel
        tab.locator("#cir-export").click()
        tab.wait_for_selector("#cir-exported a")
        href = tab.locator("#cir-exported a").first.get_attribute("href")
        assert href.endswith(f"query-{row}-slerp_a0.0.png")
        assert tab.request.get(urljoin(url, href)).body()[:8] == PNG
        # the table lists where the two models disagree most; clicking a row shows that query
        first = browser.disagreement_rows("slerp", browser.alpha)[0]
        tab.locator("#cir-disagree").get_by_text(first[2], exact=True).filter(visible=True).first.click()
        tab.wait_for_function(f"() => document.querySelector('#cir-results .cir-caption').textContent === {first[2]!r}")
        # a file that is not an image: a message on the page, and the server keeps answering
        (tmp_path / "notes.png").write_text("not an image")
        tab.locator("#cir-caption textarea").fill("make it red")
        tab.locator("#cir-upload input[type=file]").set_input_files(str(tmp_path / "notes.png"))
        tab.wait_for_selector("#cir-results .cir-message")
        assert "not an image" in tab.locator("#cir-results .cir-message").inner_text()
        tab.locator("#cir-upload button[aria-label='Clear']").click()
        tab.locator("#cir-upload input[type=file]").set_input_files(str(root / "cirr" / "dev" / "dev-00001.png"))
        tab.wait_for_function("() => document.querySelector('#cir-results .cir-caption')?.textContent === 'make it red'")
        settle(tab)
        assert tab.locator("#cir-source input:checked").get_attribute("value") == "upload"
        assert len(tile_ids(tab)) == browser.top_k
        shot = tmp_path / "browse.png"
        tab.screenshot(path=str(shot), full_page=True)
        chromium.close()
    # offline: no fonts, analytics or scripts from anywhere but the local server
    assert [r for r in requests if not r.startswith((url, "data:", "blob:"))] == []
    assert shot.read_bytes()[:8] == PNG
