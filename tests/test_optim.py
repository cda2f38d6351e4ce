"""Keras-exact optimizers against their formulas written out in float64."""

import copy
import math

import pytest
import torch

from fmnist.models.optim import KerasAdam, KerasRMSprop

STEPS = 6


def gradients(seed: int, shapes):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(STEPS)]


def run(optimizer_cls, params, grads, **kwargs):
    optimizer = optimizer_cls(params, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=False):
            p.grad = g.to(p.dtype).clone()
        optimizer.step()
    return optimizer


SHAPES = [(3, 4), (5,)]


def test_keras_rmsprop_matches_formula():
    lr, rho, eps = 1e-2, 0.9, 1e-7
    grads = gradients(0, SHAPES)
    init = [torch.randn(s, dtype=torch.float64) for s in SHAPES]
    params = [w.clone().requires_grad_() for w in init]
    run(KerasRMSprop, params, grads, lr=lr, rho=rho, eps=eps)
    for i, w in enumerate(init):
        w, v = w.clone(), torch.zeros_like(w)
        for step in grads:
            g = step[i]
            v = rho * v + (1 - rho) * g * g
            w = w - lr * g / torch.sqrt(v + eps)
        assert torch.allclose(params[i].detach(), w, rtol=0, atol=1e-12)


def test_keras_adam_matches_formula():
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-7
    grads = gradients(1, SHAPES)
    init = [torch.randn(s, dtype=torch.float64) for s in SHAPES]
    params = [w.clone().requires_grad_() for w in init]
    run(KerasAdam, params, grads, lr=lr, betas=(b1, b2), eps=eps)
    for i, w in enumerate(init):
        w, m, v = w.clone(), torch.zeros_like(w), torch.zeros_like(w)
        for t, step in enumerate(grads, start=1):
            g = step[i]
            m = m + (g - m) * (1 - b1)
            v = v + (g * g - v) * (1 - b2)
            w = w - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (torch.sqrt(v) + eps)
        assert torch.allclose(params[i].detach(), w, rtol=0, atol=1e-12)


def test_keras_rmsprop_differs_from_torch_rmsprop_with_same_numbers():
    grads = gradients(2, SHAPES)
    ours = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    theirs = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    run(KerasRMSprop, ours, [[g * 1e-4 for g in step] for step in grads], lr=1e-3)
    run(torch.optim.RMSprop, theirs, [[g * 1e-4 for g in step] for step in grads], lr=1e-3, alpha=0.9, eps=1e-7)
    assert not torch.allclose(ours[0], theirs[0])  # eps inside vs outside the root matters for small g


@pytest.mark.parametrize("cls", [KerasRMSprop, KerasAdam])
def test_state_dict_round_trip_gives_identical_next_steps(cls):
    grads = gradients(3, SHAPES)
    params = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    optimizer = run(cls, params, grads[:3], lr=1e-2)
    saved_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = cls(saved_params, lr=1e-2)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for step in grads[3:]:
        for a, b, g in zip(params, saved_params, step, strict=False):
            a.grad, b.grad = g.clone(), g.clone()
        optimizer.step()
        resumed.step()
    for a, b in zip(params, saved_params, strict=False):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [KerasRMSprop, KerasAdam])
def test_parameters_without_gradient_are_skipped_and_groups_keep_their_lr(cls):
    frozen = torch.zeros(4, requires_grad=True)
    fast, slow = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    optimizer = cls([{"params": [fast, frozen]}, {"params": [slow], "lr": 1e-4}], lr=1e-2)
    fast.grad, slow.grad = torch.ones(3), torch.ones(3)
    optimizer.step()
    assert torch.equal(frozen, torch.zeros(4)) and frozen not in optimizer.state
    fast, slow = fast.detach(), slow.detach()
    assert fast[0] < slow[0] < 0 and math.isclose(fast[0] / slow[0], 100, rel_tol=1e-3)
