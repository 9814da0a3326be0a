"""Trainable parameters and optimizer-state bytes: TAT on ViT-L-14 vs full fine-tuning (random init, no weights needed).

    python benchmarks/bench_memory.py [--model ViT-L-14]

Counts, not timings: the AdamW state is materialised by one real optimizer step
(zero gradients) over the parameter groups cir's tasks build, and its tensors'
bytes are summed. TAT is the paper's setting (LoRA r16, alpha 16 on the image
tower's q/v projections, everything else frozen); full fine-tuning trains every
parameter. Needs about 4 x the model's float32 size in RAM (7 GB for ViT-L-14).
"""

from __future__ import annotations

import common


def adamw_state(module) -> tuple[int, int, int]:
    """(trainable parameters, gradient bytes, AdamW state bytes) after one step, with cir's decay / no-decay groups."""
    import torch

    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    groups = [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": 0.01},
              {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    for _, p in named:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    grads = sum(p.grad.numel() * p.grad.element_size() for _, p in named)
    for _, p in named:
        p.grad = None
    return sum(p.numel() for _, p in named), grads, state


def main() -> int:
    parser = common.arguments(__doc__)
    parser.add_argument("--model", default="ViT-L-14")
    args = parser.parse_args()
    common.pin_threads(args.threads)
    info = common.header(f"Training memory: TAT vs full fine-tuning, {args.model} random init", args.threads)

    import torch

    from cir.models import apply_lora, count_parameters, create_backbone
    from cir.schema import LoraConfig

    torch.manual_seed(0)
    backbone = create_backbone(args.model, "none")
    _, total = count_parameters(backbone)
    for p in backbone.parameters():
        p.requires_grad_(True)
    full_params, full_grads, full_state = adamw_state(backbone)
    lora = LoraConfig()
    apply_lora(backbone, ("image",), r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=tuple(lora.target_modules))
    tat_params, tat_grads, tat_state = adamw_state(backbone)
    _, tat_total = count_parameters(backbone)
    mib = 1 << 20
    figures = {
        "parameters (full model, before LoRA)": total,
        "full fine-tuning: trainable parameters": full_params,
        "full fine-tuning: AdamW state, MiB": full_state / mib,
        "full fine-tuning: gradients, MiB": full_grads / mib,
        "TAT: trainable parameters": tat_params,
        "TAT: trainable share of all parameters, %": 100 * tat_params / tat_total,
        "TAT: AdamW state, MiB": tat_state / mib,
        "TAT: gradients, MiB": tat_grads / mib,
        "trainable parameters, full / TAT": full_params / tat_params,
        "AdamW state bytes, full / TAT": full_state / tat_state,
        "LoRA": f"r={lora.r} alpha={lora.alpha} on {list(lora.target_modules)} of the image tower",
    }
    share = 100 * tat_params / tat_total
    return common.finish("memory", info, figures, [
        (share < 0.5, (f"TAT trains {share:.2f}% of {args.model}'s parameters (paper: < 0.5%), "
                       f"AdamW state {tat_state / mib:.1f} MiB vs {full_state / mib:.0f} MiB for full fine-tuning")),
    ], args.json)


if __name__ == "__main__":
    raise SystemExit(main())
