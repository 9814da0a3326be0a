"""LoRA adapters on a Backbone's towers via peft (paper: rank 16, alpha 16, dropout 0.1, image tower).

The chosen towers' attention is first split into q/k/v/out nn.Linear layers
(`Backbone.split_attention`) so peft can adapt the query and value projections
only; that keeps the trained fraction under 0.5 % as in the paper. Targets use
these canonical names in every backbone (`Backbone.lora_target` translates them,
e.g. to BERT's attention.self.query in BLIP's text tower). peft's
`inject_adapter_in_model` edits `backbone.model` in place, so the Backbone
interface is unchanged; `merge_lora` folds the adapters back into a plain
open_clip (or transformers) model.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cir.models.backbone import Backbone
from cir.models.towers import TOWERS, in_tower, tower_roots

LORA_PREFIX = "lora_"


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) number of parameter elements."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def has_lora(module: nn.Module) -> bool:
    # peft is imported where adapters are made or read: an evaluation, which has none, saves its import (~1 s)
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def apply_lora(
    backbone: Backbone,
    towers: Sequence[str] = ("image",),
    r: int = 16,
    alpha: float = 16,
    dropout: float = 0.1,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
) -> None:
    """Add LoRA to `target_modules` inside `towers` and freeze every other parameter (logit_scale included).

    A target, as `backbone.lora_target` translates it, matches a module whose
    dotted name equals it or ends with "." + it (peft's rule), searched only
    inside the chosen towers.
    """
    towers, target_modules = _validate(towers, r, alpha, dropout, target_modules)
    model = backbone.model
    if has_lora(model):
        raise ValueError(f"backbone {backbone.name!r} already has LoRA adapters: merge_lora it first")
    roots = {tower: tower_roots(model, tower) for tower in towers}
    backbone.split_attention(towers)
    targets: list[str] = []
    for tower, tower_root in roots.items():
        linears = [n for n, m in model.named_modules() if in_tower(n, tower_root) and isinstance(m, nn.Linear)]
        suffixes = {t: backbone.lora_target(tower, t) for t in target_modules}
        unmatched = [t for t, suffix in suffixes.items() if not any(_matches(n, suffix) for n in linears)]
        if unmatched:
            raise ValueError(
                f"LoRA target_modules {unmatched} match no nn.Linear in the {tower} tower of {backbone.name!r}"
            )
        targets += [n for n in linears if any(_matches(n, s) for s in suffixes.values())]
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_(LORA_PREFIX in name)


def merge_lora(backbone: Backbone) -> None:
    """Fold the adapters into the base weights in place; `backbone.model` becomes its library's plain model.

    Parameters keep their requires_grad (all frozen after `apply_lora`).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = backbone.model
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    backbone.fuse_attention()


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _validate(
    towers: Sequence[str], r: int, alpha: float, dropout: float, target_modules: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    towers = (towers,) if isinstance(towers, str) else tuple(towers)
    target_modules = (target_modules,) if isinstance(target_modules, str) else tuple(target_modules)
    if not towers or any(t not in TOWERS for t in towers):
        raise ValueError(f"towers must be a non-empty subset of {TOWERS}, got {towers}")
    if not isinstance(r, int) or r <= 0:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
    if not alpha > 0:
        raise ValueError(f"LoRA alpha must be > 0, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    if not target_modules:
        raise ValueError("target_modules must name at least one module, e.g. ('q_proj', 'v_proj')")
    return tuple(dict.fromkeys(towers)), target_modules
