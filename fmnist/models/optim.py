"""Keras-exact optimizers (tf.keras >= 2.11), written with torch's multi-tensor `_foreach` ops.

torch's RMSprop and Adam differ from Keras's in where epsilon goes (and RMSprop's default decay):
small in value, but visible over the study's 150 epochs at lr 1e-4. Parameters without a gradient
(the recurrent layers' frozen `bias_hh`) are skipped, as torch's own optimizers do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer


class _KerasOptimizer(Optimizer):
    """Shared `step`: per param group, gather parameters with gradients and their states, then update."""

    def _init_state(self, p: torch.Tensor) -> dict:
        raise NotImplementedError

    def _update(self, group: dict, params: list, grads: list, states: list) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, states = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                if not self.state[p]:
                    self.state[p].update(self._init_state(p))
                params.append(p)
                grads.append(p.grad)
                states.append(self.state[p])
            if params:
                self._update(group, params, grads, states)
        return loss


class KerasRMSprop(_KerasOptimizer):
    """Keras RMSprop: `v = rho*v + (1-rho)*g^2;  w -= lr * g / sqrt(v + eps)` (eps inside the root)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-7):
        if lr < 0 or not 0 <= rho < 1 or eps < 0:
            raise ValueError(f"invalid KerasRMSprop settings: lr={lr}, rho={rho}, eps={eps}")
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps))

    def _init_state(self, p: torch.Tensor) -> dict:
        return {"square_avg": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def _update(self, group, params, grads, states) -> None:
        square_avgs = [s["square_avg"] for s in states]
        torch._foreach_mul_(square_avgs, group["rho"])
        torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - group["rho"])
        denom = torch._foreach_add(square_avgs, group["eps"])
        torch._foreach_sqrt_(denom)
        torch._foreach_addcdiv_(params, grads, denom, value=-group["lr"])


class KerasAdam(_KerasOptimizer):
    """Keras Adam: `w -= lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)`, eps on the uncorrected v."""

    def __init__(
        self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-7
    ):
        beta1, beta2 = betas
        if lr < 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1 or eps < 0:
            raise ValueError(f"invalid KerasAdam settings: lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=(beta1, beta2), eps=eps))

    def _init_state(self, p: torch.Tensor) -> dict:
        return {
            "step": torch.tensor(0.0),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    def _update(self, group, params, grads, states) -> None:
        beta1, beta2 = group["betas"]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        step_sizes = []
        for s in states:  # "step" lives on the CPU, like torch's non-capturable optimizers: no sync
            s["step"] += 1
            t = s["step"].item()
            step_sizes.append(-group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t))
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)
