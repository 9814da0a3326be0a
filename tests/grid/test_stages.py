"""Stage bookkeeping behind cir.grid (and so the demo): what runs, what is skipped, what reruns."""

from __future__ import annotations

from pathlib import Path

import pytest

from cir.config import ConfigError, to_yaml
from cir.grid.stages import CliCall, Stage, run_stages

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


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


def test_fresh_runs_everything_from_scratch() -> None:
    finished, log, lines = {"a", "b", "c", "d"}, [], []
    run_stages(plan(finished, log), set(), True, lines.append, prefix="cell/")
    assert log == [("a", True), ("b", True), ("c", True), ("d", True)]
    assert lines[-2].startswith("[4/4] cell/d")


def test_a_stage_that_ran_before_a_part_takes_the_readers_in_the_part_along() -> None:
    finished, log = {"a", "b", "c", "d"}, []
    stages = plan(finished, log)
    assert run_stages(stages[1:], set(), False, lambda _: None, ran=["a"]) == ["a", "b", "c", "d"]
    assert log == [("b", True), ("c", True), ("d", True)]  # b and d read a, c reads b


def _call(tmp_path: Path, *overrides: str) -> CliCall:
    return CliCall("evaluate", EXPERIMENTS / "demo_eval.yaml",
                   (f"output_dir={tmp_path}", f"data.root={tmp_path}", *overrides), tmp_path)


def test_a_call_is_done_only_with_a_done_record_of_its_own_fingerprint(tmp_path) -> None:
    from cir import completion

    call = _call(tmp_path)
    assert not call.done()
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "config.yaml").write_text(to_yaml(call.resolve()))
    assert call.why_not_done() == "no completion record"  # outputs and config alone are not done
    completion.finish(tmp_path, completion.fingerprint(call.load()), [tmp_path / "metrics.json"])
    assert call.done()
    assert _call(tmp_path, "eval.examples=2").why_not_done() == "config changed"
    # slurm/tat.sbatch appends the allocation's shape: the same run on other devices is still done
    assert _call(tmp_path, "trainer.devices=4", "trainer.num_nodes=2").done()


def test_stage_config_errors_name_the_stage_and_its_config(tmp_path) -> None:
    stage = Stage("eval_x", "t", _call(tmp_path, "eval.alphaz=[0.5]"))
    with pytest.raises(ConfigError, match=r"grid stage eval_x \(demo_eval.yaml \+ the grid's overrides\).*alphaz"):
        stage.validate()
