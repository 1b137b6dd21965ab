"""Recall by every memory after every write, the outer loss, the recall metrics, and BPTT training.

After writing pair t, the memory is queried with every key stored so far; query i scores each stored value
by a dot product and the target is its own value:

    logits_{t,i} = tau m_t(k_i) V_{<=t}^T  in R^{t+1},   loss = mean_{t, i<=t} CE(logits_{t,i}, i),
    correct_{t,i} = [argmax logits_{t,i} = i].

tau is a learned temperature of the training loss (it scales the logits, so no accuracy depends on it; it
spares BPTT the incentive to inflate |m(k)|). The *offset* of query i at time t is t - i: how many writes ago
its pair was stored.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .data import RecallDataConfig, sample_sequences


def recall_scores(memory, keys: torch.Tensor, values: torch.Tensor, *, log_temperature=None):
    """Run ``memory`` over the sequences ``keys [B, L, d_key]``, ``values [B, L, d_value]``.

    Returns ``(loss, correct)``: the mean cross-entropy of the module docstring (a scalar, differentiable
    when grad is enabled) and ``correct [B, L, L]`` (bool; entry [b, t, i] for i <= t, False above the diagonal).
    """
    batch_size, length = keys.shape[:2]
    tau = 1.0 if log_temperature is None else log_temperature.exp()
    state = memory.initial_state(batch_size, keys)
    correct = torch.zeros(batch_size, length, length, dtype=torch.bool, device=keys.device)
    loss = keys.new_zeros(())
    for t in range(length):
        state = memory.write(state, keys, values, t)
        logits = tau * memory.read(state, keys[:, :t + 1]) @ values[:, :t + 1].transpose(1, 2)  # [B, t+1, t+1]
        target = torch.arange(t + 1, device=keys.device).expand(batch_size, -1)
        loss = loss + nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum")
        correct[:, t, :t + 1] = logits.argmax(-1) == target
    return loss / (batch_size * length * (length + 1) / 2), correct


def accuracy_by_offset(correct: torch.Tensor, *, at_step: int | None = None) -> torch.Tensor:
    """``[L]``: entry o is the fraction of queries with offset o answered right.

    ``at_step=None`` averages over every time t >= o; ``at_step=t`` uses only the queries made after write t
    (entries beyond t are NaN).
    """
    batch_size, length, _ = correct.shape
    c = correct.float()
    if at_step is not None:
        row = c[:, at_step, :at_step + 1].flip(-1).mean(0)  # offset o = at_step - i
        return torch.cat([row, row.new_full((length - at_step - 1,), math.nan)])
    return torch.stack([c.diagonal(offset=-o, dim1=1, dim2=2).mean() for o in range(length)])


def retrievable_pairs(correct: torch.Tensor) -> torch.Tensor:
    """``[L]``: the mean number of stored pairs answered right after each write t."""
    return correct.float().sum(-1).mean(0)


def evaluate(memory, data: RecallDataConfig, *, n_sequences: int, batch_size: int = 256, seed: int = 0,
             dtype=torch.float32) -> torch.Tensor:
    """``correct [n_sequences, L, L]`` of ``memory`` on fresh sequences from ``seed`` (no gradients)."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    with torch.no_grad():
        for start in range(0, n_sequences, batch_size):
            keys, values = sample_sequences(data, min(batch_size, n_sequences - start), generator=generator,
                                            dtype=dtype)
            parts.append(recall_scores(memory, keys, values)[1])
    return torch.cat(parts)


def train(memory: nn.Module, data: RecallDataConfig, *, steps: int, batch_size: int, lr: float, seed: int = 0,
          grad_clip: float = 1.0, temperature: float = 10.0, dtype=torch.float32) -> list[dict]:
    """Meta-learn ``memory``'s parameters by BPTT through all L writes (Adam on the loss of the module
    docstring, a fresh batch each step, gradients clipped to norm ``grad_clip``, tau starting at ``temperature``:
    unit vectors give logits in [-1, 1], too flat for the cross-entropy at tau = 1). Returns one record per step:
    the loss, the recall accuracy over all queries, tau, and for a ``TTT`` its inner lr (averaged over the
    batch's keys)."""
    generator = torch.Generator().manual_seed(seed)
    log_temperature = nn.Parameter(torch.tensor(math.log(temperature), dtype=dtype))
    params = [*memory.parameters(), log_temperature]
    opt = torch.optim.Adam(params, lr=lr)
    history = []
    for step in range(steps):
        keys, values = sample_sequences(data, batch_size, generator=generator, dtype=dtype)
        loss, correct = recall_scores(memory, keys, values, log_temperature=log_temperature)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        n_queries = batch_size * data.seq_len * (data.seq_len + 1) / 2
        record = {"step": step, "loss": loss.item(), "accuracy": correct.sum().item() / n_queries,
                  "temperature": log_temperature.exp().item()}
        if hasattr(memory, "inner_lr"):
            with torch.no_grad():
                record["inner_lr"] = memory.inner_lr(keys.flatten(0, 1)).mean().item()
        history.append(record)
    return history
