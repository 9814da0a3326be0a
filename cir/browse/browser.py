"""The page's state and answers, without the web stack: one or two models over one gallery.

Every page event becomes one call here with all of the page's inputs (the
page keeps no hidden state), and every input the page cannot use becomes a
message in the result panel instead of an exception that would stop the server.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import lightning as L
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor

from cir.browse import render
from cir.browse.gallery import (
    GalleryError,
    benchmark_split,
    encode_gallery,
    folder_benchmark,
    load_backbone,
)
from cir.browse.session import (
    Gallery,
    Query,
    QueryError,
    Result,
    benchmark_query,
    disagreements,
    find_queries,
    search,
    slerp_alpha,
    target_ranks,
    upload_query,
)
from cir.data.images import load_rgb
from cir.evaluation.splits import paper_alpha
from cir.slerp import method_key

BENCHMARK, UPLOAD = "benchmark query", "upload"
SOURCES = (BENCHMARK, UPLOAD)
PAGE_ERRORS = (QueryError, GalleryError, OSError, ValueError)


class Browser:
    """Galleries of the same images under one or two models; `open_folder` swaps in another gallery."""

    def __init__(
        self,
        galleries: list[Gallery],
        top_k: int,
        depth: int,
        loader: Callable[[str | None], list[Gallery]] | None = None,
        limit: int = 500,
        alpha: float = 0.8,
    ) -> None:
        """`loader(folder)` gives the galleries of a folder (None: the configured split), for `open_folder`;
        `alpha` is the slider's first value (the paper's for the benchmark)."""
        self.top_k, self.depth, self.limit, self.loader, self.alpha = top_k, depth, limit, loader, alpha
        self.galleries: list[Gallery] = []
        self.ranks: dict[tuple[int, str, float | None], Tensor] = {}
        # the PNGs a user downloads live as long as the page: removed when the browser goes (or the process exits)
        self._exports = tempfile.TemporaryDirectory(prefix="cir-browse-")
        self.exports = Path(self._exports.name)
        self.swap(galleries)

    def swap(self, galleries: list[Gallery]) -> None:
        if not galleries or any(g.bench.gallery != galleries[0].bench.gallery for g in galleries):
            raise GalleryError("the models must be shown one gallery (the same images in the same order)")
        self.galleries = galleries
        self.ranks = {}

    def open_folder(self, folder: str) -> str:
        """Show a folder of images (empty: the configured split again); a message says what happened."""
        if self.loader is None:
            return "this page was started without a way to load other galleries"
        try:
            self.swap(self.loader(folder.strip() or None))
        except PAGE_ERRORS as err:
            return f"could not open the gallery: {err}"
        return f"showing {self.title()}"

    @property
    def bench(self):
        return self.galleries[0].bench

    def title(self) -> str:
        models = " vs ".join(g.label for g in self.galleries)
        return f"{self.bench.name}/{self.bench.split}: {len(self.bench.gallery)} images, {len(self.bench.queries)} queries · {models}"

    def target_ranks(self, model: int, method: str, alpha: float) -> Tensor:
        key = (model, method, slerp_alpha(method, alpha))
        if key not in self.ranks:
            self.ranks[key] = target_ranks(self.galleries[model], method, alpha, self.depth)
        return self.ranks[key]

    def query_choices(self, text: str, show: str, method: str, alpha: float) -> list[tuple[str, int]]:
        """(label, row) of the benchmark queries the search box and filter leave, for the query picker."""
        if not self.bench.queries:
            return []
        rows = find_queries(self.bench, text, self.target_ranks(0, method, alpha), show, self.top_k, self.limit)
        return [(self.query_label(row), row) for row in rows]

    def query_label(self, row: int) -> str:
        query = self.bench.queries[row]
        return f"{query.query_id} · {query.caption}"

    def answers(
        self, source: str, row: int | None, upload: str | None, caption: str, method: str, alpha: float
    ) -> tuple[Image.Image, str, list[tuple[Gallery, Result, str]]]:
        """(reference image, caption, [(gallery, result, heading)] per model) for the page's current inputs."""
        queries: list[Query]
        if source == BENCHMARK:
            if row is None or not 0 <= int(row) < len(self.bench.queries):
                raise QueryError("pick a query from the list (or upload a reference image)")
            query = self.bench.queries[int(row)]
            reference, caption = self.bench.load_image(query.reference), query.caption
            queries = [benchmark_query(g, int(row)) for g in self.galleries]
        elif source == UPLOAD:
            if not upload:
                raise QueryError("upload a reference image")
            try:
                reference = load_rgb(Path(upload))
            except (OSError, Image.DecompressionBombError) as err:
                raise QueryError(f"the uploaded file is not an image this page can read ({type(err).__name__}: {err})") from err
            queries = [upload_query(g.backbone, reference, caption or "", method) for g in self.galleries]
        else:
            raise QueryError(f"unknown query source {source!r}: one of {', '.join(SOURCES)}")
        answers = []
        for g, q in zip(self.galleries, queries):
            answers.append((g, search(g, q, method, alpha, self.top_k, self.depth), f"{g.label} · {self.composition(method, alpha)}"))
        return reference, caption, answers

    @staticmethod
    def composition(method: str, alpha: float) -> str:
        """The method as metrics.json names it: 'sum', 'slerp_a0.8'."""
        return method_key(method, slerp_alpha(method, alpha))

    def show(self, source: str, row: int | None, upload: str | None, caption: str, method: str, alpha: float) -> str:
        """The result panel's HTML, or a message saying what to fix."""
        return self.guard(lambda: self._show(source, row, upload, caption, method, alpha))

    def _show(self, source: str, row: int | None, upload: str | None, caption: str, method: str, alpha: float) -> str:
        reference, caption, answers = self.answers(source, row, upload, caption, method, alpha)
        rows = [render.model_html(g, result, heading, self.depth) for g, result, heading in answers]
        return render.panel_html(render.data_uri(reference), caption, rows)

    def export(self, source: str, row: int | None, upload: str | None, caption: str, method: str, alpha: float) -> Path:
        """The shown panel as a PNG file (raises QueryError and friends; the page turns them into a message)."""
        reference, caption, answers = self.answers(source, row, upload, caption, method, alpha)
        name = f"query-{row}" if source == BENCHMARK else "upload"
        path = self.exports / f"{name}-{self.composition(method, alpha)}.png"
        return render.panel_png(path, reference, caption, answers, self.depth)

    def disagreement_rows(self, method: str, alpha: float, limit: int = 50) -> list[list]:
        """[row, query id, caption, rank A, rank B] where the two models' target ranks differ most."""
        if len(self.galleries) < 2 or not self.bench.has_targets:
            return []
        ranks_a, ranks_b = self.target_ranks(0, method, alpha), self.target_ranks(1, method, alpha)
        table = []
        for row, a, b in disagreements(ranks_a, ranks_b, self.depth, limit):
            query = self.bench.queries[row]
            table.append([row, query.query_id, query.caption, render.rank_label(a, self.depth), render.rank_label(b, self.depth)])
        return table

    @staticmethod
    def guard(answer: Callable[[], str]) -> str:
        try:
            return answer()
        except PAGE_ERRORS as err:
            return render.message_html(str(err))


def open_browser(cfg: DictConfig) -> Browser:
    """Load the model (and browse.compare), encode the gallery under each, and keep them for the page."""
    models = [cfg.model] + ([cfg.browse.compare] if cfg.browse.compare is not None else [])
    L.seed_everything(cfg.seed, verbose=False)  # as cir.evaluate: a randomly initialised model is the same each run
    backbones = [load_backbone(m) for m in models]
    labels = [f"{'AB'[i]}: {m.name} ({'/'.join(Path(m.pretrained).parts[-2:])})" for i, m in enumerate(models)]

    def load(folder: str | None) -> list[Gallery]:
        bench = folder_benchmark(folder) if folder else benchmark_split(cfg)
        return [encode_gallery(cfg, backbone, bench, label) for backbone, label in zip(backbones, labels)]

    return Browser(load(cfg.browse.folder), cfg.browse.top_k, cfg.browse.rank_depth, loader=load, alpha=paper_alpha(cfg))
