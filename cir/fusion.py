"""Learned query composition for supervised CIR: Slerp with a trained alpha, or a CLIP4Cir-style combiner.

Both modules map (image features, text features) to unit query vectors, so the
contrastive loss, the evaluator and retrieval treat them like any zero-shot
composition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cir.slerp import slerp

FUSIONS = ("slerp", "combiner")


class SlerpFusion(nn.Module):
    """Slerp whose alpha is sigmoid(logit): a learned alpha can never leave [0, 1], whatever the step size.

    A frozen alpha keeps the same form as a buffer, so checkpoints of both look alike.
    """

    key = "slerp_learned"

    def __init__(self, alpha: float, learn: bool = True) -> None:
        super().__init__()
        if learn and not 0.0 < alpha < 1.0:
            raise ValueError(f"a learned alpha must start strictly inside (0, 1) (its logit is finite), got {alpha}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] (0 = image only, 1 = text only), got {alpha}")
        logit = torch.logit(torch.tensor(float(alpha), dtype=torch.float64)).float()
        if learn:
            self.alpha_logit = nn.Parameter(logit)
        else:
            self.register_buffer("alpha_logit", logit)

    @property
    def alpha(self) -> Tensor:
        return torch.sigmoid(self.alpha_logit)

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        return slerp(image, text, self.alpha)


class Combiner(nn.Module):
    """CLIP4Cir's combiner (Baldrati et al. 2022): projected features, a learned image/text gate, a residual.

        p = [relu(W_t t), relu(W_i v)]
        g = sigmoid(gate(p))                       (per query, in (0, 1))
        q = normalize(out(relu(W_c p)) + g t + (1 - g) v)

    Unlike CLIP4Cir, the residual branch `out` starts at zero and the gate at
    `alpha`, so training starts from the normalised linear mix of the tuned
    backbone's features instead of from a random composition.
    """

    key = "combiner"

    def __init__(self, dim: int, hidden: int = 1024, dropout: float = 0.5, alpha: float = 0.5) -> None:
        super().__init__()
        if dim <= 0 or hidden <= 0:
            raise ValueError(f"feature size and hidden size must be positive, got dim={dim}, hidden={hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"the gate's initial text weight must lie strictly inside (0, 1), got {alpha}")
        self.text_proj = nn.Linear(dim, hidden)
        self.image_proj = nn.Linear(dim, hidden)
        self.mix = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, dim)
        self.gate = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.constant_(self.gate[-1].bias, torch.logit(torch.tensor(float(alpha))).item())

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        projected = torch.cat(
            [self.dropout(F.relu(self.text_proj(text))), self.dropout(F.relu(self.image_proj(image)))], dim=-1
        )
        residual = self.out(self.dropout(F.relu(self.mix(projected))))
        gate = torch.sigmoid(self.gate(projected))
        return F.normalize(residual + gate * text + (1.0 - gate) * image, dim=-1)


def build_fusion(
    kind: str, dim: int, *, alpha: float, learn_alpha: bool = True, hidden: int = 1024, dropout: float = 0.5
) -> SlerpFusion | Combiner:
    """The fusion a config names; `alpha` is Slerp's start (or the combiner gate's initial text weight)."""
    if kind == "slerp":
        return SlerpFusion(alpha, learn_alpha)
    if kind == "combiner":
        return Combiner(dim, hidden, dropout, alpha)
    raise ValueError(f"unknown fusion {kind!r}; expected one of {FUSIONS}")
