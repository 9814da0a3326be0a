"""`python -m cir.data.synth CONFIG [key=value ...]`: the benchmark as a grid stage runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cir import completion
from cir.config import load_config
from cir.data.synth import shard_urls
from cir.data.synth.__main__ import main
from cir.data.synth.settings import SynthRunConfig, outputs

CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "demo_synth.yaml"
TINY = ["synth.pretrain_samples=40", "synth.tune_samples=30", "synth.train_queries=8", "synth.val_queries=8",
        "synth.test_queries=4", "synth.shard_size=16"]


@pytest.mark.parametrize("captions", [1, 3])
def test_the_config_run_writes_its_config_and_the_predicted_shard_patterns(tmp_path, captions, capsys) -> None:
    args = [f"output_dir={tmp_path}", *TINY, f"synth.pretrain_captions={captions}"]
    cfg = load_config(SynthRunConfig, CONFIG, args)
    predicted = outputs(cfg)  # what a grid hands to later stages before the benchmark exists
    assert completion.why_not_done(tmp_path, completion.fingerprint(cfg))
    main([str(CONFIG), *args])
    assert completion.why_not_done(tmp_path, completion.fingerprint(cfg)) is None
    assert '"pretrain"' in capsys.readouterr().out
    assert OmegaConf.load(tmp_path / "config.yaml") == cfg
    for name in ("pretrain", "tune"):
        assert predicted["shards"][name] == shard_urls(tmp_path, name)
    assert Path(predicted["cirr"]).is_dir() and Path(predicted["gap_pairs"], "val.jsonl").is_file()


def test_a_bad_size_is_one_line_naming_the_key(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(CONFIG), f"output_dir={tmp_path / 'x'}", "synth.image_size=4"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "config key `synth`: image_size must be an integer >= 8" in err
    assert "Traceback" not in err and not (tmp_path / "x").exists()
