"""The Gradio page over a Browser: inputs on the left, the result panel on the right, nothing computed here.

Gradio is imported only inside `build` / `launch` (the optional `app` extra),
and it runs offline: analytics off (set before the import), no share link,
and system fonts instead of the theme's web fonts.
"""

import os
import warnings

from cir.browse.browser import BENCHMARK, PAGE_ERRORS, SOURCES, UPLOAD, Browser
from cir.browse.session import SHOW
from cir.config import ConfigError
from cir.slerp import METHODS

CSS = """
.cir-panel {display: flex; flex-direction: column; gap: 14px}
.cir-query {display: flex; align-items: center; gap: 18px}
.cir-caption {font-size: 1.15em; font-weight: 600; margin: 0}
.cir-model h3 {margin: 0 0 2px 0; font-size: 1em}
.cir-metrics {margin: 0 0 6px 0; color: #555; font-size: 0.9em}
.cir-row {display: flex; flex-wrap: wrap; gap: 8px}
.cir-tile {margin: 0; width: 108px; border: 4px solid #cfcfcf; border-radius: 6px; background: #fff; overflow: hidden}
.cir-tile img {display: block; width: 100px; height: 100px; object-fit: contain; image-rendering: pixelated}
.cir-tile figcaption {font-size: 12px; text-align: center; color: #333; padding: 2px 0}
.cir-target {border-color: #1f9d3a; box-shadow: 0 0 0 2px #1f9d3a}
.cir-target figcaption {color: #1f7a30; font-weight: 600}
.cir-reference {border-color: #3366ff}
.cir-message {padding: 12px 16px; border-left: 4px solid #d9534f; background: #fdf2f2; border-radius: 4px}
"""
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]


def build(browser: Browser):
    """The page as a gr.Blocks; every event calls the browser with all of the page's inputs."""
    import gradio as gr

    has_queries = bool(browser.bench.queries)
    with gr.Blocks(title="cir browse", analytics_enabled=False, fill_width=True) as page:
        gr.Markdown("## Composed image retrieval: browse and compare")
        title = gr.Markdown(browser.title(), elem_id="cir-title")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                source = gr.Radio(list(SOURCES), value=BENCHMARK if has_queries else UPLOAD, label="Query from", elem_id="cir-source")
                search = gr.Textbox(label="Search captions and ids", elem_id="cir-search")
                show = gr.Radio(list(SHOW), value="all", label="Queries whose target model A ranks in the top K", elem_id="cir-show")
                first = browser.query_choices("", "all", "slerp", browser.alpha)
                query = gr.Dropdown(first, value=first[0][1] if first else None, label="Benchmark query", elem_id="cir-query")
                upload = gr.File(label="Or upload a reference image", type="filepath", height=120, elem_id="cir-upload")
                caption = gr.Textbox(label="Relative caption for the upload (Enter applies it)", elem_id="cir-caption")
                method = gr.Radio(list(METHODS), value="slerp", label="Composition", elem_id="cir-method")
                alpha = gr.Slider(0.0, 1.0, value=browser.alpha, step=0.05, label="alpha (Slerp: 0 image, 1 text)", elem_id="cir-alpha")
                export = gr.Button("Export panel as PNG", elem_id="cir-export")
                exported = gr.File(label="Exported panel", interactive=False, height=60, elem_id="cir-exported")
            with gr.Column(scale=4):
                results = gr.HTML(elem_id="cir-results")
                with gr.Accordion("Where the two models disagree most (target rank)", open=len(browser.galleries) > 1):
                    with gr.Row():
                        compare = gr.Button("Rank every query", elem_id="cir-compare", scale=0, min_width=180)
                        setting = gr.Markdown(elem_id="cir-setting")
                    table = gr.Dataframe(headers=["row", "query", "caption", "rank A", "rank B"], interactive=False,
                                         max_height=300, elem_id="cir-disagree")
                with gr.Accordion("Gallery", open=False):
                    folder = gr.Textbox(label="Folder of images (empty: the configured benchmark split)", elem_id="cir-folder")
                    load = gr.Button("Open gallery", elem_id="cir-open")
                    status = gr.Markdown(elem_id="cir-status")

        inputs = [source, query, upload, caption, method, alpha]

        def choices(text, shown, method_name, alpha_value):
            try:
                return gr.Dropdown(choices=browser.query_choices(text, shown, method_name, alpha_value))
            except PAGE_ERRORS as err:
                gr.Warning(str(err))
                return gr.Dropdown()

        def export_png(*values):
            try:
                return str(browser.export(*values))
            except PAGE_ERRORS as err:
                gr.Warning(str(err))
                return None

        def pick(rows, evt: gr.SelectData):
            row = int(rows.iloc[evt.index[0], 0])
            return BENCHMARK, gr.Dropdown(choices=[(browser.query_label(row), row)], value=row)

        def open_gallery(path):
            message = browser.open_folder(path)
            picked = browser.query_choices("", "all", "slerp", browser.alpha)
            source_value = BENCHMARK if browser.bench.queries else UPLOAD
            return message, browser.title(), gr.Dropdown(choices=picked, value=picked[0][1] if picked else None), source_value

        for trigger in (source.change, query.change, caption.submit, method.change, alpha.change):
            trigger(browser.show, inputs, results, trigger_mode="always_last")
        upload.upload(lambda *values: (UPLOAD, browser.show(UPLOAD, *values[1:])), inputs, [source, results])
        query.select(lambda: BENCHMARK, None, source)
        for trigger in (search.submit, show.change):
            trigger(choices, [search, show, method, alpha], query)

        def disagree(method_name, alpha_value):
            rows = browser.disagreement_rows(method_name, alpha_value)
            return rows, f"click a row to show it · ranked at {browser.composition(method_name, alpha_value)}"

        # Every query under both models (seconds on CIRCO's gallery): on demand, not on each slider move.
        for trigger in (compare.click, page.load):
            trigger(disagree, [method, alpha], [table, setting])
        table.select(pick, table, [source, query])
        export.click(export_png, inputs, exported)
        load.click(open_gallery, folder, [status, title, query, source]).then(browser.show, inputs, results)
        page.load(browser.show, inputs, results)
    return page


def launch(browser: Browser, host: str, port: int, block: bool = True):
    """Serve the page on host:port and print its address; with block=False return the running page."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    # Gradio's queue calls pandas APIs that pandas 3 deprecates: notices about Gradio's code, not a fault of the page.
    warnings.filterwarnings("ignore", module="gradio.queueing")

    page = build(browser)
    theme = gr.themes.Soft(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])
    try:
        page.launch(server_name=host, server_port=port, share=False, quiet=True, prevent_thread_lock=True,
                    theme=theme, css=CSS, footer_links=[])
    except OSError as err:
        raise ConfigError(f"config key `browse.port`: cannot listen on {host}:{port} ({err})") from err
    print(f"browse: {page.local_url} (Ctrl+C to stop)", flush=True)
    if block:
        page.block_thread()
    return page
