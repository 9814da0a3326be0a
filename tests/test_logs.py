"""What a user reads: a tiny TAT run, as a real command, prints no line that looks like a fault."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cir.logs import NOISE_WARNINGS

DEFAULTS = str(Path(__file__).resolve().parent / "configs" / "defaults.yaml")  # the config a command needs first

# What a user reads as a fault or an advertisement: a Python warning ("file.py:LINE: ..."), third-party INFO chatter
# on the root logger, Lightning's cloud-logger tip, and the warnings this project has had to fix or silence; and the
# lines issue 28 quoted: a bar counting the epoch of a max_steps run (`Epoch 0/0`), a FLOPs column of zeros, torch's
# too-many-workers warning.
FAULT_LIKE = re.compile(
    r"\.py:\d+:|INFO root|WARNING root|Tip:|litlogger|deprecated|flops_per_batch|weights_only|Total length of|Traceback"
    r"|Epoch 0/0|FLOPs\s*:?\s+0\b|excessive worker creation",
    re.IGNORECASE,
)


@pytest.mark.slow
def test_a_tiny_tat_run_prints_nothing_that_looks_like_a_fault(image_text_shards, tmp_path):
    evaluation = "eval.benchmarks=[]"
    args = ["model.name=cir-tiny", "model.pretrained=none", f"data.train_shards={image_text_shards}", "data.batch_size=16",
            "data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_steps=3",
            "checkpoint.every_n_steps=2", evaluation]
    run = [sys.executable, "-m", "cir.fit", DEFAULTS, *args]
    first = subprocess.run([*run, f"output_dir={tmp_path / 'run'}", "trainer.max_steps=2"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[1], timeout=300)
    resumed = subprocess.run([*run, f"output_dir={tmp_path / 'run'}"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[1], timeout=300)
    for result in (first, resumed):
        assert result.returncode == 0, result.stderr[-3000:]
        output = result.stdout + result.stderr
        assert "export:" in output
        faults = [line for line in output.splitlines() if FAULT_LIKE.search(line)]
        assert not faults, "\n".join(faults)
    assert "resuming from" in resumed.stdout + resumed.stderr


def test_the_silenced_warnings_are_only_third_party_noise():
    """Each silenced pattern names a specific third-party message, never a broad category."""
    assert all(len(pattern) > 30 for pattern in NOISE_WARNINGS)
