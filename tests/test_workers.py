"""cir.workers: `auto` is the CPUs this process may use; too many workers is said once, in our words."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

from cir.config import ConfigError, load_config
from cir.schema import EvaluateConfig, FitConfig
from cir.workers import _say_too_many, available_cpus, resolve_workers


def test_auto_is_the_affinity_mask_or_slurms_share(monkeypatch) -> None:
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert resolve_workers("auto", "data.num_workers") == len(os.sched_getaffinity(0))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert available_cpus() == 3 and resolve_workers("auto", "data.num_workers") == 3


def test_auto_is_the_default_and_a_number_still_works() -> None:
    assert load_config(FitConfig, None, []).data.num_workers == "auto"
    assert load_config(EvaluateConfig, None, ["data.num_workers=0"]).data.num_workers == 0
    assert resolve_workers(0, "data.num_workers") == 0


@pytest.mark.parametrize("value", ["many", -1, 1.5, True])
def test_anything_else_is_refused_by_name(value) -> None:
    with pytest.raises(ConfigError, match="data.num_workers"):
        resolve_workers(value, "data.num_workers")


def test_too_many_is_said_once_in_our_words_and_torch_does_not_repeat_it(monkeypatch, caplog) -> None:
    import torch

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    _say_too_many.cache_clear()
    with caplog.at_level(logging.WARNING, logger="cir.workers"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_workers(4, "data.num_workers") == 4
        resolve_workers(4, "data.num_workers")
        torch.utils.data.DataLoader(list(range(4)), num_workers=4 * len(os.sched_getaffinity(0)) + 4)
    ours = [r.getMessage() for r in caplog.records if r.name == "cir.workers"]
    assert len(ours) == 1 and "more workers than the 1 CPU(s)" in ours[0]
    assert not [w for w in caught if "excessive worker creation" in str(w.message)]
