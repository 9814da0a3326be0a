"""Stage bookkeeping (the demo's and the grid's): overrides as dotlists, what runs, what is skipped, what reruns."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cir.config import ConfigError
from cir.grid.stages import CliCall, Stage, flatten_overrides, run_stages

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def test_flatten_overrides_round_trips_through_the_override_parser() -> None:
    tree = {"optim": {"lr": 0.001, "betas": [0.9, 0.98]}, "output_dir": "/tmp/a b/{0..3}", "init_from": None,
            "model": {"lora": {"target_modules": ["q_proj", "c_fc"]}}, "trainer": {"enable_progress_bar": False},
            "empty": {}}
    flat = flatten_overrides(OmegaConf.create(tree))
    assert "optim.lr=0.001" in flat
    assert OmegaConf.to_container(OmegaConf.from_dotlist(flat)) == tree


class FakeStage(Stage):
    """Done-ness held in a set; running records the order and whether it was from scratch."""

    def __init__(self, name: str, finished: set[str], log: list[tuple[str, bool]], needs: tuple[str, ...] = ()) -> None:
        super().__init__(name, f"title {name}", needs=needs)
        self.finished, self.log = finished, log

    def done(self) -> bool:
        return self.name in self.finished

    def run(self, from_scratch: bool) -> None:
        self.log.append((self.name, from_scratch))
        self.finished.add(self.name)


def plan(finished: set[str], log: list) -> list[Stage]:
    return [FakeStage("a", finished, log), FakeStage("b", finished, log, ("a",)), FakeStage("c", finished, log, ("b",)),
            FakeStage("d", finished, log, ("a",))]


def test_only_missing_stages_run_and_each_says_so() -> None:
    finished, log, lines = {"a", "b", "d"}, [], []
    assert run_stages(plan(finished, log), set(), False, lines.append) == ["c"]
    assert log == [("c", False)]
    assert lines[0] == "[1/4] a: title a: done before, skipped"
    assert lines[2].startswith("[3/4] c: title c ...") and lines[3].startswith("[3/4] c: done in")


def test_a_rerun_stage_takes_everything_that_reads_it_along() -> None:
    finished, log = {"a", "b", "c", "d"}, []
    assert run_stages(plan(finished, log), {"b"}, False, lambda _: None) == ["b", "c"]
    assert log == [("b", True), ("c", True)]


def test_fresh_runs_everything_from_scratch_and_parts_number_on() -> None:
    finished, log, lines = {"a", "b", "c", "d"}, [], []
    stages = plan(finished, log)
    ran = run_stages(stages[:1], set(), True, lines.append, total=4)
    run_stages(stages[1:], set(), False, lines.append, ran=ran, first=2, total=4)
    assert log == [("a", True), ("b", True), ("c", True), ("d", True)]  # b and d read a, c reads b
    assert lines[-2].startswith("[4/4] d")


def _call(tmp_path: Path, *overrides: str) -> CliCall:
    return CliCall("evaluate", "eval", EXPERIMENTS / "demo_eval.yaml",
                   (f"output_dir={tmp_path}", f"data.root={tmp_path}", *overrides), tmp_path)


def test_a_call_is_done_only_with_its_own_config_written(tmp_path) -> None:
    from cir.config import to_yaml

    call = _call(tmp_path)
    assert not call.done()
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "config.yaml").write_text(to_yaml(call.resolve()))
    assert call.done()
    assert not _call(tmp_path, "eval.examples=2").done()
    # slurm/tat.sbatch appends the allocation's shape: the same run on other devices is still done
    (tmp_path / "config.yaml").write_text(to_yaml(_call(tmp_path, "trainer.devices=4", "trainer.num_nodes=2").resolve()))
    assert call.done()


def test_stage_config_errors_name_the_stage_and_the_demo_section(tmp_path) -> None:
    stage = Stage("eval_x", "t", [_call(tmp_path, "eval.alphaz=[0.5]")])
    with pytest.raises(ConfigError, match=r"demo stage eval_x \(demo_eval.yaml \+ the demo's `eval.` keys\).*alphaz"):
        stage.validate()
