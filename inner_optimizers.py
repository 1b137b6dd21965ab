"""Inner optimisers as pure functions, shared by every inner loop (GradMem's WRITE, the recall sandbox's TTT).

Each has the signature ``fn(grads, opt_state, step, *, lr, ...) -> (updates, opt_state)``: ``grads`` is a
list of tensors, ``opt_state`` is ``None`` before the first step, ``step`` counts from 0, and the caller
subtracts ``updates`` from its parameters. Nothing is modified in place, so every output is differentiable
in every input (``lr`` may be a tensor that broadcasts against the gradients, e.g. one rate per sample).
Each matches the ``torch.optim`` class of the same name step for step (tests/test_inner_optimizers.py).
"""
from __future__ import annotations

import torch


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with derivative 0 (not inf) at 0, so double backward through zero gradients stays finite."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def sgd_update(grads, opt_state, step, *, lr, momentum=0.0, dampening=0.0, nesterov=False, **unused):
    """Update to subtract: ``lr * g`` without momentum (``opt_state`` passes through unchanged).

    With momentum mu (``torch.optim.SGD``): the buffer starts at ``b = g``, then ``b = mu b + (1 - dampening) g``;
    the update is ``lr * b``, or ``lr * (g + mu b)`` with Nesterov.
    """
    if momentum == 0:
        return [lr * g for g in grads], opt_state
    if opt_state is None:
        buffers = list(grads)
    else:
        buffers = [momentum * b + (1 - dampening) * g for b, g in zip(opt_state, grads)]
    directions = [g + momentum * b for g, b in zip(grads, buffers)] if nesterov else buffers
    return [lr * d for d in directions], buffers


def adam_update(grads, opt_state, step, *, lr, betas, eps):
    """Adam (Kingma & Ba) as a pure function; ``step`` counts from 0. Matches ``torch.optim.Adam``:
    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, update ``lr m_hat / (sqrt(v_hat) + eps)``."""
    b1, b2 = betas
    m, v = opt_state if opt_state is not None else ([torch.zeros_like(g) for g in grads],) * 2
    m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads)]
    v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads)]
    t = step + 1
    updates = [lr / (1 - b1 ** t) * mi / (safe_sqrt(vi / (1 - b2 ** t)) + eps) for mi, vi in zip(m, v)]
    return updates, (m, v)


def adamw_update(grads, opt_state, step, *, lr, betas, eps, weight_decay, params):
    """AdamW (Loshchilov & Hutter): the Adam update plus decoupled decay ``lr * weight_decay * p`` of the
    current ``params``, as ``torch.optim.AdamW`` does (decay first, Adam step second: they commute)."""
    updates, opt_state = adam_update(grads, opt_state, step, lr=lr, betas=betas, eps=eps)
    return [u + lr * weight_decay * p for u, p in zip(updates, params)], opt_state


INNER_UPDATES = {"sgd": sgd_update, "adam": adam_update, "adamw": adamw_update}
