"""`cir`: one command with subcommands whose help teaches; `cir config` resolves or lists keys without running."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cir import cli, config
from cir.commands import COMMANDS, EXPERIMENTS, experiments_for
from cir.config import load_config, run_cli
from cir.keys import field_comments, schema_keys, trainer_keys
from cir.schema import BrowseConfig, EvaluateConfig, FitConfig

ROOT = Path(__file__).resolve().parents[1]


def test_cir_help_lists_every_command_with_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS.values():
        assert f"  {command.name}" in out and command.summary in out


def test_no_command_is_usage_and_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([])
    assert done.value.code == 2
    assert "commands:" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_help_shows_examples_experiments_and_docs(name: str, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cir {name} ")
    assert "examples:\n  cir " + name in out
    assert "--debug" in out and "read next:" in out and COMMANDS[name].docs
    for line in [*COMMANDS[name].docs, "docs/configuration.md: "]:  # where to look next: pages that exist
        assert f"  {line}" in out and (ROOT / line.split(":")[0]).is_file(), line
    for path, _ in experiments_for(COMMANDS[name].tasks):
        assert str(path.relative_to(ROOT)) in out


def test_grid_help_names_only_slurm_and_dry_run(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["grid", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--only CELL/STAGE", "--slurm", "--dry-run"))


def test_experiments_are_found_from_their_task_key(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("task: tat\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nseed: 1\n")
    (tmp_path / "ev.yaml").write_text("model: {name: x}\n")
    (tmp_path / "g.yaml").write_text("task: grid\n")
    assert [(p.name, t) for p, t in experiments_for(("tat",), tmp_path)] == [("base.yaml", "tat"), ("child.yaml", "tat")]
    assert [p.name for p, _ in experiments_for(("evaluation",), tmp_path)] == ["ev.yaml"]
    assert [p.name for p, _ in experiments_for(("grid",), tmp_path)] == ["g.yaml"]


def test_python_m_without_config_is_usage_and_exit_2() -> None:
    """Before: `python -m cir.evaluate` ran the defaults for 90 s and then failed on a missing data/cirr."""
    run = subprocess.run([sys.executable, "-m", "cir.evaluate"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "usage: python -m cir.evaluate CONFIG" in run.stderr and "CONFIG is required" in run.stderr


@pytest.mark.parametrize("name", ["fit", "submit", "grid", "browse", "config"])
def test_no_config_is_usage_and_exit_2(name: str, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([name])
    assert done.value.code == 2
    assert f"usage: cir {name} CONFIG" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["fit", "evaluate", "submit", "grid", "browse", "synth", "check", "config"])
def test_overrides_without_a_config_are_usage_and_exit_2(name: str, monkeypatch, capsys) -> None:
    """Before: `cir fit trainer.max_steps=5` ran the schema's defaults (a ViT-L download, data/laion2m)."""
    monkeypatch.setattr(config, "setup_logging", lambda *a: pytest.fail("the command went on past its arguments"))
    with pytest.raises(SystemExit) as done:
        cli.main([name, "trainer.max_steps=5", "output_dir=x"])
    assert done.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"usage: cir {name} ") and len(err) == 2
    assert err[1].startswith(f"cir {name}: error: CONFIG is required and comes first") and "'trainer.max_steps=5'" in err[1]


