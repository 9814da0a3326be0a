"""Checkpoints written atomically beside their target, through Lightning's CheckpointIO plugin.

Lightning's TorchCheckpointIO writes through an fsspec transaction: a temp file in
$TMPDIR, moved over the target on commit. With checkpoints on another filesystem
than $TMPDIR (a cluster's usual setup) the move is a copy, so a full disk or a kill
leaves a half-written `last.ckpt` that a resumed run trusts, and an orphan in $TMPDIR.
Every checkpoint the Trainer writes (ModelCheckpoint's periodic files and `last.ckpt`,
GracefulInterruption's, Lightning's SLURM `hpc_ckpt_N.ckpt`) goes through
`strategy.checkpoint_io`, so this plugin covers them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cir.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temp file in the checkpoint's folder, fsync, rename over the target (cir.io.atomic_path)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, tensors memory-mapped (not read): opening it checks the zip directory and the
    pickled structure, which a truncated or half-copied file fails."""
    return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
