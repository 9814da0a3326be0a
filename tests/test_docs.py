"""Every command in a ```bash block of README.md and docs/*.md, and every example a --help shows, is checked.

A `cir SUB ...` or `python -m cir.MODULE ...` command goes through our real parser (`cir.cli`) and runs up to the
point where it would start work (build a model, read data, write a file), where a stub stops it: so its config and
overrides are loaded and checked exactly as the run checks them, with no data, weights or GPU. A grid is checked
cell by cell as `cir grid` checks it before anything runs (but for its data roots: the docs name folders this
machine has not got). `--help` runs. Any other tool is on an explicit list below, with the reason it is not run here or the
test that runs it. A made-up page with a typo'd key, an unknown experiment file and an unknown tool shows each fails.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from collections.abc import Iterator
from importlib.metadata import metadata
from pathlib import Path
from unittest import mock

import pytest

from cir import cli
from cir.commands import BY_MODULE, COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Tools that are not ours: why each is not run here, and the test that runs it where one does.
OTHER_TOOLS = {
    "pip": ("installs the package; ../shared/scripts/fresh-machine-check runs README's install on a fresh clone "
            "(here: the extras it names must exist)", None),
    "tensorboard": ("TensorBoard's own viewer of the logs a run writes", "tests/test_tensorboard.py"),
    "hf": ("huggingface_hub's CLI uploading the folder `cir export` writes", "tests/test_publish.py"),
    "sbatch": ("needs a SLURM cluster; slurm/tat.sbatch runs `python -m cir.fit` with the arguments after it, whose "
               "config is checked here where the docs name a real one", "tests/slurm"),
    "scancel": ("needs a SLURM cluster", "tests/slurm"),
    "scontrol": ("needs a SLURM cluster", "tests/slurm"),
}
SBATCH_SCRIPT = "slurm/tat.sbatch"
PYTEST = "python -m pytest -q"  # README's test command: .ci/run runs exactly it (test below)


class Checked(Exception):
    """Raised by a stub where the command would start its work: everything before it passed."""


def bash_commands(text: str) -> list[list[str]]:
    """The commands (as words) of every ```bash block: continuation lines joined, comments dropped, `&&` split."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:cut])
                words = words[cut + 1:]
    return commands


DOC_COMMANDS = [(page.relative_to(ROOT).as_posix(), command) for page in PAGES
                for command in bash_commands(page.read_text(encoding="utf-8"))]

HELP_EXAMPLES = [(c.name, example) for c in COMMANDS.values() for example in c.examples]


def stop(*args, **kwargs):
    raise Checked


def checked(kind: str):
    """A stub for the function that would start the work: the checks the CLI runs on the config, then stop."""
    def check(cfg, *args, **kwargs):
        import lightning as L

        from cir.config import check_kwargs
        from cir.config_checks import check_eval_config, check_fit_config

        check_fit_config(cfg) if kind == "fit" else check_eval_config(cfg)
        check_kwargs(cfg.trainer, L.Trainer, "trainer")
        raise Checked
    return check


def checked_grid(path, overrides, slurm=False, dry_run=False, only=None):
    """`cir grid`'s own check of every call of every cell (cir.grid.plan.Grid.check), then stop; but for whether
    the benchmark folders exist, which the docs name as a user's (data/cirr) and this machine has not got."""
    from cir.config import ConfigError
    from cir.grid import __main__ as grid_cli
    from cir.grid.plan import Grid

    with mock.patch.object(Grid, "check_data_root"):
        grid = Grid(path, overrides)
        lines, _ = grid.check()
    if lines:
        raise ConfigError("; ".join(lines))
    if only is not None:  # the one call, up to where it would replace this process
        with mock.patch.object(grid_cli.os, "execv", stop):
            grid_cli.run_one(grid, only)
    raise Checked


def checked_synth(cfg):
    from cir.data.synth.settings import check_synth_config

    check_synth_config(cfg)
    raise Checked


def checked_browse(path, overrides):
    """cir.browse: its config as the page loads it, then the evaluation checks open_browser runs."""
    from cir.config import load_config
    from cir.schema import BrowseConfig

    checked("evaluate")(load_config(BrowseConfig, path, overrides))


STUBS = {  # module, attribute, replacement: where each command would start its work
    "fit": [("cir.fit", "train", checked("fit")), ("cir.fit", "run_grid", checked_grid)],
    "evaluate": [("cir.evaluate", "evaluate", checked("evaluate")),
                 ("cir.evaluate", "rank_zero_lock", lambda *a: contextlib.nullcontext())],
    "submit": [("cir.submit", "prepare", checked("evaluate")),
               ("cir.submit", "rank_zero_lock", lambda *a: contextlib.nullcontext())],
    "grid": [("cir.grid.__main__", "main", checked_grid)],
    "browse": [("cir.browse.__main__", "main", checked_browse)],
    "synth": [("cir.data.synth.settings", "run", checked_synth), ("cir.data.synth.__main__", "generate", stop)],
    "report": [("cir.report.__main__", "main", stop)],
    "shards": [("cir.data.make_shards", "_source", stop)],
    "embed-text": [("cir.data.embed_text", "create_backbone", stop)],
    "check": [("cir.data.check", "check_config", stop)],
    "export": [("cir.publish", "publish", stop)],
    "config": [],  # prints the resolved config: nothing to stop
}


@contextlib.contextmanager
def stubbed(monkeypatch: pytest.MonkeyPatch, name: str) -> Iterator[None]:
    with monkeypatch.context() as patch:
        for module, attribute, replacement in STUBS[name]:
            patch.setattr(importlib.import_module(module), attribute, replacement)
        yield


def check_ours(words: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Runs `cir ...` (or `python -m cir.X ...`) with the work stubbed out; fails with what the command printed."""
    if words[0] == "cir":
        args = words[1:]
    else:
        module = words[2]
        assert module in BY_MODULE, f"python -m {module}: no such command (cir.commands.COMMANDS)"
        args = [BY_MODULE[module].name, *words[3:]]
    name = args[0] if args and args[0] in COMMANDS else None
    # Paths are the repository's (experiments/, slurm/); whatever a command would write lands in tmp_path
    for folder in ("experiments", "slurm", "cir"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    monkeypatch.chdir(tmp_path)
    err, out = io.StringIO(), io.StringIO()
    with stubbed(monkeypatch, name) if name else contextlib.nullcontext():
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                cli.main(args)
        except Checked:
            return
        except SystemExit as done:
            assert done.code in (0, None) and {"-h", "--help"} & set(args), \
                f"exit status {done.code}: {err.getvalue().strip()}"
            return
    assert name == "config", f"ran to its end without reaching a stub: {out.getvalue()[-500:]}"


def check_other(words: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A tool on the list; pip's extras must exist; sbatch's fit arguments are checked as `cir fit` would."""
    assert words[0] in OTHER_TOOLS, f"{words[0]}: not our command and not on test_docs.OTHER_TOOLS (add it, with why)"
    owner = OTHER_TOOLS[words[0]][1]
    assert owner is None or (ROOT / owner).exists(), owner
    if words[0] == "pip":
        extras = metadata("cir").get_all("Provides-Extra")
        for spec in words[words.index("-e") + 1:]:
            wanted = re.fullmatch(r"\.(?:\[(.*)\])?", spec)
            assert wanted, f"pip installs {spec}, not this package"
            assert set(filter(None, (wanted.group(1) or "").split(","))) <= set(extras), spec
    if words[0] == "sbatch" and SBATCH_SCRIPT in words:
        assert (ROOT / SBATCH_SCRIPT).is_file()
        fit_args = words[words.index(SBATCH_SCRIPT) + 1:]
        if fit_args and not fit_args[0].startswith("<"):  # `<tmp>/...`: the test's own config (tests/slurm)
            check_ours(["cir", "fit", *fit_args], monkeypatch, tmp_path)


def check_command(words: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if words == PYTEST.split():
        return
    if words[0] == "cir" or (words[:2] == ["python", "-m"] and words[2].startswith("cir.")):
        check_ours(words, monkeypatch, tmp_path)
    else:
        check_other(words, monkeypatch, tmp_path)


@pytest.mark.parametrize("name, example", HELP_EXAMPLES, ids=[e[:70] for _, e in HELP_EXAMPLES])
def test_help_example(name: str, example: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Help output is documentation too: every example a --help shows is checked as the pages' commands are."""
    words = shlex.split(example)
    assert words[:2] == ["cir", name]
    check_command(words, monkeypatch, tmp_path)


@pytest.mark.parametrize("page, words", DOC_COMMANDS, ids=[f"{p}:{' '.join(w)[:60]}" for p, w in DOC_COMMANDS])
def test_docs_command(page: str, words: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    check_command(words, monkeypatch, tmp_path)


def test_the_pages_show_commands_of_every_kind() -> None:
    """The extraction finds what the pages hold: README's two commands first, and at least one command of each kind."""
    readme = bash_commands((ROOT / "README.md").read_text())
    assert readme[:3] == [["pip", "install", "-e", ".[dev]"], "python -m cir.fit experiments/demo.yaml".split(),
                          PYTEST.split()]
    shown = {"python -m cir" if w[2:3] and w[2].startswith("cir.") else w[0] for _, w in DOC_COMMANDS}
    assert {"cir", "python -m cir", "pip", "sbatch"} <= shown
    used = {w[1] for _, w in DOC_COMMANDS if w[0] == "cir"}
    assert {"fit", "evaluate", "grid", "report", "browse", "submit", "check", "export"} <= used


def test_ci_runs_readme_test_command() -> None:
    """.ci/run installs, then runs exactly README's test command (its second ```bash block)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    assert blocks[1].strip() == PYTEST
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == PYTEST


