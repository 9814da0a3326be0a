"""`python -m cir.submit CONFIG [key=value ...] [--debug]`: official CIRR / CIRCO test-server files.

Uses the evaluation config (model, data, eval); `submit.split` defaults to the
benchmark's test split, `submit.alpha` to the paper's alpha. CIRCO val works
too, to check the pipeline with the official evaluator. The reference image is
ranked or not as in evaluation (eval.exclude_reference, null: the official rule), except that a CIRR list never
holds it (eval.exclude_reference=false is refused for CIRR);
eval.save_features=true also writes the scored features (<output_dir>/features).
"""

from __future__ import annotations

from pathlib import Path

from cir.config import ConfigError, load_config, require, run_cli
from cir.distributed import is_global_zero
from cir.evaluation.run import encode, export_features, prepare, reference_summary
from cir.evaluation.scoring import ranked_ids, ranked_subset_ids
from cir.evaluation.splits import paper_alpha
from cir.evaluation.submission import CIRCO_K, CIRR_RECALL_K, write_submission
from cir.run_lock import rank_zero_lock
from cir.schema import EvaluateConfig
from cir.slerp import METHODS

TEST_SPLIT = {"cirr": "test1", "circo": "test"}


def main(path: str | None, overrides: list[str]) -> list[Path]:
    """usage: python -m cir.submit CONFIG [key=value ...] [--debug]"""
    cfg = load_config(EvaluateConfig, path, overrides)
    if cfg.data.name not in TEST_SPLIT:
        raise ConfigError(f"config key `data.name`: {cfg.data.name!r} has no official test server (cirr, circo have)")
    if cfg.data.name == "cirr" and cfg.eval.exclude_reference is False:
        raise ConfigError("config key `eval.exclude_reference`: false would list the reference image on every CIRR "
                          "query, which the server counts as a wrong answer; use null (the official rule) or true")
    require(cfg.submit.method in METHODS, "submit.method", f"one of {list(METHODS)}", cfg.submit.method)
    alpha = cfg.submit.alpha if cfg.submit.alpha is not None else paper_alpha(cfg)
    require(0.0 <= alpha <= 1.0, "submit.alpha", "a value in [0, 1]", alpha)
    split = cfg.submit.split or TEST_SPLIT[cfg.data.name]
    cfg.eval.methods = [cfg.submit.method]
    cfg.eval.alphas = [alpha]
    with rank_zero_lock(cfg.output_dir, "submission"):
        backbone, evaluator, trainer_kwargs, _ = prepare(cfg, split)
        encode(evaluator, backbone, trainer_kwargs)
        written: list[Path] = []
        if not is_global_zero():
            return written
        k = CIRR_RECALL_K if cfg.data.name == "cirr" else CIRCO_K
        method_alpha = alpha if cfg.submit.method == "slerp" else None
        for bench, index, feats in evaluator.features():
            top = ranked_ids(index, feats, cfg.submit.method, method_alpha, k, cfg.eval.block_size)
            subset = ranked_subset_ids(index, feats, cfg.submit.method, method_alpha) if bench.name == "cirr" else None
            written += write_submission(bench, top, subset, Path(cfg.output_dir), index.exclude_reference)
        written += export_features(cfg, evaluator)
        print(reference_summary(evaluator))
        for p in written:
            print(f"wrote {p}")
        return written


if __name__ == "__main__":
    run_cli(main)
