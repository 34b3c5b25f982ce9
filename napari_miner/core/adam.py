"""Adam over block-bank tensors whose leading (block) dimension can be compacted.

Retired blocks are dropped from the parameters *and* the optimiser moments together, so they are never
updated again and cost nothing in later steps.
"""

from __future__ import annotations

import torch


class CompactAdam:
    """Adam (Kingma & Ba) with per-tensor learning-rate factors and block compaction.

    Parameters
    ----------
    params : list of torch.Tensor
        Tensors with the block index as leading dimension.
    lr_factors : list of float or torch.Tensor
        Learning-rate multiplier per tensor: a number, or a tensor that broadcasts against it
        (for example one factor per block, shaped ``(n, 1, 1)``).
    betas : tuple of float
        Adam's moment decay rates.
    eps : float
        Denominator term.
    """

    def __init__(
        self,
        params: list[torch.Tensor],
        lr_factors: list[float | torch.Tensor],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = [p.detach() for p in params]
        self.lr_factors = list(lr_factors)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.betas = betas
        self.eps = eps
        self.steps = 0

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], lr: float) -> None:
        """Apply one Adam update with the given gradients and base learning rate."""
        self.steps += 1
        beta1, beta2 = self.betas
        correction1 = 1 - beta1**self.steps
        correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        for p, g, m, v, factor in zip(
            self.params, grads, self.exp_avg, self.exp_avg_sq, self.lr_factors, strict=True
        ):
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / correction2_sqrt).add_(self.eps)
            if isinstance(factor, torch.Tensor):
                p.sub_(m.div(denom).mul_(factor * (lr / correction1)))
            else:
                p.addcdiv_(m, denom, value=-lr * factor / correction1)

    @torch.no_grad()
    def keep(self, index: torch.Tensor) -> None:
        """Keep only the blocks at ``index`` (positions along the leading dimension)."""
        self.params = [p[index] for p in self.params]
        self.exp_avg = [m[index] for m in self.exp_avg]
        self.exp_avg_sq = [v[index] for v in self.exp_avg_sq]
        self.lr_factors = [f[index] if isinstance(f, torch.Tensor) else f for f in self.lr_factors]

    @property
    def n_blocks(self) -> int:
        """Blocks currently optimised."""
        return self.params[0].shape[0]
