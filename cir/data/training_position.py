"""Where training stands in its data, carried in the DataModule's checkpoint state so a resumed run picks up there.

Lightning restores a DataModule before it first asks for the training loader, which it may do before it
restores the loops (to count the steps of an epoch for the LR schedule: trainer.estimated_stepping_batches),
too early for a loader's own state to reach it. Both training DataModules (image-text shards, supervised
triplets) carry the position this one way and hand `resume_at` to their loader when they build it.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader


class TrainingPosition:
    """Mixin for a LightningDataModule: its state is (epoch, batches of it trained), read back into `resume_at`."""

    resume_at: dict[str, int]

    def state_dict(self) -> dict[str, int]:
        if self.trainer is None:
            return {}
        epoch, batches = self.training_position()
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.resume_at = dict(state_dict)

    def training_position(self) -> tuple[int, int]:
        """(epoch, batches of it trained): where a run resumed from a checkpoint saved now picks up the data.

        An epoch Lightning has counted as finished (one that max_steps stopped too) is over: a resumed run
        starts the next one at its first batch, as Lightning's loops do.
        """
        epochs = self.trainer.fit_loop.epoch_progress.current
        progress = self.trainer.fit_loop.epoch_loop.batch_progress
        if epochs.completed == epochs.started:
            return self.trainer.current_epoch, 0
        if progress.is_last_batch:
            return self.trainer.current_epoch + 1, 0
        return self.trainer.current_epoch, progress.current.processed


class PositionedLoader(DataLoader):
    """A DataLoader whose place in training its DataModule carries (TrainingPosition).

    Its own state is empty; having one tells Lightning the loader resumes mid-epoch, so it does not warn
    that a mid-epoch resume is unreliable.
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore here: the DataModule's state holds the position."""
