"""The paper's numbers as shipped in paper_numbers.csv: what we compare our results with, and where each comes from."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

PAPER_NUMBERS = Path(__file__).resolve().parent / "paper_numbers.csv"


@dataclass(frozen=True)
class PaperNumber:
    backbone: str
    method: str
    benchmark: str  # cirr | circo | fashioniq_<category> | fashioniq_avg
    split: str  # the split the paper reports (test1 / test: test-server numbers)
    metric: str
    value: float
    source: str


def load_paper_numbers(path: Path = PAPER_NUMBERS) -> dict[tuple[str, str, str, str], PaperNumber]:
    """(backbone, method, benchmark, metric) -> the paper's number; `#` lines are the file's notes."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        numbers = [PaperNumber(**{**row, "value": float(row["value"])}) for row in rows]
    return {(n.backbone, n.method, n.benchmark, n.metric): n for n in numbers}
