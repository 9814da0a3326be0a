"""The model card of a published run: every number read from the run's own records, none typed in.

`model_card` returns the mapping open_clip's generate_readme renders (details,
usage, comparison), from run.json (or a checkpoint's copy of it) and the
metrics.json of the evaluations of the published weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TASKS = {
    "tat": "Text-Anchored Tuning (Slerp + TAT, Jang et al., ECCV 2024): LoRA on one tower against the frozen other",
    "pretrain": "contrastive pretraining (both towers)",
    "supervised": "supervised composed image retrieval on a benchmark's triplets",
}
ANCHORS = {"text": "text (the image tower is tuned)", "image": "image (the text tower is tuned)", "none": "none (both towers tuned)"}
NOT_RECORDED = "not recorded"
# metrics.json entries that say how a benchmark was scored (cir.evaluation.run.run_info and the missing-image skip)
PROTOCOL_PREFIXES = ("meta/exclude_reference/", "meta/caption_mode", "meta/fashioniq_captions", "meta/missing_images/")


def _batch(config: dict[str, Any]) -> str:
    data, trainer = config.get("data", {}), config.get("trainer", {})
    if data.get("global_batch_size"):
        return f"{data['global_batch_size']} (global)"
    spread = ", ".join(f"trainer.{k}={trainer[k]}" for k in ("devices", "num_nodes", "accumulate_grad_batches") if k in trainer)
    return f"{data.get('batch_size')} per device ({spread or 'one device'})"


def _recipe(config: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    model, optim = config.get("model", {}), config.get("optim", {})
    lora = model.get("lora", {})
    data = config.get("data", {})
    skipped = {k: v for k, v in (record.get("skipped_samples") or {}).items() if v}
    return {
        "Training": TASKS.get(record.get("task"), str(record.get("task"))),
        "Anchor (frozen tower)": ANCHORS.get(model.get("anchor"), str(model.get("anchor"))),
        "LoRA (merged into these weights)": (f"rank {lora.get('r')}, alpha {lora.get('alpha')}, dropout "
                                              f"{lora.get('dropout')}, on {', '.join(lora.get('target_modules', []))}"),
        "Temperature": f"{optim.get('temperature')} ({'learned' if optim.get('learn_temperature') else 'fixed'})",
        "Optimiser": (f"AdamW, lr {optim.get('lr')}, weight decay {optim.get('weight_decay')}, "
                      f"{optim.get('warmup_steps')} warmup steps then cosine"),
        "Steps": record.get("global_step", NOT_RECORDED),
        "Batch": _batch(config),
        "Training data": data.get("text_embeddings") or data.get("train_shards") or NOT_RECORDED,
        "Pairs seen": record.get("samples_seen", NOT_RECORDED),
        "Samples skipped": ", ".join(f"{k} {v}" for k, v in skipped.items()) or "none",
        "Seed": config.get("seed", NOT_RECORDED),
    }


def evaluation_table(evals: list[tuple[Path, dict[str, Any]]]) -> str:
    """One row per benchmark split and evaluation: the paper's Slerp method's metrics, then the protocol notes."""
    if not evals:
        return "No evaluation of these weights was found beside the run (`python -m cir.evaluate` writes one).\n"
    lines = ["| evaluation | benchmark | method | metrics | protocol |", "|---|---|---|---|---|"]
    for path, metrics in evals:
        method = metrics.get("meta/paper_method", "")
        notes = "; ".join(f"{k.removeprefix('meta/')}: {v}" for k, v in sorted(metrics.items())
                          if k.startswith(PROTOCOL_PREFIXES))
        splits: dict[str, list[str]] = {}
        for key, value in metrics.items():
            parts = key.split("/")
            if len(parts) == 4 and parts[2] == method and isinstance(value, (int, float)):
                splits.setdefault(f"{parts[0]}/{parts[1]}", []).append(f"{parts[3]} {value:.2f}")
        for split, values in sorted(splits.items()):
            lines.append(f"| {path.parent.name} | {split} | {method} | {', '.join(values)} | {notes} |")
    return "\n".join(lines) + "\n"


def model_card(model_name: str, record: dict[str, Any], evals: list[tuple[Path, dict[str, Any]]],
               fingerprint: str) -> dict[str, Any]:
    """The mapping open_clip.push_to_hf_hub.generate_readme renders into README.md."""
    config = record.get("config", {})
    versions = record.get("versions", {})
    backbone = record.get("backbone", {})
    details = {
        "Base model": f"{backbone.get('name')} (open_clip), weights `{backbone.get('pretrained')}`",
        "Initialised from": record.get("init_from") or "the base weights",
        "Architecture (open_clip config)": model_name,
        **_recipe(config, record),
        "Changed on resume": [f"{c}" for c in record.get("config_changes", [])] or "nothing",
        "Weights fingerprint": fingerprint,
        "Framework": (f"cir {versions.get('cir', NOT_RECORDED)} (commit {versions.get('cir_commit', NOT_RECORDED)}), "
                      f"open_clip {versions.get('open_clip_torch', NOT_RECORDED)}, torch {versions.get('torch', NOT_RECORDED)}"),
        "Trained": record.get("written", NOT_RECORDED),
    }
    usage = (
        "```python\nimport open_clip\n\n"
        "model, _, preprocess = open_clip.create_model_and_transforms('local-dir:PATH')  # or 'hf-hub:ORG/NAME'\n```\n\n"
        f"With cir: `model.name={model_name} model.pretrained=PATH` in any command "
        "(`python -m cir.evaluate`, `cir.fit` with `init_from`, `cir.browse`).\n"
    )
    return {
        "tags": ("clip", "open_clip", "composed-image-retrieval"),
        "license": "other",
        "description": (f"{model_name} tuned with cir's {record.get('task')} task. Every value below is read from "
                        "the run's record (run.json) and the evaluations of these exact weights (matched by "
                        "fingerprint); the license is that of the base weights."),
        "details": details,
        "usage": usage,
        "comparison": evaluation_table(evals),
    }
