"""Key-value sequences on the unit sphere, optionally correlated in time, and the sliding context window.

A sequence holds L pairs (k_i, v_i), k_i in S^{d_key - 1}, v_i in S^{d_value - 1}. With correlation c,
consecutive vectors follow the AR(1) process

    x_1 = n_1 / |n_1|,     x_i = (c x_{i-1} + sqrt(1 - c^2) n_i) / |c x_{i-1} + sqrt(1 - c^2) n_i|,

with n_i ~ N(0, I/d), so |n_i| ~ 1 and E[x_i . x_{i-1}] ~ c (within O(1/d)); c = 0 gives independent
uniform vectors. Because every vector has norm 1 and a uniform direction, no embedding can make recall easy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cli import check_config, option


@dataclass
class RecallDataConfig:
    d_key: int = option(20, "dimension of the keys (unit vectors)")
    d_value: int = option(20, "dimension of the values (unit vectors)")
    seq_len: int = option(100, "pairs per sequence (L)")
    context_size: int = option(5, "pairs in the sliding context window (the TTT inner loss sees the last this many)")
    key_corr: float = option(0.0, "AR(1) correlation c between consecutive keys, in [0, 1)")
    value_corr: float = option(0.0, "AR(1) correlation c between consecutive values, in [0, 1)")

    def __post_init__(self):
        check_config("RecallDataConfig", [
            (self.d_key >= 1 and self.d_value >= 1, "d_key and d_value must be >= 1"),
            (self.seq_len >= 1, "seq_len must be >= 1"),
            (self.context_size >= 1, "context_size must be >= 1"),
            (0 <= self.key_corr < 1 and 0 <= self.value_corr < 1, "key_corr and value_corr must lie in [0, 1)"),
        ])


def unit_ar1(batch_size: int, length: int, dim: int, corr: float, *, generator=None,
             dtype=torch.float32) -> torch.Tensor:
    """``[B, L, dim]`` unit vectors from the AR(1) process of the module docstring with correlation ``corr``."""
    noise = torch.randn(batch_size, length, dim, generator=generator, dtype=dtype) / math.sqrt(dim)
    steps, x = [], None
    for i in range(length):
        x = noise[:, i] if x is None else corr * x + math.sqrt(1 - corr ** 2) * noise[:, i]
        x = x / x.norm(dim=-1, keepdim=True)
        steps.append(x)
    return torch.stack(steps, dim=1)


def sample_sequences(cfg: RecallDataConfig, batch_size: int, *, generator=None, dtype=torch.float32):
    """``(keys [B, L, d_key], values [B, L, d_value])``, each a unit-sphere AR(1) sequence."""
    keys = unit_ar1(batch_size, cfg.seq_len, cfg.d_key, cfg.key_corr, generator=generator, dtype=dtype)
    values = unit_ar1(batch_size, cfg.seq_len, cfg.d_value, cfg.value_corr, generator=generator, dtype=dtype)
    return keys, values


def context_window(keys: torch.Tensor, values: torch.Tensor, t: int, context_size: int):
    """The last ``context_size`` pairs up to step ``t`` (fewer at the start of the sequence).

    Returns ``(keys [B, n, d_key], values [B, n, d_value], ages [n])``, n = min(t + 1, context_size), with
    ``ages[j] = t - (index of pair j)``: 0 for the pair written at step t, so window weights index by age.
    """
    start = max(0, t - context_size + 1)
    ages = torch.arange(t - start, -1, -1, device=keys.device)
    return keys[:, start:t + 1], values[:, start:t + 1], ages
