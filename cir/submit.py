"""`python -m cir.submit CONFIG [key=value ...] [--debug]`: official CIRR / CIRCO test-server files.

Uses the evaluation config (model, data, eval); `submit.split` defaults to the
benchmark's test split, `submit.alpha` to the paper's alpha. CIRCO val works
too, to check the pipeline with the official evaluator. The reference image is
ranked or not as in evaluation (eval.exclude_reference, null: the official rule), except that a CIRR list never
holds it (eval.exclude_reference=false is refused for CIRR);
eval.save_features=true also writes the scored features (<output_dir>/features). The completion record
(cir.completion) says running before anything is read and done once the files and config.yaml are written.
"""

from __future__ import annotations

from pathlib import Path

from cir import completion
from cir.config import load_config, run_cli, to_yaml
from cir.config_checks import TEST_SERVERS, check_submit_config, submit_alpha
from cir.data.inputs import watch_inputs
from cir.distributed import is_global_zero
from cir.evaluation.run import encode, encoded_images, export_features, prepare, reference_summary
from cir.evaluation.scoring import ranked_ids, ranked_subset_ids
from cir.evaluation.submission import CIRCO_K, CIRR_RECALL_K, write_submission
from cir.io import atomic_write_text
from cir.run_lock import rank_zero_lock
from cir.schema import EvaluateConfig

CONFIG_FILE = "config.yaml"  # the config as given, as cir.fit and cir.evaluate write it


def main(path: str | None, overrides: list[str]) -> list[Path]:
    """usage: python -m cir.submit CONFIG [key=value ...] [--debug]"""
    cfg = load_config(EvaluateConfig, path, overrides)
    check_submit_config(cfg)
    alpha = submit_alpha(cfg)
    split = cfg.submit.split or TEST_SERVERS[cfg.data.name]
    made_by, config_yaml = completion.fingerprint(cfg), to_yaml(cfg)  # of the config as given, as a grid computes it
    cfg.eval.methods = [cfg.submit.method]
    cfg.eval.alphas = [alpha]
    out = Path(cfg.output_dir)
    with rank_zero_lock(cfg.output_dir, "submission"):
        if is_global_zero():
            completion.start(out, made_by)
        with watch_inputs() as inputs:
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
        atomic_write_text(out / CONFIG_FILE, config_yaml)
        completion.finish(out, made_by, [*written, out / CONFIG_FILE], inputs, encoded_images(evaluator))
        print(reference_summary(evaluator))
        for p in written:
            print(f"wrote {p}")
        return written


if __name__ == "__main__":
    run_cli(main)
