"""The report's table: the paper's columns, our number, the paper's for the same backbone / benchmark / method, and
the difference where the splits match ("paper: test" where the paper has a test-server number and we have val)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from cir.report.collect import Result
from cir.report.paper import PaperNumber

# (benchmark key in metrics.json, metric, column title), in the paper's order
COLUMNS: tuple[tuple[str, str, str], ...] = (
    *(("cirr", m, f"CIRR {m}") for m in ("R@1", "R@5", "R@10", "R@50", "Rsub@1", "Rsub@2", "Rsub@3")),
    *(("circo", m, f"CIRCO {m}") for m in ("mAP@5", "mAP@10", "mAP@25", "mAP@50")),
    *((f"fashioniq_{c}", m, f"FIQ {c} {m}") for c in ("dress", "shirt", "toptee", "avg") for m in ("R@10", "R@50")),
    # GeneCIS as papers report it (per-task R@1 and the average); the paper has no GeneCIS numbers to compare
    *((f"genecis_{t}", "R@1", f"GeneCIS {t} R@1") for t in ("focus_attribute", "change_attribute", "focus_object",
                                                           "change_object", "avg")),
)
LABELS = ("backbone", "method", "cell", "split")


def value_text(value: float | bool) -> str:
    """A number to two decimals; a boolean as true / false (never 1.00)."""
    return str(value).lower() if isinstance(value, bool) else f"{value:.2f}"


@dataclass(frozen=True)
class Comparison:
    ours: float | bool
    paper: PaperNumber | None
    same_split: bool

    @property
    def difference(self) -> float | None:
        comparable = self.paper is not None and self.same_split and not isinstance(self.ours, bool)
        return self.ours - self.paper.value if comparable else None

    def text(self) -> str:
        ours = value_text(self.ours)
        if self.paper is None or isinstance(self.ours, bool):
            return ours
        quoted = f", {self.paper.source_label}" if self.paper.source_label else ""
        if not self.same_split:
            return f"{ours} (paper: {self.paper.split}{quoted})"
        return f"{ours} (paper {self.paper.value:.2f}, {self.difference:+.2f}{quoted})"


def compare(row: Result, papers: dict[tuple[str, str, str, str], PaperNumber]) -> dict[str, Comparison]:
    """Column title -> our value beside the paper's, for every column the row has."""
    found = {}
    for benchmark, metric, title in COLUMNS:
        if (benchmark, metric) in row.metrics:
            paper = papers.get((row.backbone, row.method, benchmark, metric))
            found[title] = Comparison(row.metrics[(benchmark, metric)], paper, paper is not None and paper.split == row.split)
    return found


def present_columns(rows: list[Result]) -> list[str]:
    have = {(benchmark, metric) for row in rows for benchmark, metric in row.metrics}
    return [title for benchmark, metric, title in COLUMNS if (benchmark, metric) in have]


def row_labels(rows: list[Result]) -> tuple[str, ...]:
    """LABELS, plus `run` where some row needs it to tell two runs with the same labels apart."""
    return (*LABELS, "run") if any(row.run for row in rows) else LABELS


def markdown(rows: list[Result], papers: dict[tuple[str, str, str, str], PaperNumber]) -> str:
    """One line per row; each number as `ours (paper P, +diff)`, `ours (paper: test)` or just `ours`, with the
    quoting paper named where the paper's number is quoted by another (`source_label`)."""
    titles = present_columns(rows)
    labels = row_labels(rows)
    lines = ["| " + " | ".join([*labels, *titles]) + " |", "|" + "---|" * (len(labels) + len(titles))]
    for row in rows:
        found = compare(row, papers)
        cells = [found[t].text() if t in found else "" for t in titles]
        lines.append("| " + " | ".join([getattr(row, label) for label in labels] + cells) + " |")
    return "\n".join(lines)


def csv_text(rows: list[Result], papers: dict[tuple[str, str, str, str], PaperNumber]) -> str:
    """Per column: ours, the paper's value, its split, the difference (empty where not comparable) and the source."""
    titles = present_columns(rows)
    labels = row_labels(rows)
    header = [*labels, *(f"{t}{suffix}" for t in titles for suffix in ("", " paper", " paper split", " diff", " source"))]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        found = compare(row, papers)
        values: list[str] = [getattr(row, label) for label in labels]
        for title in titles:
            item = found.get(title)
            if item is None:
                values += [""] * 5
                continue
            paper, difference = item.paper, item.difference
            values += [value_text(item.ours), f"{paper.value:.2f}" if paper else "", paper.split if paper else "",
                       f"{difference:.2f}" if difference is not None else "", paper.source if paper else ""]
        writer.writerow(values)
    return buffer.getvalue()
