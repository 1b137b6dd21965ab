"""Linear RNNs as associative memories, by their explicit state updates.

Every memory here (and ``TTT``) has the same three methods, which ``evaluate.recall_scores`` drives:
``initial_state(batch_size, like)``, ``write(state, keys, values, t)`` (store pair t of the sequences
``keys [B, L, d_key]``, ``values [B, L, d_value]``) and ``read(state, queries [B, n, d_key]) -> [B, n, d_value]``.

The state is a matrix W ``[B, d_key, d_value]`` read as m(q) = q W (row vectors; the usual M = W^T, m(q) = M q).
With k = k_t, v = v_t (rows) and W_0 = 0:

- linear attention:  W_t = W_{t-1} + k^T v;
- DeltaNet:          W_t = W_{t-1} - beta k^T (k W_{t-1} - v)
                     (one SGD step on |k W - v|^2 with lr = beta / 2, as tested against ``TTT``);
- gated DeltaNet:    W_t = alpha (I - beta k^T k) W_{t-1} + beta k^T v;
- Mesa layer:        W_t = argmin_W  sum_{i<=t} gamma^{t-i} |k_i W - v_i|^2 + (gamma^t / lambda) |W|_F^2,
                     by discounted recursive least squares (below).

Their constants are fixed (not trained): the comparison shows the update rules, not a trained gate.
"""
from __future__ import annotations

import torch
from torch import nn


def outer(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[B, d_key, d_value]``: k^T v per sample for rows ``k [B, d_key]``, ``v [B, d_value]``."""
    return k.unsqueeze(-1) * v.unsqueeze(-2)


def read_matrix(w: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``[B, n, d_value]`` = queries ``[B, n, d_key]`` @ W ``[B, d_key, d_value]``."""
    return queries @ w


class LinearAttention(nn.Module):
    """W_t = W_{t-1} + k_t^T v_t: every pair is added, nothing is erased."""

    def __init__(self, d_key: int, d_value: int):
        super().__init__()
        self.d_key, self.d_value = d_key, d_value

    def initial_state(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(batch_size, self.d_key, self.d_value)

    def write(self, w, keys, values, t):
        return w + outer(keys[:, t], values[:, t])

    def read(self, w, queries):
        return read_matrix(w, queries)


class GatedDeltaNet(LinearAttention):
    """W_t = alpha (I - beta k^T k) W_{t-1} + beta k^T v = alpha W_{t-1} - beta k^T (alpha k W_{t-1} - v).

    With unit keys and beta = 1 the new pair is stored exactly (k_t W_t = v_t); alpha < 1 decays old pairs.
    """

    def __init__(self, d_key: int, d_value: int, *, beta: float = 1.0, alpha: float = 1.0):
        super().__init__(d_key, d_value)
        self.beta, self.alpha = beta, alpha

    def write(self, w, keys, values, t):
        k, v = keys[:, t], values[:, t]
        decayed = self.alpha * w
        error = (k.unsqueeze(1) @ decayed).squeeze(1) - v  # [B, d_value]: k (alpha W) - v
        return decayed - self.beta * outer(k, error)


class DeltaNet(GatedDeltaNet):
    """W_t = W_{t-1} - beta k^T (k W_{t-1} - v): gated DeltaNet with alpha = 1."""

    def __init__(self, d_key: int, d_value: int, *, beta: float = 1.0):
        super().__init__(d_key, d_value, beta=beta, alpha=1.0)


class Mesa(LinearAttention):
    """The Mesa layer: discounted recursive least squares.

    With P_t = sum_{i<=t} gamma^{t-i} k_i^T k_i + (gamma^t / lambda) I and R_t = P_t^{-1} (so R_0 = lambda I),
    P_t = gamma P_{t-1} + k^T k, and Sherman-Morrison gives, with r = R_{t-1} k^T and s = gamma + k R_{t-1} k^T,

        R_t = (R_{t-1} - r r^T / s) / gamma,        W_t = W_{t-1} + r (v - k W_{t-1}) / s,

    which keeps W_t = P_t^{-1} sum_i gamma^{t-i} k_i^T v_i, the minimiser of the objective in the module docstring.
    """

    def __init__(self, d_key: int, d_value: int, *, gamma: float = 0.9, lam: float = 1.0):
        super().__init__(d_key, d_value)
        self.gamma, self.lam = gamma, lam

    def initial_state(self, batch_size, like):
        eye = torch.eye(self.d_key, dtype=like.dtype, device=like.device)
        return super().initial_state(batch_size, like), self.lam * eye.expand(batch_size, -1, -1)

    def write(self, state, keys, values, t):
        w, inv = state
        k, v = keys[:, t], values[:, t]
        r = (inv @ k.unsqueeze(-1)).squeeze(-1)  # [B, d_key]: R_{t-1} k^T (R is symmetric)
        s = self.gamma + (k * r).sum(-1, keepdim=True)  # [B, 1]
        error = v - (k.unsqueeze(1) @ w).squeeze(1)  # [B, d_value]
        w = w + outer(r, error) / s.unsqueeze(-1)
        inv = (inv - outer(r, r) / s.unsqueeze(-1)) / self.gamma
        return w, inv

    def read(self, state, queries):
        return read_matrix(state[0], queries)
