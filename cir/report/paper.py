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
    quoted_by: str = ""  # the later paper (and table) that prints this number, where the paper's own is not shipped

    @property
    def source_label(self) -> str:
        """What the report prints beside a quoted number ("quoted by CoLLM Table 2"); empty for the paper's own."""
        return f"quoted by {self.quoted_by}" if self.quoted_by else ""


def load_paper_numbers(path: Path = PAPER_NUMBERS) -> dict[tuple[str, str, str, str], PaperNumber]:
    """(backbone, method, benchmark, metric) -> the paper's number; `#` lines are the file's notes.
    Two rows for one key are refused: the file ships one number per cell, never two sources' both."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        numbers = [PaperNumber(**{**row, "value": float(row["value"])}) for row in rows]
    found: dict[tuple[str, str, str, str], PaperNumber] = {}
    for number in numbers:
        key = (number.backbone, number.method, number.benchmark, number.metric)
        if key in found:
            raise ValueError(f"{path}: two rows for {', '.join(key)}")
        found[key] = number
    return found
