"""What a run prints: progress bars, our own one-line summaries, and third-party lines only when they tell the user
something. Set up once per process by `cir.config.run_cli` (DDP ranks re-run the command, so they get it too)."""

from __future__ import annotations

import logging
import warnings

FORMAT = "%(levelname)s %(name)s: %(message)s"
# Third-party warnings that say nothing about the user's run: a deprecation inside Lightning's own use of torch,
# a note that the summary's size estimate assumes fp32, and a hint to use srun on any machine that has SLURM
# installed (a run under slurm/tat.sbatch uses srun; a run started by hand on such a machine is meant to be local).
# (A resumed run's "checkpoint folder is not empty" is not raised at all: cir.resume.RunCheckpoints.)
NOISE_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Precision .* is not supported by the model summary",
    r"The `srun` command is available on your system but is not used",
)


class _DropRecords(logging.Filter):
    """Drops records a predicate picks; attached to the logger the records are made on."""

    def __init__(self, drop) -> None:
        super().__init__()
        self.drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.drop(record)


def _open_clip_chatter(record: logging.LogRecord) -> bool:
    """open_clip logs every step of building a model on the root logger (INFO), and a WARNING for random init that
    the user asked for (`model.pretrained=none`); its errors still show."""
    return "open_clip" in record.pathname and record.levelno < logging.ERROR


def _advertisement(record: logging.LogRecord) -> bool:
    return str(record.msg).startswith("💡 Tip")


def setup_logging(debug: bool = False) -> None:
    """cir's INFO lines and everyone's warnings; with `debug`, everything everyone logs."""
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format=FORMAT)
    logging.getLogger("cir").setLevel(logging.DEBUG if debug else logging.INFO)
    if debug:
        return
    logging.getLogger().addFilter(_DropRecords(_open_clip_chatter))
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropRecords(_advertisement))
    for message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