BAD_PAGE = """
```bash
cir fit experiments/tat_vitl.yaml optim.lrr=1e-4
python -m cir.evaluate experiments/eval_cirrr.yaml
cir evaluate experiments/eval_cirr.yaml eval.alphas=[1.5]
cir grid experiments/paper/anchor_ablation.yaml inputs.cirr=data/cirr inputs.circo=data/circo
cir fitt experiments/tat_vitl.yaml
python -m cir.evaluat experiments/eval_cirr.yaml
pip install -e ".[nonexistent]"
rsync -a outputs/ elsewhere:
```
"""


@pytest.mark.parametrize("command, says", [
    ("cir fit experiments/tat_vitl.yaml optim.lrr=1e-4", "optim.lrr"),
    ("python -m cir.evaluate experiments/eval_cirrr.yaml", "eval_cirrr.yaml"),
    ("cir evaluate experiments/eval_cirr.yaml eval.alphas=[1.5]", "eval.alphas[0]"),
    ("cir grid experiments/paper/anchor_ablation.yaml inputs.cirr=data/cirr inputs.circo=data/circo",
     "inputs.train_shards"),
    ("cir fitt experiments/tat_vitl.yaml", "invalid choice: 'fitt'"),
    ("python -m cir.evaluat experiments/eval_cirr.yaml", "cir.evaluat: no such command"),
    ('pip install -e ".[nonexistent]"', "[nonexistent]"),
    ("rsync -a outputs/ elsewhere:", "rsync: not our command"),
])
def test_a_bad_docs_command_fails(command: str, says: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each line of a made-up page fails the check, saying why: the check can fail."""
    assert shlex.split(command) in bash_commands(BAD_PAGE)
    with pytest.raises(AssertionError) as failed:
        check_command(shlex.split(command), monkeypatch, tmp_path)
    assert says in str(failed.value), failed.value


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_links_and_images_resolve(page: Path) -> None:
    """A relative link or image of README.md or a docs page names a file that exists (and a heading it has)."""
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: {target}: no such heading"
