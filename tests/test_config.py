"""cir.config: command-line overrides as a shell user types them, and run_cli's one-line errors for what the user
can fix (bad values, bad annotation files, unusable images, a full disk)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from cir import evaluate, fit
from cir.config import load_config, run_cli
from cir.schema import FitConfig

DEFAULTS = str(Path(__file__).resolve().parent / "configs" / "defaults.yaml")  # the config a command needs first


def one_line_error(capsys, main, args: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        run_cli(main, [DEFAULTS, *args])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1] == "(rerun with --debug for the traceback)", err
    return err[0]


def test_a_list_of_brace_patterns_on_the_command_line_is_a_list_of_strings(capsys):
    def show(path, overrides):
        print(json.dumps(list(load_config(FitConfig, path, overrides).data.train_shards)))

    run_cli(show, [DEFAULTS, "data.train_shards=[/p/tune-{000000..000003}.tar, /q/extra-{0..1}.tar,'/r/a,b.tar']"])
    assert json.loads(capsys.readouterr().out) == ["/p/tune-{000000..000003}.tar", "/q/extra-{0..1}.tar", "/r/a,b.tar"]


def test_an_override_yaml_cannot_read_says_how_to_quote_it(capsys):
    line = one_line_error(capsys, lambda path, overrides: load_config(FitConfig, path, overrides),
                          ["data.train_shards={/p/a"])
    assert line.startswith("error: command line: config key `data.train_shards`: cannot parse '{/p/a'")
    assert line.endswith("""quote it: data.train_shards='"{/p/a"'""")


@pytest.mark.parametrize("override, key, value", [("optim.lr=inf", "optim.lr", "inf"),
                                                  ("optim.betas=[0.9,nan]", "optim.betas[1]", "nan")])
def test_non_finite_numbers_are_rejected_naming_the_key(capsys, override, key, value):
    line = one_line_error(capsys, fit.main, ["model.name=cir-tiny", override])
    assert line == f"error: config key `{key}`: expected a finite number, got {value}"


def eval_args(root: Path, out: Path) -> list[str]:
    return ["model.name=cir-tiny", "model.pretrained=none", f"data.root={root}", f"output_dir={out}",
            f"eval.cache_dir={out / 'cache'}", "data.num_workers=0", "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false", "eval.examples=0"]


def test_a_captions_entry_missing_a_field_is_one_line_naming_the_file(cirr_root, tmp_path, capsys):
    captions = cirr_root / "cirr" / "captions" / "cap.rc2.val.json"
    entries = json.loads(captions.read_text())
    del entries[3]["caption"]
    captions.write_text(json.dumps(entries))
    line = one_line_error(capsys, evaluate.main, eval_args(cirr_root, tmp_path / "out"))
    assert line.startswith(f"error: {captions}") and "missing field 'caption'" in line


def test_a_zero_byte_gallery_image_is_named_before_encoding(cirr_root, tmp_path, capsys):
    victim = next((cirr_root / "dev").glob("*.png"))
    victim.write_bytes(b"")  # a failed download
    line = one_line_error(capsys, evaluate.main, eval_args(cirr_root, tmp_path / "out"))
    assert "1 image file(s) missing or empty" in line and victim.name in line


def test_a_full_disk_after_the_metrics_is_one_line(cirr_root, tmp_path, capsys, monkeypatch):
    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", disk_full)
    out = tmp_path / "out"
    line = one_line_error(capsys, evaluate.main, eval_args(cirr_root, out))
    assert line == f"error: [Errno 28] No space left on device: '{out / 'alpha_sweep.png'}'"
    assert json.loads((out / "metrics.json").read_text())
    assert not (out / "alpha_sweep.png").exists() and not list(out.glob(".alpha_sweep.png.*"))


def test_other_os_errors_keep_their_traceback():
    def lost_connection(path, overrides):
        raise ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))

    with pytest.raises(ConnectionResetError):
        run_cli(lost_connection, [DEFAULTS])
