"""`python -m cir.report DIR... [--out FILE] [--tensorboard DIR] [--debug]`: our results beside the paper's.

Reads every metrics.json under the folders (runs, grids, evaluations), one
row per backbone x method (x grid cell) x split, at the paper's Slerp alpha (two runs that would share a row are
told apart in a `run` column: their weights, else their folder);
prints a markdown table and writes it to --out: markdown for FILE.md, else CSV (default: report.csv in the
first folder). With --tensorboard, one run per row with its labels as hparams.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from cir.commands import parser_for
from cir.config import ConfigError, one_line_errors
from cir.io import atomic_write_text
from cir.report.collect import ReportError, Result, collect
from cir.report.paper import load_paper_numbers
from cir.report.table import compare, csv_text, markdown

USAGE = "usage: python -m cir.report DIR... [--out FILE] [--tensorboard DIR] [--debug]"


def to_tensorboard(rows: list[Result], folder: Path) -> None:
    """Each row as a run with hparams (labels and axes) and our numbers, for TensorBoard's HPARAMS sorting."""
    from torch.utils.tensorboard import SummaryWriter

    for row in rows:
        name = re.sub(r"[^\w.=+-]+", "_", "_".join(filter(None, row.key)))
        with SummaryWriter(str(folder / name)) as writer:
            params = {"backbone": row.backbone, "method": row.method, "cell": row.cell, "split": row.split,
                      "run": row.run, **row.axes}
            metrics = {f"report/{title}": float(item.ours) for title, item in compare(row, {}).items()}
            writer.add_hparams(params, metrics, run_name=".")


def main(folders: Sequence[str], out: str | None = None, tensorboard: str | None = None) -> str:
    """usage: python -m cir.report DIR... [--out FILE] [--tensorboard DIR]"""
    if not folders:
        raise ConfigError(USAGE)
    paths = [Path(f) for f in folders]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such folder: {', '.join(missing)}")
    rows = collect(paths)
    if not rows:
        raise FileNotFoundError(f"no metrics.json with results under {', '.join(folders)}")
    papers = load_paper_numbers()
    table = markdown(rows, papers)
    target = Path(out) if out else (paths[0] if paths[0].is_dir() else paths[0].parent) / "report.csv"
    atomic_write_text(target, table + "\n" if target.suffix.lower() == ".md" else csv_text(rows, papers))
    print(table)
    print(f"\n{len(rows)} rows; numbers at the paper's Slerp alpha (percent); (paper P, +D): the paper's value and "
          "ours minus it; (paper: test): the paper reports the test server only; quoted by X: the paper's number as "
          "paper X prints it (the paper's own is not shipped)")
    if any(benchmark.startswith("genecis") for row in rows for benchmark, _ in row.metrics):
        print("GeneCIS: the paper reports no GeneCIS numbers, so those columns have no paper value")
    if any(row.run for row in rows):
        print("run: rows with the same labels from different weights (or the same weights scored in different folders)")
    print(f"{'markdown' if target.suffix.lower() == '.md' else 'csv'}: {target}")
    if tensorboard:
        to_tensorboard(rows, Path(tensorboard))
        print(f"tensorboard: tensorboard --logdir {tensorboard}")
    return table


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    parser = parser_for("report", prog, __doc__)
    parser.add_argument("folders", nargs="+", metavar="DIR", help="run, grid or evaluation folders (searched for metrics.json)")
    parser.add_argument("--out", metavar="FILE", help="FILE.md: the markdown table; FILE.csv (or any other): CSV "
                        "(default: report.csv in the first folder)")
    parser.add_argument("--tensorboard", metavar="DIR", help="also one TensorBoard run per row, labels as hparams")
    args = parser.parse_intermixed_args(argv)
    with one_line_errors(args.debug, (ReportError,)):
        main(args.folders, args.out, args.tensorboard)


if __name__ == "__main__":
    cli()