def test_config_then_help_shows_help_not_an_override_error(capsys) -> None:
    from cir import evaluate

    with pytest.raises(SystemExit) as done:
        run_cli(evaluate.main, ["experiments/eval_cirr.yaml", "--help"])
    assert done.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_config_prints_the_resolved_config_as_the_run_saves_it(capsys) -> None:
    cli.main(["config", str(EXPERIMENTS / "eval_cirr.yaml"), "eval.alphas=[0.8]", "model.name=cir-tiny"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["eval"]["alphas"] == [0.8] and cfg["model"]["name"] == "cir-tiny" and cfg["data"]["name"] == "cirr"


def test_config_refuses_a_typo_by_name(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["config", str(EXPERIMENTS / "eval_cirr.yaml"), "eval.alpha=[0.8]"])
    assert done.value.code == 2
    assert "eval.alpha" in capsys.readouterr().err


def test_config_of_a_grid_and_of_a_synth_file(capsys) -> None:
    cli.main(["config", str(EXPERIMENTS / "demo.yaml")])
    assert yaml.safe_load(capsys.readouterr().out)["task"] == "grid"
    cli.main(["config", str(EXPERIMENTS / "demo_synth.yaml")])
    assert yaml.safe_load(capsys.readouterr().out)["task"] == "synth"


def test_config_keys_lists_schema_and_trainer_keys(capsys) -> None:
    cli.main(["config", str(EXPERIMENTS / "demo_tat.yaml"), "--keys"])
    out = capsys.readouterr().out
    assert "data.batch_size: int | None = 128  # per device" in out
    assert "trainer.max_steps: int = -1  # Stop training after this number of steps." in out
    assert "trainer.max_epochs: Optional[int] = 1  # " in out and "(cir's default)" in out


def test_keys_are_every_leaf_of_the_schema() -> None:
    names = [k.name for k in schema_keys(EvaluateConfig)]
    assert "model.name" in names and "eval.exclude_reference" in names and "data.genecis.tasks" in names
    assert not [n for n in names if n in ("model", "data", "eval")]


def test_field_comments_come_from_the_line_or_the_lines_above() -> None:
    from dataclasses import dataclass

    @dataclass
    class Demo:
        a: int = 1  # on the line
        # above,
        # two lines
        b: int = 2
        c: int = 3

    assert field_comments(Demo) == {"a": "on the line", "b": "above, two lines"}


def test_trainer_keys_are_lightnings_signature() -> None:
    import inspect

    import lightning

    names = {k.name.removeprefix("trainer.") for k in trainer_keys({})}
    assert names == set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}


def test_browse_compare_override_reaches_the_none_section() -> None:
    """browse.compare is null by default: `browse.compare.name=...` fills it (the bool check must not walk a null)."""
    from cir.schema import BrowseConfig

    cfg = load_config(BrowseConfig, None, ["browse.compare.name=cir-tiny", "browse.compare.pretrained=none"])
    assert cfg.browse.compare.name == "cir-tiny"


def test_report_out_md_is_markdown_and_csv_is_csv(tmp_path: Path, capsys) -> None:
    """Before: `cir report DIR --out report.md` wrote CSV into report.md."""
    from tests.report.test_table import metrics, write

    write(tmp_path / "runs" / "ev" / "metrics.json", metrics("ViT-L-14", "openai", 0.9, {"cirr/val/R@1": 25.0}))
    cli.main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "r.md")])
    cli.main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "r.csv")])
    assert (tmp_path / "r.md").read_text().startswith("| backbone | method |")
    assert (tmp_path / "r.csv").read_text().startswith("backbone,method,")


@pytest.mark.parametrize("schema", [FitConfig, EvaluateConfig, BrowseConfig])
def test_every_key_says_what_it_means(schema: type) -> None:
    """A new field in cir/schema.py needs its comment (on its line or right above it): `cir config --keys` shows it."""
    assert [k.name for k in schema_keys(schema) if not k.meaning] == []


def test_configuration_page_is_generated_and_current() -> None:
    """docs/configuration.md is `python -m cir.keys`'s output: regenerate it when a key changes."""
    from cir.keys import configuration_page

    assert (ROOT / "docs" / "configuration.md").read_text() == configuration_page(), \
        "docs/configuration.md is stale: python -m cir.keys > docs/configuration.md"


def test_keys_of_a_synth_config_whose_schema_is_generated(capsys) -> None:
    cli.main(["config", str(EXPERIMENTS / "demo_synth.yaml"), "--keys"])
    assert "synth.seed: " in capsys.readouterr().out


def test_every_cir_command_in_readme_and_docs_parses_and_its_config_resolves() -> None:
    """`cir ...` in README.md and docs/*.md: a known command, and a config it names resolves with its overrides."""
    import re

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    commands = [m for page in pages for m in re.findall(r"`(cir [^`]+)`", page.read_text())]
    assert "cir config experiments/tat_vitl.yaml --keys" in commands
    for text in commands:
        words = shlex.split(text)
        if words[1] in ("--help", "COMMAND"):
            continue
        assert words[1] in COMMANDS, text
        if len(words) > 2 and words[2].endswith(".yaml"):
            cli.resolved(words[2], [w for w in words[3:] if "=" in w and not w.startswith("-")])
